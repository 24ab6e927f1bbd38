"""Dead-letter output: `Rejected` and `Late` records as JSON lines (shared/spec/events.md).

`DeadLetterSink(path, parts=1)` is a bytewax `FixedPartitionedSink`: each partition is one
file owned by exactly one worker (worker-safe without locks). Items are ``(key, record)``
pairs like every bytewax partitioned sink; `keyed` makes them (key = the source name from the
record's origin, so one input's dead letters stay together and in order). With ``parts=1``
the file is `path` itself; with more, ``<stem>.p<i><suffix>`` (``dead.p0.jsonl`` ...).

One JSON object per line:

- rejected: ``{"kind": "rejected", "code", "reason", "origin", "payload"}`` (payload = the
  original text);
- late: ``{"kind": "late", "code", "reason", "origin", "watermark", "watermark_iso",
  "payload": {the event as a JSON object the validator accepts}}`` (`records.event_payload`),
  so a late event can be fed back as it is.

Dead letters accumulate across runs: a fresh run appends to the file. Exactly-once with
bytewax recovery: the snapshot of a partition is the byte size of its file after a flush,
and a resumed partition truncates its file to that size before writing, so the lines replayed
after the last snapshot are not duplicated (a crash before the first snapshot: see
`_start_size`). Lines are flushed at every snapshot (epoch end) and on close.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from feast_bytewax.records import Late, Rejected, dead_letter_record, unbatch

__all__ = [
    "DeadLetterSink",
    "count_by_code",
    "keyed",
    "read_dead_letters",
]


def keyed(x: Rejected | Late) -> tuple[str, Rejected | Late]:
    """``x`` -> ``(key, x)`` for `DeadLetterSink`; key = the source part of the origin."""
    origin = x.origin
    return (origin.rsplit(":", 1)[0] if ":" in origin else origin, x)


def _part_path(path: Path, i: int, parts: int) -> Path:
    if parts == 1:
        return path
    return path.with_name(f"{path.stem}.p{i}{path.suffix or '.jsonl'}")


def _start_size(path: Path, recovery: str | None) -> int:
    """Where a fresh run starts appending. With recovery, a fresh start may be the restart of
    an attempt that crashed before its first snapshot: the sidecar written by that attempt
    (same recovery directory) says where it started, and its lines are replaced."""
    size = path.stat().st_size if path.exists() else 0
    if recovery is None:
        return size
    side = path.with_name(path.name + ".start")
    if side.exists():
        mark = json.loads(side.read_text())
        if mark.get("recovery") == recovery:
            return min(int(mark["size"]), size)
    side.write_text(json.dumps({"recovery": recovery, "size": size}))
    return size


class _DeadLetterPartition(StatefulSinkPartition[Rejected | Late, int]):
    def __init__(self, path: Path, resume_state: int | None, recovery: str | None):
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.exists() else 0
        keep = _start_size(path, recovery) if resume_state is None else int(resume_state)
        self._f = open(path, "ab")  # noqa: SIM115 - closed in close(); appends land at the end
        self._f.truncate(min(keep, size))
        self.written = 0

    def write_batch(self, values: list[Rejected | Late | list[Late]]) -> None:
        lines = [json.dumps(dead_letter_record(v), ensure_ascii=False, default=str)
                 for v in unbatch(values)]
        if lines:
            self._f.write(("\n".join(lines) + "\n").encode("utf-8"))
            self.written += len(lines)

    def snapshot(self) -> int:
        self._f.flush()
        return self._f.tell()

    def close(self) -> None:
        self._f.flush()
        self._f.close()


class DeadLetterSink(FixedPartitionedSink[Rejected | Late, int]):
    """JSON-lines dead letters; ``parts`` files, each owned by one worker.

    :arg path: the file (``parts == 1``) or the name pattern of the part files.
    :arg parts: number of partitions/files (default 1: dead letters are rare).
    """

    def __init__(self, path: str | Path, parts: int = 1, recovery: str | Path | None = None):
        if parts < 1:
            raise ValueError("parts must be >= 1")
        self.path = Path(path)
        self.parts = parts
        self.recovery = None if recovery is None else str(Path(recovery).resolve())

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _DeadLetterPartition:
        return _DeadLetterPartition(_part_path(self.path, int(for_part), self.parts),
                                    resume_state, self.recovery)

    def files(self) -> list[Path]:
        return [_part_path(self.path, i, self.parts) for i in range(self.parts)]


def read_dead_letters(path: str | Path, parts: int = 1) -> Iterator[dict]:
    """Read back the dead letters a `DeadLetterSink(path, parts)` wrote (missing files skip)."""
    for f in DeadLetterSink(path, parts).files():
        if not f.exists():
            continue
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)


def count_by_code(records: Any) -> dict[str, int]:
    """``{code: n}`` over dead-letter dicts (as from `read_dead_letters`)."""
    out: dict[str, int] = {}
    for r in records:
        out[r["code"]] = out.get(r["code"], 0) + 1
    return out


def redrive(path: str | Path, out: str | Path, kinds: tuple[str, ...] = ("rejected", "late"),
            parts: int = 1) -> dict[str, int]:
    """Write the payloads of dead letters back out as event JSON lines (a rejected record's
    original text as it was, a late event as the object the validator accepts), so that,
    fixed where needed, they can join the event archive and be replayed with their range.
    Returns how many of each kind were written."""
    counts = dict.fromkeys(kinds, 0)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as fh:
        for record in read_dead_letters(path, parts):
            kind = record.get("kind")
            if kind not in counts:
                continue
            payload = record.get("payload")
            line = payload if isinstance(payload, str) else json.dumps(payload, default=str)
            fh.write(line.replace("\n", " ") + "\n")
            counts[kind] += 1
    return counts
