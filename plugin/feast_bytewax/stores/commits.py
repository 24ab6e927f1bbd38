"""Commits of the parquet-folder offline store: what readers see, whatever crashed or reran.

A batch-source folder holds part files and a commit log (`_commits/`), as lakehouse writers
do it: a part becomes visible only when a commit marker lists it, and the marker is written
atomically after its parts. So:

- **Writers** (`FolderTransaction`, one per sink partition and folder) name their parts
  deterministically, ``part-<writer>-s<seq>.parquet`` with ``<writer> = <run>-<nonce>-<part>``,
  and write a marker ``_commits/<writer>-s<seq>.json`` at each Bytewax snapshot. A live run
  commits at every snapshot; a replay *stages* at snapshots and commits once, at the end,
  with the time range it replaces. A restart from a snapshot deletes the writer's parts and
  markers written after it (their rows are produced again), so nothing is stored twice and
  nothing half-written is ever read. Writes retried after a store error rewrite the same
  part name.
- **Readers** (`read_committed`) take the committed parts only (a part of ours that no
  commit lists is a crashed or unfinished writer's: invisible; files of other origin, e.g.
  an earlier layout, count as committed first), hide the rows of a replaced range that
  was committed before (``replace``: a replay of [lo, hi] is the truth for that range; its
  own other partitions, committing at about the same time, are spared), then
  keep one row per identity (join keys, event timestamp): the most recently committed one.
  Parts written under older definitions lack new columns: they read as nulls.

A commit marker is JSON: ``{"v", "run", "writer", "seq", "kind": "commit"|"stage",
"parts": [...], "replace": [lo_us, hi_us] | null, "keys": [...], "ts": column,
"time_ns", "started_ns"}``. Commit order is ``time_ns`` (then the marker name).

**Leftovers of dead writers** (local folders). A writer killed mid-write leaves a hidden temp
(``.part-<writer>-s<seq>.parquet.tmp``, ``_commits/.<writer>-s<seq>.json.tmp``), and one
killed before its first snapshot leaves parts no marker lists, under a name no restart uses
again (it gets a new writer id). Readers never see either; they are collected, under a rule
that never touches a live writer's files, whatever its age (one stalled by a full disk may
hold a written part for minutes before its commit):

- a writer is *alive* while it holds its lock, ``_commits/.<writer>.lock``: it takes it
  (an exclusive ``flock``) before it writes its first file, and keeps it until it has
  finished (then deletes it) or its process ends. The operating system drops the lock when
  the process dies, SIGKILL included, so a lock file nobody holds is a dead writer's: a
  writer is *dead* when its lock can be taken.
- every `FolderTransaction` that opens a folder (and `stores.compaction.compact`) collects
  the dead writers it finds: it takes each one's lock, deletes its temp files and its parts
  that none of its markers lists, then the lock file. Its markers, and the parts they list
  (staged ones too: a resumed replay still commits them), are never touched; a writer
  resumed later keeps its name and takes a new lock (its own rollback is not needed for
  what was collected, and finds nothing missing that a marker lists).
- a writer without a lock file (written before this rule, or on object storage, where
  writes are single PUTs that leave no temp files and there are no locks) is never
  collected: nothing can prove it dead. Neither are other files.

A resumed writer (`FolderTransaction.resume`) rolls back its own files from after its
snapshot, temp files of parts and markers included. (Locks and collection:
`stores.writer_locks`.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from feast_bytewax.stores import writer_locks
from feast_bytewax.stores.folder_names import (
    COMMITS,
    OUR_MARKER,
    OUR_PART,
    OUR_TEMP,
    marker_name,
    part_name,
)

log = logging.getLogger(__name__)

ORDER = "__fb_commit_order"
FORMAT = 1
COMMIT, STAGE, CHECKPOINT = "commit", "stage", "checkpoint"


def _is_local(filesystem: pafs.FileSystem) -> bool:
    return isinstance(filesystem, pafs.LocalFileSystem)


def _put(filesystem: pafs.FileSystem, path: str, write: Any) -> None:
    """Write a file atomically: a hidden temp name then a rename on a local disk (a reader
    never sees half a file, a crash leaves only a hidden temp); a PUT on object storage."""
    folder, _, name = path.rpartition("/")
    if not _is_local(filesystem):
        write(path)
        return
    filesystem.create_dir(folder, recursive=True)
    temp = f"{folder}/.{name}.tmp"
    try:
        write(temp)
        filesystem.move(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            filesystem.delete_file(temp)
        raise


def write_part_file(filesystem: pafs.FileSystem, folder: str, name: str,
                    table: pa.Table) -> str:
    path = f"{folder}/{name}"
    _put(filesystem, path, lambda p: pq.write_table(table, p, filesystem=filesystem))
    return path


def write_marker(filesystem: pafs.FileSystem, folder: str, marker: dict) -> None:
    data = json.dumps(marker, sort_keys=True).encode()
    path = f"{folder}/{COMMITS}/{marker_name(marker['writer'], marker['seq'])}"

    def write(p: str) -> None:
        with filesystem.open_output_stream(p) as out:
            out.write(data)

    _put(filesystem, path, write)


def _children(filesystem: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(folder, recursive=False, allow_not_found=True)
    return [i for i in filesystem.get_file_info(selector) if i.type == pafs.FileType.File]


def read_markers(filesystem: pafs.FileSystem, folder: str) -> list[dict]:
    """Every commit marker, in commit order."""
    out = []
    for info in _children(filesystem, f"{folder}/{COMMITS}"):
        if not OUR_MARKER.match(info.base_name):
            continue
        with filesystem.open_input_stream(info.path) as f:
            out.append(json.loads(f.read()))
    out.sort(key=lambda m: (m["time_ns"], marker_name(m["writer"], m["seq"])))
    return out


@dataclass
class FolderTransaction:
    """The offline writes of one sink partition to one folder, committed with snapshots.

    `mode` is ``live`` (commit at every snapshot) or ``replay`` (stage at snapshots, commit
    at `finish` with `replace`). `state()` is the partition's Bytewax resume state.
    """

    filesystem: pafs.FileSystem
    folder: str
    writer: str
    mode: str
    keys: tuple[str, ...]
    ts: str
    replace: tuple[int, int] | None = None
    seq: int = 0
    staged: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    done: bool = False
    started_ns: int = field(default_factory=time.time_ns)
    _lock: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Opening collects dead writers' leftovers (local folders); the writer's own lock
        is taken before it writes anything (`_hold`)."""
        if writer_locks.is_lockable(self.filesystem):
            writer_locks.collect_quietly(self.filesystem, self.folder)

    def _hold(self) -> None:
        """Hold the writer lock before writing a file (tried again at the next write if it
        failed: a writer without its lock is never collected, so that is safe)."""
        if self._lock is None and not self.done and writer_locks.is_lockable(self.filesystem):
            try:
                self._lock = writer_locks.WriterLock(self.filesystem, self.folder, self.writer)
            except OSError as e:
                log.warning("%s: writer %s has no lock (%s): if it dies, its leftovers stay",
                            self.folder, self.writer, e)

    def release(self) -> None:
        """Drop the writer lock and delete its file (when finished: nothing to collect)."""
        if self._lock is not None:
            self._lock.release(forget=True)
            self._lock = None

    @property
    def run(self) -> str:
        return self.writer.rsplit("-", 2)[0]

    def write(self, table: pa.Table) -> str:
        """Write the next part (not visible until committed). Idempotent under retries: a
        failed attempt is rewritten under the same name."""
        name = part_name(self.writer, self.seq)
        self._hold()
        write_part_file(self.filesystem, self.folder, name, table)
        self.pending.append(name)
        self.seq += 1
        return name

    def _marker(self, kind: str, parts: list[str], replace: tuple[int, int] | None) -> None:
        self._hold()
        write_marker(self.filesystem, self.folder, {
            "v": FORMAT, "run": self.run, "writer": self.writer, "seq": self.seq,
            "kind": kind, "parts": parts, "replace": list(replace) if replace else None,
            "keys": list(self.keys), "ts": self.ts, "time_ns": time.time_ns(),
            "started_ns": self.started_ns,
        })

    def checkpoint(self) -> dict:
        """At a Bytewax snapshot: commit (live) or stage (replay) what was written since."""
        if self.pending and not self.done:
            self._marker(COMMIT if self.mode == "live" else STAGE, self.pending, None)
            self.staged += self.pending
            self.pending = []
        return self.state()

    def finish(self, replace: tuple[int, int] | None = None) -> None:
        """End of input: a replay commits everything it wrote, replacing its range (`replace`,
        else the one it was opened with)."""
        if self.done:
            return
        if self.mode == "live":
            self.checkpoint()
        else:
            self._marker(COMMIT, self.staged + self.pending, replace or self.replace)
            self.staged += self.pending
            self.pending = []
        self.done = True
        self.release()

    def state(self) -> dict:
        return {"writer": self.writer, "seq": self.seq, "staged": list(self.staged),
                "done": self.done, "started_ns": self.started_ns}

    def rollback_after(self, seq: int) -> None:
        """Delete this writer's parts and markers from after a snapshot (they are produced
        again by the resumed run), and its temp files (of parts and of markers)."""
        for info in _children(self.filesystem, self.folder):
            m = OUR_PART.match(info.base_name)
            t = OUR_TEMP.match(info.base_name)
            if ((t and t["writer"] == self.writer)
                    or (m and m["writer"] == self.writer and int(m["seq"]) >= seq)):
                self._delete(info.path)
        for info in _children(self.filesystem, f"{self.folder}/{COMMITS}"):
            m = OUR_MARKER.match(info.base_name)
            t = OUR_TEMP.match(info.base_name)
            if ((t and t["writer"] == self.writer)
                    or (m and m["writer"] == self.writer and int(m["seq"]) > seq)):
                self._delete(info.path)

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # a collector was first
            self.filesystem.delete_file(path)

    @classmethod
    def resume(cls, state: dict, **kw: Any) -> FolderTransaction:
        txn = cls(writer=state["writer"], seq=state["seq"], staged=list(state["staged"]),
                  done=state["done"], started_ns=state["started_ns"], **kw)
        txn.rollback_after(txn.seq)
        return txn


@dataclass(frozen=True)
class Visible:
    """A committed part: its commit's order, run and time."""

    path: str
    order: int
    run: str | None
    time_ns: int


@dataclass(frozen=True)
class Replace:
    """A replay's commit: rows of `[lo, hi]` committed before it are hidden, except those of
    its own run committed since it started (its other partitions, other processes)."""

    order: int
    run: str
    started_ns: int
    lo: int
    hi: int

    def hides(self, part: Visible) -> bool:
        if part.order >= self.order:
            return False
        return not (part.run == self.run and part.time_ns >= self.started_ns)


def visible_parts(filesystem: pafs.FileSystem, folder: str, data_files: list[str],
                  markers: list[dict] | None = None,
                  ) -> tuple[list[Visible], list[Replace], list[str]]:
    """The visible parts, the replaced ranges, the identity columns the writers declared.
    A compaction's checkpoint (`stores.compaction`) stands for the commits and files it
    absorbed: those are skipped."""
    markers = read_markers(filesystem, folder) if markers is None else markers
    absorbed = {name for m in markers if m["kind"] == CHECKPOINT for name in m["absorbs"]}
    committed: dict[str, tuple[int, str, int]] = {}
    replaces = []
    keys: list[str] = []
    for order, m in enumerate(markers):
        if m["kind"] not in (COMMIT, CHECKPOINT) or marker_name(m["writer"], m["seq"]) in absorbed:
            continue
        for p in m["parts"]:
            committed[p] = (order, m["run"], m["time_ns"])
        if m.get("replace"):
            lo, hi = m["replace"]
            replaces.append(Replace(order, m["run"], m.get("started_ns", m["time_ns"]), lo, hi))
        keys = m.get("keys") or keys
    out = []
    for path in data_files:
        name = path.rsplit("/", 1)[-1]
        if name in committed:
            out.append(Visible(path, *committed[name]))
        elif not OUR_PART.match(name) and name not in absorbed:
            out.append(Visible(path, -1, None, 0))  # not ours: an earlier layout, a user's
    return out, replaces, keys


def as_newest_types(tables: list[pa.Table], orders: list[int], folder: str) -> list[pa.Table]:
    """Parts whose columns no type promotion can merge (a feature once declared String, now
    Int64): each column is read as the part committed last holds it, cast where the values
    allow and null where they do not, with one warning. Otherwise one old part would fail
    every read of the folder, compaction included, for good; its rows are superseded by the
    replay that rewrote the range, or are read as null until one does."""
    newest = tables[max(range(len(tables)), key=orders.__getitem__)].schema
    out = []
    for t in tables:
        for i, f in enumerate(t.schema):
            want = newest.field(f.name).type if f.name in newest.names else f.type
            if f.type == want:
                continue
            try:
                column = t.column(i).cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                column = pa.nulls(t.num_rows, want)
                log.warning("%s: a part holds column %r as %s, the newest as %s: read as null "
                            "there; replay that range (then `feast-bytewax compact`) to "
                            "rewrite it", folder, f.name, f.type, want)
            t = t.set_column(i, pa.field(f.name, want), column)
        out.append(t)
    return out


def read_committed(filesystem: pafs.FileSystem, folder: str, data_files: list[str],
                   ts: str, keys: list[str] | None = None, dedup: bool = True,
                   markers: list[dict] | None = None) -> pa.Table | None:
    """The folder as readers must see it (see the module docstring); None if it has no
    visible part. `dedup=False` keeps superseded copies of an identity (the skew report
    counts them: a live run restarted without recovery writes its rows again). `markers`:
    as if only these commits existed (compaction)."""
    parts, replaces, declared = visible_parts(filesystem, folder, data_files, markers)
    if not parts:
        return None
    keys = list(keys or declared)
    tables = []
    for part in parts:
        t = pq.read_table(part.path, filesystem=filesystem)
        hide = [(r.lo, r.hi) for r in replaces if r.hides(part)]
        if hide and ts in t.column_names:
            us = pc.cast(pc.cast(t[ts], pa.timestamp("us", tz="UTC")), pa.int64())
            drop = None
            for lo, hi in hide:
                inside = pc.and_(pc.greater_equal(us, lo), pc.less_equal(us, hi))
                drop = inside if drop is None else pc.or_(drop, inside)
            t = t.filter(pc.invert(pc.fill_null(drop, False)))
        tables.append(t.append_column(ORDER, pa.array([part.order] * t.num_rows, pa.int32())))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a column's type changed between parts
        table = pa.concat_tables(as_newest_types(tables, [p.order for p in parts], folder),
                                 promote_options="permissive")
    ident = [c for c in [*keys, ts] if c in table.column_names]
    if dedup and len(ident) == len(keys) + 1 and table.num_rows:
        table = _latest_per_identity(table, ident)
    return table.drop_columns([ORDER])


def _latest_per_identity(table: pa.Table, ident: list[str]) -> pa.Table:
    """One row per identity: the one committed last (then the one written last)."""
    n = table.num_rows
    rank = pc.sort_indices(pa.table({ORDER: table[ORDER], "__row": pa.array(range(n))}),
                           [(ORDER, "ascending"), ("__row", "ascending")])
    ranked = table.take(rank)
    keyed = ranked.select(ident).append_column("__pos", pa.array(range(n), pa.int64()))
    last = keyed.group_by(ident, use_threads=False).aggregate([("__pos", "max")])
    if last.num_rows == n:
        return table  # no identity repeats: the usual case
    return ranked.take(np.sort(last.column("__pos_max").to_numpy()))
