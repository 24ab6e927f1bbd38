"""Compaction of a parquet-folder batch source: few large parts, no superseded row.

A day of live running commits a part per flush per worker, and reruns leave rows that later
commits hide; both stay on disk (readers skip them) until a compaction rewrites what readers
see into few large parts and one *checkpoint* marker that stands for every commit (and file
of another layout) it absorbed. Readers then skip the absorbed commits (`stores.commits`).

Safe while writers run: only commits older than `grace_s` are absorbed (a replay's
partitions commit within seconds of each other, and stay together), later ones stay as they
are and win over the checkpoint, which takes the place of the newest commit it absorbed;
staged (unfinished) replays are never touched. Files are deleted one compaction later (what
an earlier checkpoint absorbed), so a reader that listed the folder just before never finds
a file gone. Idempotent: with nothing new to absorb it does nothing.

A compaction first collects dead writers' leftovers (`stores.writer_locks`) and holds a
writer lock of its own while it writes: a compaction killed midway is collected in turn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from feast_bytewax.stores.commits import (
    CHECKPOINT,
    COMMIT,
    FORMAT,
    read_committed,
    read_markers,
    write_marker,
    write_part_file,
)
from feast_bytewax.stores.folder_names import (
    COMMITS,
    OUR_PART,
    marker_name,
    new_run_id,
    part_name,
    writer_id,
)
from feast_bytewax.stores.writer_locks import WriterLock, collect_dead_writers, is_lockable

ROWS_PER_PART = 1_000_000


@dataclass
class CompactResult:
    absorbed_commits: int = 0
    absorbed_files: int = 0
    rows: int = 0
    parts_written: int = 0
    files_deleted: int = 0
    leftovers_deleted: int = 0  # of dead writers: temp files, never-committed parts


def compact(filesystem: pafs.FileSystem, folder: str, data_files: list[str], ts: str,
            keys: list[str], grace_s: float = 60.0,
            rows_per_part: int = ROWS_PER_PART) -> CompactResult:
    """Rewrite the folder's visible rows as a checkpoint (see the module docstring)."""
    result = CompactResult(leftovers_deleted=collect_dead_writers(filesystem, folder))
    markers = read_markers(filesystem, folder)
    before = {name for m in markers if m["kind"] == CHECKPOINT for name in m["absorbs"]}
    cut = time.time_ns() - int(grace_s * 1e9)
    take = [m for m in markers if m["kind"] in (COMMIT, CHECKPOINT) and m["time_ns"] <= cut
            and marker_name(m["writer"], m["seq"]) not in before]
    foreign = [p for p in data_files if not OUR_PART.match(p.rsplit("/", 1)[-1])
               and p.rsplit("/", 1)[-1] not in before]
    result.files_deleted = _delete_absorbed(filesystem, folder, markers, before)
    if len(take) + len(foreign) <= 1 and not any(m.get("replace") for m in take):
        return result  # one commit (or file) is already compact
    taken = {marker_name(m["writer"], m["seq"]) for m in take}
    keep_parts = {p for m in take for p in m["parts"]}
    subset = [p for p in data_files
              if p.rsplit("/", 1)[-1] in keep_parts or p in foreign]
    # readers of these commits alone: the rows they show today
    table = read_committed(filesystem, folder, subset, ts, keys,
                           markers=[m for m in markers if marker_name(m["writer"], m["seq"])
                                    in taken])
    writer = writer_id(new_run_id(), "compact")
    lock = WriterLock(filesystem, folder, writer) if is_lockable(filesystem) else None
    names = []
    if table is not None:
        for seq, start in enumerate(range(0, table.num_rows, rows_per_part)):
            chunk = table.slice(start, rows_per_part)
            names.append(part_name(writer, seq))
            write_part_file(filesystem, folder, names[-1], chunk)
        result.rows = table.num_rows
    newest = max(take, key=lambda m: (m["time_ns"], marker_name(m["writer"], m["seq"])),
                 default=None)
    write_marker(filesystem, folder, {
        "v": FORMAT, "run": writer.rsplit("-", 2)[0], "writer": writer, "seq": len(names),
        "kind": CHECKPOINT, "parts": names, "replace": None, "keys": list(keys), "ts": ts,
        "time_ns": newest["time_ns"] if newest else time.time_ns(), "started_ns": 0,
        "absorbs": sorted(taken | {p.rsplit("/", 1)[-1] for p in foreign}),
    })
    if lock is not None:
        lock.release(forget=True)
    result.absorbed_commits, result.absorbed_files = len(take), len(foreign)
    result.parts_written = len(names)
    return result


def _delete_absorbed(filesystem: pafs.FileSystem, folder: str, markers: list[dict],
                     absorbed: set[str]) -> int:
    """Files an earlier checkpoint absorbed: their markers, their parts, foreign files."""
    parts = {p for m in markers if marker_name(m["writer"], m["seq"]) in absorbed
             for p in m["parts"]}
    doomed = [f"{folder}/{COMMITS}/{n}" for n in absorbed if n.endswith(".json")]
    doomed += [f"{folder}/{n}" for n in parts | {n for n in absorbed if n.endswith(".parquet")}]
    n = 0
    for path in doomed:
        if filesystem.get_file_info(path).type == pafs.FileType.File:
            filesystem.delete_file(path)
            n += 1
    return n
