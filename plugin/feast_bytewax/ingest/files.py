"""Bytewax 0.21 input sources that replay event files.

`EventFileSource(path)` reads one parquet file, one JSON-lines file, or a folder of them
(one partition per file, so bytewax spreads files over workers), on the local disk or in
object storage (``s3://bucket/prefix`` or ``s3://bucket/key.parquet``): both go through
pyarrow's filesystem layer (`feast_bytewax.ingest.filesystems`) and the same partition code. An
S3-compatible endpoint comes from ``s3_endpoint_override``, else from the environment
(``FEAST_S3_ENDPOINT``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``); credentials from
the standard AWS chain. It emits raw, unvalidated items ``(payload, origin)``:

- JSON lines: ``payload`` is the line as ``str`` without its line ending (``bytes`` if the line
  is not valid UTF-8, so the validator reports it as ``bad_json``); ``origin`` is
  ``"<file>:<line number>"``, 1-based like editors and ``grep -n``. Blank lines are
  emitted too (they are rejected downstream, never dropped silently).
- parquet: ``payload`` is the row as a ``dict`` (only the spec's columns that the file has;
  a missing column makes every row a ``missing_field`` rejection); ``origin`` is
  ``"<file>:<row index>"``, 0-based like pandas ``iloc``. A tz-aware timestamp column is
  handed over as `feast_bytewax.ingest.timestamps.EpochUs` (exact UTC epoch us, ~50x cheaper than a
  ``datetime``); a naive one as naive ``datetime`` (rejected downstream).

``<file>`` is the file name for a local file and the full URI in object storage
(``s3://bucket/prefix/part-00001.parquet:17``). Partitions are named by file name.

Feed items to `feast_bytewax.ingest.validate.validate_item`.

Resume state (bytewax recovery) is the position of the next unread row: an ``int`` row index
for parquet, a ``(next_line_index, byte_offset)`` tuple for JSON lines (an ``int`` line
index is accepted as well and skips lines by reading). Rows are emitted in file order, in
batches of ``batch_size``.

Optional ``start`` / ``end`` (aware datetimes, ``[start, end)``) filter parquet rows by event
time: row groups entirely outside are skipped using the parquet statistics; rows with a null
or naive timestamp are not filtered (they must reach the dead letters). JSON lines are not
filtered (the text is not parsed here).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from feast_bytewax.ingest.filesystems import (
    filesystem_for_uri,
    is_uri,
    s3_endpoint_from_env,
    uri_label,
)
from feast_bytewax.ingest.timestamps import EpochUs
from feast_bytewax.ingest.validate import FIELDS
from feast_bytewax.timeutil import to_us

__all__ = ["EventFile", "EventFileSource", "list_event_files", "resolve_event_files"]

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TS_COLUMN = "event_timestamp"
REMOTE_READ_BUFFER = 8 << 20  # bytes per read from object storage (JSON lines)

Item = tuple[Any, str]


@dataclass(frozen=True)
class EventFile:
    """One input file: its partition name, how origins name it, and where it is."""

    name: str  # base name: the partition (and resume-state) key
    label: str  # origin prefix: the name for a local file, the full URI in object storage
    filesystem: pafs.FileSystem
    path: str  # inside `filesystem`

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def is_parquet(self) -> bool:
        return _suffix(self.name) in PARQUET_SUFFIXES

    def open_binary(self) -> BinaryIO:
        """A buffered binary file object (seekable)."""
        if self.local:
            return open(self.path, "rb")  # the caller closes it
        raw = self.filesystem.open_input_file(self.path)
        return io.BufferedReader(raw, REMOTE_READ_BUFFER)  # type: ignore[arg-type]


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _is_event_file(info: pafs.FileInfo) -> bool:
    return (
        info.type == pafs.FileType.File
        and not info.base_name.startswith((".", "_"))
        and _suffix(info.base_name) in PARQUET_SUFFIXES + JSONL_SUFFIXES
    )


def resolve_event_files(
    path: str | os.PathLike, s3_endpoint_override: str | None = None
) -> list[EventFile]:
    """The files `EventFileSource` reads for `path` (a file or a folder, not recursive;
    hidden and ``_``-prefixed files ignored), in partition order."""
    if is_uri(path):
        endpoint = s3_endpoint_override or s3_endpoint_from_env()
        filesystem, root = filesystem_for_uri(path, endpoint)
        root = root.rstrip("/")
    else:
        filesystem, root = pafs.LocalFileSystem(), os.path.abspath(os.fspath(path))
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.File:
        infos = [info]
    elif info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(root, recursive=False)
        infos = sorted((i for i in filesystem.get_file_info(selector) if _is_event_file(i)),
                       key=lambda i: i.base_name)
        if not infos:
            raise FileNotFoundError(f"no .parquet or .jsonl files in {path}")
    else:
        raise FileNotFoundError(path)
    local = isinstance(filesystem, pafs.LocalFileSystem)
    return [
        EventFile(i.base_name, i.base_name if local else uri_label(filesystem, i.path),
                  filesystem, i.path)
        for i in infos
    ]


def list_event_files(
    path: str | os.PathLike, s3_endpoint_override: str | None = None
) -> list[Path] | list[str]:
    """The files `EventFileSource` reads for `path`, in partition order: `Path`s for a local
    path, URIs (``s3://bucket/key``) for a URI."""
    files = resolve_event_files(path, s3_endpoint_override)
    if is_uri(path):
        return [f.label for f in files]
    p = Path(path)
    return [p / f.name for f in files] if p.is_dir() else [p]


class _JsonLinesPartition(StatefulSourcePartition[Item, tuple[int, int]]):
    def __init__(self, file: EventFile, batch_size: int, resume: Any):
        self._name = file.label
        self._batch_size = batch_size
        self._f = file.open_binary()  # closed in close()
        self._line = 0
        self._offset = 0
        if isinstance(resume, tuple):
            self._line, self._offset = int(resume[0]), int(resume[1])
            self._f.seek(self._offset)
        elif resume:
            for raw in islice(self._f, int(resume)):
                self._offset += len(raw)
                self._line += 1

    def next_batch(self) -> list[Item]:
        if self._f.closed:
            raise StopIteration
        raws = list(islice(self._f, self._batch_size))
        if not raws:
            raise StopIteration
        out = []
        name = self._name
        line = self._line
        for raw in raws:
            line += 1
            self._offset += len(raw)
            b = raw.rstrip(b"\r\n")
            try:
                payload: str | bytes = b.decode("utf-8")
            except UnicodeDecodeError:
                payload = b
            out.append((payload, f"{name}:{line}"))
        self._line = line
        return out

    def snapshot(self) -> tuple[int, int]:
        return (self._line, self._offset)

    def close(self) -> None:
        self._f.close()


class _ParquetPartition(StatefulSourcePartition[Item, int]):
    def __init__(
        self,
        file: EventFile,
        batch_size: int,
        resume: int | None,
        start_us: int | None,
        end_us: int | None,
        columns: tuple[str, ...],
        ts_column: str = TS_COLUMN,
    ):
        self._name = file.label
        self._ts = ts_column
        self._source = file.filesystem.open_input_file(file.path)
        # object storage: coalesce each row group's column chunks into few ranged GETs
        self._pf = pq.ParquetFile(self._source, pre_buffer=not file.local)
        self._row = int(resume or 0)
        self._batch_size = batch_size
        self._start_us = start_us
        self._end_us = end_us
        names = self._pf.schema_arrow.names
        self._columns = [c for c in columns if c in names]
        self._batches = self._iter_batches()

    def _group_outside_range(self, g: int) -> bool:
        if self._start_us is None and self._end_us is None:
            return False
        md = self._pf.metadata.row_group(g)
        for i in range(md.num_columns):
            col = md.column(i)
            if col.path_in_schema != self._ts:
                continue
            st = col.statistics
            if st is None or not st.has_min_max or st.null_count:
                return False
            lo, hi = st.min, st.max
            if not isinstance(lo, datetime) or lo.tzinfo is None:
                return False
            if self._start_us is not None and to_us(hi) < self._start_us:
                return True
            return self._end_us is not None and to_us(lo) >= self._end_us
        return False

    def _iter_batches(self) -> Iterator[tuple[int, Any]]:
        """Yield (first row index, RecordBatch) from the resume row on."""
        md = self._pf.metadata
        first = 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if first + n <= self._row:
                first += n
                continue
            if self._group_outside_range(g):
                first += n
                yield first, None  # skipped group: advance the offset only
                continue
            row = first
            for batch in self._pf.iter_batches(
                batch_size=self._batch_size, row_groups=[g], columns=self._columns,
                use_threads=False,
            ):  # fmt: skip
                end = row + batch.num_rows
                if end > self._row:
                    skip = max(self._row - row, 0)
                    yield row + skip, batch.slice(skip)
                row = end
            first += n

    @staticmethod
    def _ts_values(col) -> list:
        t = col.type
        if pa.types.is_timestamp(t) and t.tz is not None:
            raw = col.cast(pa.int64()).to_pylist()  # UTC instant in the column's unit
            if t.unit == "ns":  # floor to us, as the validator does for pandas Timestamps
                return [None if v is None else EpochUs(v // 1000) for v in raw]
            f = {"s": 1_000_000, "ms": 1000, "us": 1}[t.unit]
            return [None if v is None else EpochUs(v * f) for v in raw]
        return col.to_pylist()

    def _mask(self, batch):
        if self._ts not in batch.schema.names:
            return None
        col = batch.column(self._ts)
        t = col.type
        if not (pa.types.is_timestamp(t) and t.tz is not None):
            return None
        us = col.cast(pa.timestamp("us", tz=t.tz), safe=False).cast(pa.int64())
        keep = None
        if self._start_us is not None:
            keep = pc.greater_equal(us, self._start_us)
        if self._end_us is not None:
            lt = pc.less(us, self._end_us)
            keep = lt if keep is None else pc.and_(keep, lt)
        return pc.fill_null(keep, True)

    def next_batch(self) -> list[Item]:
        try:
            first, batch = next(self._batches)
        except StopIteration:
            self._row = max(self._row, self._pf.metadata.num_rows)
            raise
        if batch is None:
            self._row = first
            return []
        n = batch.num_rows
        self._row = first + n
        rows = range(first, first + n)
        if self._start_us is not None or self._end_us is not None:
            keep = self._mask(batch)
            if keep is not None:
                idx = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
                batch = batch.take(idx)
                rows = (first + idx).tolist()
        names = batch.schema.names
        cols = [
            self._ts_values(batch.column(i)) if nm == self._ts else batch.column(i).to_pylist()
            for i, nm in enumerate(names)
        ]
        prefix = self._name + ":"
        origins = [prefix + str(r) for r in rows]
        if len(names) == 6:  # the usual full schema: literal dicts are ~2x faster than zip
            k0, k1, k2, k3, k4, k5 = names
            recs = [
                {k0: a, k1: b, k2: c, k3: d, k4: e, k5: f}
                for a, b, c, d, e, f in zip(*cols, strict=True)
            ]
        else:
            recs = [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]
        return list(zip(recs, origins, strict=True))

    def snapshot(self) -> int:
        return self._row

    def close(self) -> None:
        self._batches.close()
        self._pf.close()
        self._source.close()


class EventFileSource(FixedPartitionedSource[Item, Any]):
    """Replay events from a parquet file, a JSON-lines file, or a folder of them.

    :arg path: a ``.parquet`` / ``.jsonl`` file, or a folder of such files (one partition
        per file; hidden and ``_``-prefixed files are ignored); local, or a URI such as
        ``s3://bucket/prefix``.
    :arg batch_size: rows per `next_batch` (default 1000).
    :arg start: only parquet rows with ``event_timestamp >= start`` (aware datetime).
    :arg end: only parquet rows with ``event_timestamp < end`` (aware datetime).
    :arg columns: parquet columns to read (default: the spec's six fields).
    :arg timestamp_column: the time column (`start` / `end` filter it; a joined table's
        versions use their own, e.g. ``updated_at``).
    :arg s3_endpoint_override: S3-compatible endpoint for ``s3://`` paths (default: from
        the environment, see `feast_bytewax.ingest.filesystems.s3_endpoint_from_env`).
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 1000,
        start: datetime | None = None,
        end: datetime | None = None,
        columns: tuple[str, ...] = FIELDS,
        s3_endpoint_override: str | None = None,
        timestamp_column: str = TS_COLUMN,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.path: str | Path = os.fspath(path) if is_uri(path) else Path(path)
        self.batch_size = batch_size
        self.start_us = to_us(start) if start is not None else None
        self.end_us = to_us(end) if end is not None else None
        self.columns = tuple(columns)
        self.s3_endpoint_override = s3_endpoint_override
        self.timestamp_column = timestamp_column

    def _files(self) -> dict[str, EventFile]:
        return {f.name: f for f in resolve_event_files(self.path, self.s3_endpoint_override)}

    def list_parts(self) -> list[str]:
        return list(self._files())

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> StatefulSourcePartition[Item, Any]:
        file = self._files()[for_part]
        if file.is_parquet:
            return _ParquetPartition(
                file, self.batch_size, resume_state, self.start_us, self.end_us, self.columns,
                self.timestamp_column,
            )  # fmt: skip
        return _JsonLinesPartition(file, self.batch_size, resume_state)

