"""What an event input is, before a replay reads it: its identity and its time range.

A replay commits its offline rows as one run that replaces the input's time range
(`stores.commits`): every process of that run must name it the same (`input_identity`: the
same files, sizes and modification times give the same digest; a regenerated file a new
one), and it must know the range ahead of time (`event_time_range`: parquet statistics,
else the timestamp column; JSON lines, a pass over the lines).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feast_bytewax.ingest.files import TS_COLUMN, EventFile
from feast_bytewax.ingest.timestamps import parse_timestamp_us
from feast_bytewax.timeutil import to_us


def input_identity(files: list[EventFile]) -> str:
    """A digest of what the files are now (names, sizes, modification times): the same input
    gives the same digest in every process of a run, a changed file a different one."""
    h = hashlib.sha256()
    for f in files:
        info = f.filesystem.get_file_info(f.path)
        mtime = info.mtime_ns if info.mtime_ns is not None else 0
        h.update(f"{f.label}\0{info.size}\0{mtime}\n".encode())
    return h.hexdigest()


def event_time_range(files: list[EventFile], column: str = TS_COLUMN) -> tuple[int, int] | None:
    """(min, max) event time of the rows, epoch us, from parquet statistics where they are
    (else the timestamp column; JSON lines: a pass over the lines). None without any time."""
    lo: int | None = None
    hi: int | None = None
    for f in files:
        for a, b in _file_range(f, column):
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    return None if lo is None or hi is None else (lo, hi)


def _file_range(f: EventFile, column: str) -> Iterator[tuple[int, int]]:
    if f.is_parquet:
        with f.filesystem.open_input_file(f.path) as raw:
            pf = pq.ParquetFile(raw)
            names = pf.schema_arrow.names
            if column not in names:
                return
            col = names.index(column)
            md = pf.metadata
            for g in range(md.num_row_groups):
                st = md.row_group(g).column(col).statistics
                if st is not None and st.has_min_max and isinstance(st.min, datetime) \
                        and st.min.tzinfo is not None:
                    yield to_us(st.min), to_us(st.max)
                else:
                    us = pc.cast(pc.cast(pf.read_row_group(g, columns=[column])[column],
                                         pa.timestamp("us", tz="UTC")), pa.int64())
                    mm = pc.min_max(us)
                    if mm["min"].is_valid:
                        yield mm["min"].as_py(), mm["max"].as_py()
        return
    with f.open_binary() as fh:
        for line in fh:
            try:
                ts = parse_timestamp_us(json.loads(line).get(column))
            except (ValueError, AttributeError, UnicodeDecodeError):
                continue
            if type(ts) is int:
                yield ts, ts
