"""Writer locks and the collection of dead writers' leftovers in a local parquet folder.

The rule (see "Leftovers of dead writers" in `stores.commits`): a `FolderTransaction` takes
its writer's lock (``_commits/.<writer>.lock``, an exclusive ``flock``) before it writes its
first file and keeps it until it has finished; the operating system drops it when the
process dies, SIGKILL included, so a lock that can be taken is a dead writer's. Collecting a
dead writer deletes its temp files and its parts that none of its markers lists (what a
resume from its snapshot would roll back anyway: a snapshot's parts are all in markers),
never a marker nor a listed part. Object storage has no locks and no temp files: nothing is
collected there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import weakref

import pyarrow.fs as pafs

from feast_bytewax.stores.folder_names import COMMITS, OUR_LOCK, OUR_MARKER, OUR_PART, OUR_TEMP

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no writer locks, nothing is collected
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_WAIT_S = 10.0  # a writer's lock held elsewhere this long: another live process has it


def lock_path(folder: str, writer: str) -> str:
    return f"{folder}/{COMMITS}/.{writer}.lock"


def is_lockable(filesystem: pafs.FileSystem) -> bool:
    """Writers lock (and dead ones are collected) on local folders of a POSIX system."""
    return fcntl is not None and isinstance(filesystem, pafs.LocalFileSystem)


def _same_file(path: str, fd: int) -> bool:
    """The open lock file is still the one at `path` (a collector did not delete it)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


class _Held:
    """A writer lock this process holds (one per lock file: resuming a writer in the
    process that still holds it, as tests do, shares it)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd, self.users = path, fd, 0


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


def _acquire(path: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:  # a collector holds it for milliseconds only
                raise RuntimeError(f"{path}: this writer is alive in another process (two "
                                   "runs resumed from one recovery state?)") from None
            time.sleep(0.02)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(path, fd):
            return fd
        os.close(fd)  # collected meanwhile (it was dead a moment ago): take a new one


class WriterLock:
    """A writer's liveness lock (`FolderTransaction` holds one from open to finish)."""

    def __init__(self, filesystem: pafs.FileSystem, folder: str, writer: str,
                 timeout_s: float = LOCK_WAIT_S) -> None:
        self.path = os.path.abspath(lock_path(folder, writer))
        self._done = False
        with _HELD_GUARD:
            held = _HELD.get(self.path)
            if held is None:
                filesystem.create_dir(os.path.dirname(self.path), recursive=True)
                held = _HELD[self.path] = _Held(self.path, _acquire(self.path, timeout_s))
            held.users += 1
        self._finalizer = weakref.finalize(self, WriterLock._drop, self.path, False)

    @staticmethod
    def _drop(path: str, forget: bool) -> None:
        with _HELD_GUARD:
            held = _HELD.get(path)
            if held is None:
                return
            held.users -= 1
            if held.users > 0:
                return
            del _HELD[path]
            if forget:  # finished: nothing of it is left to collect
                with contextlib.suppress(OSError):
                    os.unlink(path)
            os.close(held.fd)

    def release(self, forget: bool = False) -> None:
        """Drop the lock (`forget`: and delete the lock file, the writer having finished)."""
        if not self._done:
            self._done = True
            self._finalizer.detach()
            WriterLock._drop(self.path, forget)


def _take_if_dead(path: str) -> int | None:
    """The lock of a dead writer, taken (an open fd), or None: alive, or no lock file."""
    with _HELD_GUARD:
        if os.path.abspath(path) in _HELD:
            return None
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _same_file(path, fd):
        os.close(fd)
        return None
    return fd


def _remove(path: str) -> int:
    try:
        os.remove(path)
        return 1
    except FileNotFoundError:
        return 0


def _sweep(folder: str, writer: str, in_folder: list[str],
           in_commits: list[str]) -> int | None:
    """Delete a dead writer's temp files and the parts none of its markers lists; None (and
    nothing deleted) if one of its markers cannot be read."""
    commits = f"{folder}/{COMMITS}"
    listed: set[str] = set()
    for name in in_commits:
        m = OUR_MARKER.match(name)
        if m and m["writer"] == writer:
            try:
                with open(f"{commits}/{name}", "rb") as f:
                    listed.update(json.loads(f.read())["parts"])
            except FileNotFoundError:
                continue  # absorbed and deleted by a compaction meanwhile
            except (ValueError, KeyError, TypeError):
                log.warning("%s: unreadable marker %s: writer %s left as it is", folder,
                            name, writer)
                return None
    n = 0
    for name in in_commits:
        m = OUR_TEMP.match(name)
        if m and m["writer"] == writer:
            n += _remove(f"{commits}/{name}")
    for name in in_folder:
        m = OUR_TEMP.match(name) or OUR_PART.match(name)
        if m and m["writer"] == writer and name not in listed:
            n += _remove(f"{folder}/{name}")
    return n


def collect_dead_writers(filesystem: pafs.FileSystem, folder: str) -> int:
    """Delete what dead writers left in `folder`: their temp files, their parts no marker
    lists, their locks (the rule: the module docstring). Local folders only (elsewhere
    there are no locks: nothing is collected). Returns the number of files deleted."""
    if not is_lockable(filesystem):
        return 0
    commits = f"{folder}/{COMMITS}"
    try:
        names = os.listdir(commits)
    except FileNotFoundError:
        return 0
    n = 0
    for name in names:
        m = OUR_LOCK.match(name)
        if m is None:
            continue
        path = f"{commits}/{name}"
        fd = _take_if_dead(path)
        if fd is None:
            continue
        try:  # listed again under its lock: what it wrote before it died, all of it
            swept = _sweep(folder, m["writer"], os.listdir(folder), os.listdir(commits))
            if swept is None:
                continue
            os.unlink(path)  # while holding it: a writer resumed meanwhile takes a new one
        finally:
            os.close(fd)
        if swept:
            log.info("%s: deleted %d leftover file(s) of dead writer %s", folder, swept,
                     m["writer"])
        n += swept
    return n


def collect_quietly(filesystem: pafs.FileSystem, folder: str) -> int:
    """`collect_dead_writers`, whose failure (a disk error) never fails the caller."""
    try:
        return collect_dead_writers(filesystem, folder)
    except OSError as e:
        log.warning("%s: leftovers of dead writers not collected: %s", folder, e)
        return 0
