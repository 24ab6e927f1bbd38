"""Feature rows -> Feast: the micro-batching writer (no Bytewax in it).

`FeastWriter` buffers `FeatureRow`s and, on `flush()`, writes them through
the Feast provider of an injected `FeatureStore`:

- **offline**: every row exactly once per distinct batch source, as one arrow table with
  exactly the source's columns (join key, timestamp field, every feature of the views on it,
  in `EngineSpec.feature_names` order) via `provider.ingest_df_to_offline_store`. Feast's own
  `push(to=OFFLINE)` writes the same frame once per feature view, i.e. 3 copies here.
- **online**: only the latest row per key of the flush (by event time, ties: the last
  written), per feature view, via `provider.ingest_df`. `FeatureStore.write_to_online_store`
  is bypassed on purpose: it silently drops a frame whose features are all null, and a
  decayed row (mean and max of an emptied window are None) must still overwrite.

Flush policy: when the buffer holds `max_rows` rows, or when a write comes `max_interval`
seconds or more after the previous flush; plus explicit `flush()` / `close()`. The interval is
only checked on `write`: an idle writer keeps its rows until the next write, flush or close
(the Bytewax sink, `feast_bytewax.dataflow.feast_sink.FeastSink`, flushes at every epoch end).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.observability.metrics import PUSH_SECONDS
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import FeatureRow
from feast_bytewax.stores._compat import provider_of

DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_INTERVAL_S = 1.0
TIMESTAMP_COLUMN = "event_timestamp"

# EngineSpec/FeatureSpec dtype names -> pandas dtypes of the flushed frame.
PANDAS_DTYPES: dict[str, Any] = {
    "int64": "Int64",
    "int32": "Int32",
    "float64": "float64",
    "float32": "float32",
    "bool": "boolean",
    "string": object,
}


def nonnegative_seconds(value: float | timedelta, name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds >= 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return seconds


def rows_to_frame(rows: Sequence[FeatureRow], spec: EngineSpec) -> pd.DataFrame:
    """One DataFrame for a batch of rows: the join key, `event_timestamp` (datetime64[us, UTC])
    and one column per feature in `spec.feature_names` order (Int64 for int features, nullable;
    float64 for float features, None -> NaN)."""
    names = spec.feature_names
    width = len(names)
    for row in rows:
        if len(row.values) != width:
            raise ValueError(
                f"FeatureRow for key {row.key!r} at {row.event_timestamp} has "
                f"{len(row.values)} values, expected {width} ({', '.join(names)})"
            )
    columns: dict[str, Any] = {
        spec.join_key: pd.array([r.key for r in rows], dtype=object),
        TIMESTAMP_COLUMN: pd.DatetimeIndex(
            np.fromiter((r.event_timestamp for r in rows), dtype=np.int64, count=len(rows))
            .astype("datetime64[us]")
        ).tz_localize("UTC"),
    }
    by_feature = list(zip(*(r.values for r in rows), strict=True)) if rows else [()] * width
    for feature, values in zip(spec.features, by_feature, strict=True):
        dtype = PANDAS_DTYPES.get(feature.dtype, object)
        try:
            columns[feature.name] = pd.array(list(values), dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"feature {feature.name!r} ({feature.dtype}): values do not fit {dtype}: {exc}"
            ) from exc
    return pd.DataFrame(columns)


def latest_per_key(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """The newest row of each key (by event time; on a tie, the last one in the frame)."""
    if df[key].is_unique:
        return df
    ordered = df.sort_values(TIMESTAMP_COLUMN, kind="stable")
    return ordered.drop_duplicates(key, keep="last").reset_index(drop=True)


def _feature_names(view: Any) -> list[str]:
    """A view's feature names without its join keys (a registry copy of a stream feature view
    lists the join key among its features)."""
    keys = {c.name for c in view.entity_columns} | set(getattr(view, "join_keys", []) or [])
    return [f.name for f in view.features if f.name not in keys]


@dataclass(frozen=True)
class _SourceTarget:
    """One batch source: the view whose `offline_write_batch` carries it, and its columns."""

    view: Any
    columns: tuple[str, ...]
    renames: dict[str, str]


@dataclass(frozen=True)
class _ViewTarget:
    view: Any
    columns: tuple[str, ...]
    renames: dict[str, str]


class FeastWriter:
    """Buffers `FeatureRow`s and writes them to Feast's offline and online stores in batches.

    Args:
        store: a `feast.FeatureStore` (injected; its registry must hold the spec's views).
        spec: the `EngineSpec` whose `feature_names` the rows' `values` follow.
        max_rows: flush when this many rows are buffered (default 10 000).
        max_interval: seconds (or a timedelta) after the last flush at which a write flushes
            (default 1 s); 0 flushes on every write.
        online / offline: write to that store (both by default).
        clock: monotonic seconds, injectable for tests.
        stats: the run's counters (rows written offline / online).
        on_flush: called after every successful flush with the rows it made readable, in
            flush order (the live run measures freshness with it).

    The feature views (`spec.views`, else every stream view on `spec.push_source`) are resolved
    once, here. Not thread-safe: one writer per partition/thread.
    """

    def __init__(
        self,
        store: Any,
        spec: EngineSpec,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_interval: float | timedelta = DEFAULT_MAX_INTERVAL_S,
        online: bool = True,
        offline: bool = True,
        clock: Callable[[], float] = time.monotonic,
        stats: FlowStats | None = None,
        on_flush: Callable[[list[FeatureRow]], None] | None = None,
    ) -> None:
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
        self.run_stats = stats
        self.on_flush = on_flush
        self.store = store
        self.spec = spec
        self.max_rows = max_rows
        self.max_interval = nonnegative_seconds(max_interval, "max_interval")
        self._clock = clock
        self._provider = provider_of(store)
        # An online store with a columnar `write_frame` skips Feast's per-value protobuf
        # conversion, whatever provider is configured (e.g. the feature-logging one).
        self._write_frame = getattr(getattr(self._provider, "online_store", None),
                                    "write_frame", None)
        self.views = self._resolve_views(store, spec)
        self._online_targets = (
            [self._view_target(v) for v in self.views if v.online] if online else []
        )
        self._offline_targets = self._source_targets(self.views) if offline else []
        self._buffer: list[FeatureRow] = []
        self._last_flush = clock()
        self._closed = False
        self.rows_in = 0
        self.rows_offline = 0
        self.rows_online = 0
        self.flushes = 0
        self.flush_seconds_total = 0.0
        self.flush_seconds_last = 0.0
        self.flush_seconds_max = 0.0
        self.offline_seconds_total = 0.0
        self.online_seconds_total = 0.0

    # -- resolution ---------------------------------------------------------------------

    @staticmethod
    def _resolve_views(store: Any, spec: EngineSpec) -> list:
        views = store.list_stream_feature_views()
        if spec.views:
            by_name = {v.name: v for v in views}
            missing = [n for n in spec.views if n not in by_name]
            if missing:
                raise ValueError(
                    f"stream feature views {missing} of the spec are not in the registry "
                    f"(registered: {sorted(by_name)}); run `feast apply`"
                )
            chosen = [by_name[n] for n in spec.views]
        else:
            chosen = [
                v for v in views
                if v.stream_source is not None and v.stream_source.name == spec.push_source
            ]
            if not chosen:
                raise ValueError(f"no stream feature view reads push source {spec.push_source!r}")
        known = set(spec.feature_names)
        for view in chosen:
            unknown = [n for n in _feature_names(view) if n not in known]
            if unknown:
                raise ValueError(
                    f"view {view.name!r} has features {unknown} that the spec does not compute"
                )
            if view.batch_source is None:
                raise ValueError(f"view {view.name!r} has no batch source")
            if view.batch_source.field_mapping:
                raise ValueError(
                    f"view {view.name!r}: batch source field_mapping is not supported"
                )
            if [c.name for c in view.entity_columns] != [spec.join_key]:
                raise ValueError(
                    f"view {view.name!r} joins on {[c.name for c in view.entity_columns]}, "
                    f"the spec on {[spec.join_key]}"
                )
        return chosen

    def _timestamp_renames(self, source: Any) -> dict[str, str]:
        ts = source.timestamp_field or TIMESTAMP_COLUMN
        return {} if ts == TIMESTAMP_COLUMN else {TIMESTAMP_COLUMN: ts}

    def _view_target(self, view: Any) -> _ViewTarget:
        names = _feature_names(view)
        if len(names) != len(view.features):
            # A registry copy lists the join key as a feature too; writing it online would
            # store the key once more per row (a third of the writes here) for nothing.
            view = copy.copy(view)
            view.features = [f for f in view.features if f.name in names]
        columns = (self.spec.join_key, TIMESTAMP_COLUMN, *names)
        return _ViewTarget(view, columns, self._timestamp_renames(view.batch_source))

    def _source_targets(self, views: Iterable) -> list[_SourceTarget]:
        by_source: dict[str, list] = {}
        for view in views:
            by_source.setdefault(view.batch_source.name, []).append(view)
        targets = []
        for group in by_source.values():
            on_source = {n for v in group for n in _feature_names(v)}
            features = tuple(n for n in self.spec.feature_names if n in on_source)
            columns = (self.spec.join_key, TIMESTAMP_COLUMN, *features)
            targets.append(
                _SourceTarget(group[0], columns, self._timestamp_renames(group[0].batch_source))
            )
        return targets

    # -- writing ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows buffered, not yet flushed."""
        return len(self._buffer)

    def write(self, rows: Iterable[FeatureRow]) -> int:
        """Buffer rows; flush if the buffer is full or the interval has passed. Returns the
        number of rows flushed by this call (0 if none)."""
        if self._closed:
            raise RuntimeError("FeastWriter is closed")
        before = len(self._buffer)
        self._buffer.extend(rows)
        self.rows_in += len(self._buffer) - before
        if self._buffer and (
            len(self._buffer) >= self.max_rows
            or self._clock() - self._last_flush >= self.max_interval
        ):
            return self.flush()
        return 0

    def flush(self) -> int:
        """Write every buffered row (offline: all; online: the latest per key). Returns the
        number of rows flushed. On an exception the buffer is kept; a retry may then write
        the offline part twice."""
        if not self._buffer:
            self._last_flush = self._clock()
            return 0
        started = time.perf_counter()
        rows = self._buffer
        df = rows_to_frame(rows, self.spec)
        t_offline = time.perf_counter()
        for target in self._offline_targets:
            frame = df.loc[:, list(target.columns)].rename(columns=target.renames)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._provider.ingest_df_to_offline_store(target.view, table)
            self.rows_offline += table.num_rows
        t_online = time.perf_counter()
        latest_keys = 0
        if self._online_targets:
            latest = latest_per_key(df, self.spec.join_key)
            latest_keys = len(latest)
            for target in self._online_targets:
                frame = latest.loc[:, list(target.columns)].rename(columns=target.renames)
                if self._write_frame is not None:  # columnar fast path (FastRedisOnlineStore)
                    self._write_frame(self.store.config, target.view, frame,
                                      target.view.batch_source.timestamp_field)
                else:
                    self._provider.ingest_df(target.view, frame)
                self.rows_online += len(frame)
        done = time.perf_counter()
        self._buffer = []
        self._last_flush = self._clock()
        self.flushes += 1
        self.offline_seconds_total += t_online - t_offline
        self.online_seconds_total += done - t_online
        elapsed = done - started
        self.flush_seconds_last = elapsed
        self.flush_seconds_total += elapsed
        self.flush_seconds_max = max(self.flush_seconds_max, elapsed)
        PUSH_SECONDS.observe(elapsed)
        if self.run_stats is not None:
            self.run_stats.add(rows_offline=len(rows) if self._offline_targets else 0,
                               rows_online=latest_keys)
        if self.on_flush is not None:
            self.on_flush(rows)
        return len(rows)

    def close(self) -> None:
        """Flush what is buffered; later writes raise. Idempotent."""
        if not self._closed:
            self.flush()
            self._closed = True

    def stats(self) -> dict[str, float | int]:
        """Counters since construction. `rows_online` counts (key, view) writes after
        coalescing; `rows_offline` counts rows appended (once per batch source)."""
        return {
            "rows_in": self.rows_in,
            "rows_pending": len(self._buffer),
            "rows_offline": self.rows_offline,
            "rows_online": self.rows_online,
            "flushes": self.flushes,
            "flush_seconds_total": self.flush_seconds_total,
            "flush_seconds_last": self.flush_seconds_last,
            "flush_seconds_max": self.flush_seconds_max,
            "offline_seconds_total": self.offline_seconds_total,
            "online_seconds_total": self.online_seconds_total,
        }
