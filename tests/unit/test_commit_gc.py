"""Leftovers of dead writers in the commit log (`stores.commits`, "Leftovers of dead
writers"; locks and collection: `stores.writer_locks`): collected when a writer's lock can be
taken (its process died: a real SIGKILL in
a child process here), never while the writer lives, whatever the files' age.

Each child process opens a `FolderTransaction`, writes, prints what the test needs as JSON,
then either SIGKILLs itself (optionally frozen "mid-write": a hidden temp file is left as a
killed `_put` leaves it) or waits for commands on stdin, alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from feast_bytewax.stores.commits import FolderTransaction, read_committed
from feast_bytewax.stores.compaction import compact
from feast_bytewax.stores.folder_names import COMMITS, new_run_id, writer_id
from feast_bytewax.stores.writer_locks import WriterLock, collect_dead_writers, lock_path

FS = pafs.LocalFileSystem()
CHILD_TIMEOUT_S = 120.0

PRELUDE = """
import json, os, signal, sys
import pyarrow as pa
import pyarrow.fs as pafs
from feast_bytewax.stores.commits import FolderTransaction
from feast_bytewax.stores.folder_names import new_run_id, writer_id

FS = pafs.LocalFileSystem()
folder = sys.argv[1]

def table(rows):
    return pa.table({
        "user_id": [k for k, _, _ in rows],
        "event_timestamp": pa.array([t for _, t, _ in rows], pa.timestamp("us", tz="UTC")),
        "value": pa.array([v for _, _, v in rows], pa.int64()),
    })

def txn(mode, replace=None):
    return FolderTransaction(FS, folder, writer_id(new_run_id(), "0"), mode, ("user_id",),
                             "event_timestamp", replace)

def mid_write(w):
    # what a SIGKILL inside `_put` leaves: the hidden temp of the next part and marker
    open(os.path.join(folder, f".part-{w.writer}-s{w.seq:08d}.parquet.tmp"), "wb").write(b"PAR1")
    os.makedirs(os.path.join(folder, "_commits"), exist_ok=True)
    open(os.path.join(folder, "_commits", f".{w.writer}-s{w.seq:08d}.json.tmp"), "wb").write(b"{")

def tell(**kw):
    print(json.dumps(kw), flush=True)

def die():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def table(rows: list[tuple[str, int, int]]) -> pa.Table:
    return pa.table({
        "user_id": [k for k, _, _ in rows],
        "event_timestamp": pa.array([t for _, t, _ in rows], pa.timestamp("us", tz="UTC")),
        "value": pa.array([v for _, _, v in rows], pa.int64()),
    })


def txn(folder: str, mode: str = "live", replace=None) -> FolderTransaction:
    return FolderTransaction(FS, folder, writer_id(new_run_id(), "0"), mode, ("user_id",),
                             "event_timestamp", replace)


def read(folder: str) -> dict[tuple[str, int], int]:
    files = sorted(str(p) for p in Path(folder).glob("part-*.parquet"))
    got = read_committed(FS, folder, files, "event_timestamp")
    if got is None:
        return {}
    ts = got["event_timestamp"].cast(pa.int64()).to_pylist()
    return dict(zip(zip(got["user_id"].to_pylist(), ts, strict=True), got["value"].to_pylist(),
                    strict=True))


def files(folder: str) -> set[str]:
    """Every file in the folder and its commit log, relative names."""
    root = Path(folder)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def of(writer: str, names: set[str]) -> set[str]:
    return {n for n in names if writer in n}


class Child:
    """A child process running PRELUDE + `body` on `folder`."""

    def __init__(self, folder: str, body: str) -> None:
        code = PRELUDE + textwrap.dedent(body)
        self.p = subprocess.Popen([sys.executable, "-c", code, folder], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def said(self) -> dict:
        line = self.p.stdout.readline()
        assert line, f"child said nothing:\n{self.p.stderr.read()[-3000:]}"
        return json.loads(line)

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def wait(self) -> int:
        return self.p.wait(CHILD_TIMEOUT_S)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(30)


@pytest.fixture
def children():
    started: list[Child] = []
    yield started
    for c in started:
        c.kill()


def start(children: list[Child], folder: str, body: str) -> Child:
    children.append(Child(folder, body))
    return children[-1]


def age(folder: str, days: float = 2.0) -> None:
    """Make every file look old: the rule must not depend on age."""
    then = time.time() - days * 86400
    for p in Path(folder).rglob("*"):
        os.utime(p, (then, then))


def test_a_writer_killed_before_its_first_snapshot_is_collected_at_the_next_open(
        tmp_path, children):
    folder = str(tmp_path / "src")
    kept = txn(folder)
    kept.write(table([("a", 1, 1)]))
    kept.checkpoint()
    kept.finish()
    before = files(folder)
    child = start(children, folder, """
        w = txn("live")
        w.write(table([("b", 2, 2)]))
        w.write(table([("b", 3, 3)]))
        mid_write(w)
        tell(writer=w.writer)
        die()
    """)
    dead = child.said()["writer"]
    assert child.wait() == -signal.SIGKILL
    left = of(dead, files(folder))
    assert left == {f"part-{dead}-s00000000.parquet", f"part-{dead}-s00000001.parquet",
                    f".part-{dead}-s00000002.parquet.tmp", f"{COMMITS}/.{dead}-s00000002.json.tmp",
                    f"{COMMITS}/.{dead}.lock"}
    assert read(folder) == {("a", 1): 1}  # invisible, but on disk

    fresh = txn(folder)  # a restart: its own new writer collects the dead one
    assert files(folder) == before
    fresh.write(table([("b", 2, 2)]))
    assert files(folder) - before == {f"{COMMITS}/.{fresh.writer}.lock",
                                      f"part-{fresh.writer}-s00000000.parquet"}
    fresh.finish()
    assert read(folder) == {("a", 1): 1, ("b", 2): 2}
    assert not [n for n in files(folder) if n.endswith((".tmp", ".lock"))]  # a clean writer


def test_a_live_writer_of_another_process_is_never_collected_whatever_its_age(
        tmp_path, children):
    folder = str(tmp_path / "src")
    child = start(children, folder, """
        w = txn("live")
        w.write(table([("b", 2, 2)]))
        mid_write(w)  # as if frozen inside a write (a full disk, a stopped process)
        tell(writer=w.writer)
        sys.stdin.readline()
        os.remove(os.path.join(folder, f".part-{w.writer}-s{w.seq:08d}.parquet.tmp"))
        os.remove(os.path.join(folder, "_commits", f".{w.writer}-s{w.seq:08d}.json.tmp"))
        w.checkpoint()
        tell(committed=True)
        sys.stdin.readline()
    """)
    alive = child.said()["writer"]
    mine = of(alive, files(folder))
    assert len(mine) == 4  # its part, two temps, its lock
    age(folder)
    other = txn(folder)  # opening collects: the live one is not dead
    assert collect_dead_writers(FS, folder) == 0
    compact(FS, folder, sorted(str(p) for p in Path(folder).glob("part-*")),
            "event_timestamp", ["user_id"], grace_s=0)
    assert of(alive, files(folder)) == mine
    child.send("commit")
    assert child.said() == {"committed": True}
    assert read(folder) == {("b", 2): 2}  # its part was there to commit
    child.send("exit")
    assert child.wait() == 0  # exits without finishing: its lock file stays
    assert f"{COMMITS}/.{alive}.lock" in files(folder)
    assert collect_dead_writers(FS, folder) == 0  # nothing to delete but the lock
    assert of(alive, files(folder)) == {f"part-{alive}-s00000000.parquet",
                                        f"{COMMITS}/{alive}-s00000001.json"}
    assert read(folder) == {("b", 2): 2}
    other.finish()


def test_a_dead_replay_writer_keeps_its_staged_parts_and_can_still_be_resumed(
        tmp_path, children):
    folder = str(tmp_path / "src")
    child = start(children, folder, """
        w = txn("replay", replace=(0, 100))
        w.write(table([("a", 5, 5)]))
        state = w.checkpoint()  # staged: a resume commits it at the end
        w.write(table([("a", 6, 6)]))  # after the snapshot: never listed
        mid_write(w)
        tell(writer=w.writer, state=state)
        die()
    """)
    said = child.said()
    dead, state = said["writer"], said["state"]
    assert child.wait() == -signal.SIGKILL
    txn(folder).finish()  # another writer opens the folder
    assert of(dead, files(folder)) == {f"part-{dead}-s00000000.parquet",
                                       f"{COMMITS}/{dead}-s00000001.json"}
    assert read(folder) == {}  # staged only
    resumed = FolderTransaction.resume(state, filesystem=FS, folder=folder, mode="replay",
                                       keys=("user_id",), ts="event_timestamp",
                                       replace=(0, 100))
    resumed.write(table([("a", 6, 6)]))
    resumed.finish()
    assert read(folder) == {("a", 5): 5, ("a", 6): 6}
    assert not [n for n in files(folder) if n.endswith((".tmp", ".lock"))]


def test_files_of_writers_without_a_lock_file_are_left_alone(tmp_path):
    folder = tmp_path / "src"
    (folder / COMMITS).mkdir(parents=True)
    old = "r20250101T000000-0badc0de-0"  # e.g. written before writers took locks
    debris = {f"part-{old}-s00000000.parquet", f".part-{old}-s00000001.parquet.tmp",
              f"{COMMITS}/.{old}-s00000001.json.tmp", ".some-tool.tmp", "notes.txt"}
    for name in debris:
        (folder / name).write_bytes(b"x")
    age(str(folder))
    w = txn(str(folder))
    assert collect_dead_writers(FS, str(folder)) == 0
    assert debris <= files(str(folder))
    w.finish()


def test_a_killed_compaction_is_collected_by_the_next_one(tmp_path, children):
    folder = str(tmp_path / "src")
    for i in range(3):
        w = txn(folder)
        w.write(table([("a", i, i)]))
        w.finish()
    want = read(folder)
    child = start(children, folder, """
        from pathlib import Path
        import feast_bytewax.stores.compaction as compaction

        def killed(*a, **kw):  # the checkpoint marker is never written
            tell(parts=sorted(p.name for p in Path(folder).glob("part-*compact*")))
            die()

        compaction.write_marker = killed
        compaction.compact(FS, folder, sorted(str(p) for p in Path(folder).glob("part-*")),
                           "event_timestamp", ["user_id"], grace_s=0)
    """)
    orphans = child.said()["parts"]
    assert child.wait() == -signal.SIGKILL
    assert len(orphans) == 1 and orphans[0] in files(folder)
    assert read(folder) == want
    result = compact(FS, folder, sorted(str(p) for p in Path(folder).glob("part-*")),
                     "event_timestamp", ["user_id"], grace_s=0)
    assert result.leftovers_deleted == 1 and orphans[0] not in files(folder)
    assert read(folder) == want
    assert not [n for n in files(folder) if n.endswith((".tmp", ".lock"))]


def test_a_writer_resumed_while_its_old_object_lives_shares_the_lock(tmp_path):
    """In one process (as in tests), a resume does not wait for the old object's lock, and
    a third writer's collection spares both."""
    folder = str(tmp_path / "src")
    w = txn(folder)
    w.write(table([("a", 1, 1)]))
    state = w.checkpoint()
    w.write(table([("a", 2, 2)]))  # pending
    t0 = time.monotonic()
    again = FolderTransaction.resume(state, filesystem=FS, folder=folder, mode="live",
                                     keys=("user_id",), ts="event_timestamp")
    assert time.monotonic() - t0 < 2
    again.write(table([("a", 3, 3)]))
    txn(folder).finish()
    assert f"part-{again.writer}-s00000001.parquet" in files(folder)  # again's pending part
    again.checkpoint()
    assert read(folder) == {("a", 1): 1, ("a", 3): 3}
    del w
    again.finish()
    assert not [n for n in files(folder) if n.endswith(".lock")]


def test_a_writer_alive_in_another_process_cannot_be_opened_twice(tmp_path, children):
    folder = str(tmp_path / "src")
    child = start(children, folder, """
        w = txn("live")
        w.write(table([("a", 1, 1)]))
        tell(writer=w.writer)
        sys.stdin.readline()
    """)
    writer = child.said()["writer"]
    with pytest.raises(RuntimeError, match="alive in another process"):
        WriterLock(FS, folder, writer, timeout_s=0.3)
    assert Path(lock_path(folder, writer)).exists()
    child.send("exit")
    assert child.wait() == 0
    WriterLock(FS, folder, writer, timeout_s=0.3).release(forget=True)
    assert not Path(lock_path(folder, writer)).exists()
