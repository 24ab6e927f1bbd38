"""Feature rows -> Feast: the micro-batching writer (no Bytewax in it).

`FeastWriter` buffers `FeatureRow`s and, on `flush()`, writes them through the injected
`FeatureStore`:

- **offline**: every row exactly once per distinct batch source, as one arrow table with
  exactly the source's columns (join key, timestamp field, every feature of the views on it).
  With the plugin's parquet-folder store the write goes to a `FolderTransaction`
  (`stores.commits`): deterministic part names, committed with the sink's Bytewax snapshots
  (`checkpoint`), a replay's range replaced at its end (`finish`), so no rerun, retry or
  restart stores a row twice. Another offline store gets Feast's
  `ingest_df_to_offline_store` (at-least-once).
- **online**: only the latest row per key of the flush (by event time, ties: the last
  written), per feature view. `FeatureStore.write_to_online_store` is bypassed on purpose: it
  silently drops a frame whose features are all null, and a decayed row (mean and max of an
  emptied window are None) must still overwrite. Online writes are idempotent overwrites.

Every store write goes through `StoreRetry` (`dataflow.retry`): a store that is down makes
the flush wait, with backoff, and each target that succeeded is not written again. Rows
stamped before `write_from` are computed (the state needs them) but not written: a replay
of a range warms its windows up on the events before the range.

Flush policy: when the buffer holds `max_rows` rows, or when a write comes `max_interval`
seconds or more after the previous flush; plus explicit `flush()`, `checkpoint()`, `close()`.
With `online_interval` the online store has its own clock: a live run writes online every
~50 ms (freshness) and offline every `max_interval` or `max_rows` (few, large parts: fewer
files for `get_historical_features` to open); both are flushed at every checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import pyarrow as pa

from feast_bytewax.dataflow.divergence import Divergence
from feast_bytewax.dataflow.frames import (
    feature_names,
    latest_per_key,
    latest_rows,
    nonnegative_seconds,
    rows_to_frame,
    source_targets,
    view_target,
)
from feast_bytewax.dataflow.retry import StoreRetry
from feast_bytewax.features.inputs import TableSpec
from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.observability.metrics import PUSH_SECONDS
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import PROVISIONAL, FeatureRow
from feast_bytewax.stores._compat import provider_of
from feast_bytewax.stores.folder_names import new_run_id, writer_id
from feast_bytewax.stores.parquet_folder import ParquetFolderOfflineStoreConfig, open_transaction
from feast_bytewax.stores.parquet_parts import conform_table

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_INTERVAL_S = 1.0


class FeastWriter:
    """Buffers `FeatureRow`s and writes them to Feast's offline and online stores in batches.

    Args:
        store: a `feast.FeatureStore` (injected; its registry must hold the spec's views).
        spec: the `EngineSpec` (or a joined table's `TableSpec`) whose `feature_names` the
            rows' `values` follow.
        max_rows: flush when this many rows are buffered (default 10 000).
        max_interval: seconds (or a timedelta) after the last flush at which a write flushes
            (default 1 s); 0 flushes on every write.
        online / offline: write to that store (both by default).
        writer: this writer's name in the offline commit log (``<run>-<partition>``).
        mode: ``live`` (commit at every checkpoint) or ``replay`` (commit at `close`).
        replace: the event-time range ``(lo_us, hi_us)`` a replay replaces.
        resume: `checkpoint()`'s state to resume from (rolls back what came after it).
        write_from: rows stamped before this epoch-us time are not written.
        retry: the store retry policy (default: `StoreRetry()`).
        clock: monotonic seconds, injectable for tests.
        stats: the run's counters (rows written offline / online).
        on_flush: called after every successful flush with the rows it made readable, in
            flush order (the live run measures freshness with it).
        online_interval: seconds between online flushes, apart from the offline ones (which
            keep `max_rows` / `max_interval`: few, large parts); None: both together.
        provisional: the rows come from two engines (`engine.provisional`): those with
            cause ``provisional`` go online only, the others (exact) offline only, and the
            two are compared (`observability.divergence`).

    The feature views (`spec.views`, else every stream view on `spec.push_source`) are resolved
    once, here. Not thread-safe: one writer per partition/thread.
    """

    def __init__(
        self,
        store: Any,
        spec: EngineSpec | TableSpec,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_interval: float | timedelta = DEFAULT_MAX_INTERVAL_S,
        online: bool = True,
        offline: bool = True,
        writer: str | None = None,
        mode: str = "live",
        replace: tuple[int, int] | None = None,
        resume: dict | None = None,
        write_from: int | None = None,
        retry: StoreRetry | None = None,
        clock: Callable[[], float] = time.monotonic,
        stats: FlowStats | None = None,
        on_flush: Callable[[list[FeatureRow]], None] | None = None,
        provisional: bool = False,
        online_interval: float | timedelta | None = None,
    ) -> None:
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
        self.run_stats = stats
        self.divergence = Divergence(spec.join_key) if provisional else None
        self.on_flush = on_flush
        self.store = store
        self.spec = spec
        self.max_rows = max_rows
        self.max_interval = nonnegative_seconds(max_interval, "max_interval")
        self.write_from = write_from
        self.retry = retry or StoreRetry()
        self._clock = clock
        self._provider = provider_of(store)
        # An online store with a columnar `write_frame` skips Feast's per-value protobuf
        # conversion, whatever provider is configured (e.g. the feature-logging one).
        self._write_frame = getattr(getattr(self._provider, "online_store", None),
                                    "write_frame", None)
        self.views = resolve_views(store, spec)
        self._online_targets = (
            [view_target(v, spec.join_key) for v in self.views if v.online] if online else [])
        # ... and one without a DataFrame (plain rows, one join key), where the store has it
        write_values = getattr(getattr(self._provider, "online_store", None), "write_values",
                               None)
        slot = {name: i for i, name in enumerate(spec.feature_names)}
        self._write_values = write_values if all(
            len(t.view.entity_columns) == 1 for t in self._online_targets) else None
        self._online_slots = [tuple(slot[n] for n in t.columns[2:])
                              for t in self._online_targets]
        self._offline_targets = source_targets(self.views, spec) if offline else []
        folder_store = isinstance(store.config.offline_store, ParquetFolderOfflineStoreConfig)
        if self._offline_targets and not folder_store:
            log.warning("offline store %s is not the parquet-folder store: offline writes are "
                        "at-least-once (a restart may write rows twice)",
                        type(store.config.offline_store).__name__)
        resume = resume or {}
        self.txns = {
            t.view.batch_source.name: open_transaction(
                store.config, t.view, writer or writer_id(new_run_id(), "0"), mode, replace,
                resume.get(t.view.batch_source.name))
            for t in self._offline_targets if folder_store
        }
        self._buffer: list[FeatureRow] = []  # for the offline store
        self._online: list[FeatureRow] = []  # for the online store
        self.online_interval = (None if online_interval is None
                                else nonnegative_seconds(online_interval, "online_interval"))
        self._last_flush = self._last_online = clock()
        self._closed = False
        self.rows_in = 0
        self.rows_offline = 0
        self.rows_online = 0
        self.flushes = 0
        self.flush_seconds_total = 0.0

    # -- writing ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows buffered, not yet flushed (to one store or the other)."""
        return max(len(self._buffer), len(self._online))

    def write(self, rows: Iterable[FeatureRow]) -> int:
        """Buffer rows; flush what is due (see the class docstring). Returns the number of
        rows flushed offline by this call (0 if none)."""
        if self._closed:
            raise RuntimeError("FeastWriter is closed")
        if self.write_from is None:
            new = list(rows)
        else:
            new = [r for r in rows if r.event_timestamp >= self.write_from]
        self.rows_in += len(new)
        if self.divergence is not None:
            self.divergence.observe(new)
            self._online.extend(r for r in new if r.cause == PROVISIONAL)
            self._buffer.extend(r for r in new if r.cause != PROVISIONAL)
        else:
            self._online.extend(new)
            self._buffer.extend(new)
        now = self._clock()
        if self.online_interval is None:  # one flush for both stores
            if (self._buffer or self._online) and (
                    max(len(self._buffer), len(self._online)) >= self.max_rows
                    or now - self._last_flush >= self.max_interval):
                return self.flush()
            return 0
        if self._online and (len(self._online) >= self.max_rows
                             or now - self._last_online >= self.online_interval):
            self._flush_online()
        if self._buffer and (len(self._buffer) >= self.max_rows
                             or now - self._last_flush >= self.max_interval):
            return self._flush_offline()
        return 0

    def flush(self) -> int:
        """Write every buffered row (offline: all; online: the latest per key), waiting for a
        store that is down (`StoreRetry`). Returns the number of rows flushed offline."""
        had = bool(self._buffer or self._online)
        n = self._flush_offline()
        self._flush_online()
        self.flushes += had
        return n

    def _flush_offline(self) -> int:
        rows = self._buffer
        self._last_flush = self._clock()
        if not rows:
            return 0
        started = time.perf_counter()
        oldest = min(r.event_timestamp for r in rows)
        df = rows_to_frame(rows, self.spec) if self._offline_targets else None
        for target in self._offline_targets:
            frame = df.loc[:, list(target.columns)].rename(columns=target.renames)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            txn = self.txns.get(target.view.batch_source.name)
            if txn is not None:
                table = conform_table(table, *target.views)
                self.retry.call("offline", lambda t=table, x=txn: x.write(t), oldest, self)
            else:
                self.retry.call("offline", lambda t=table, v=target.view:
                                self._provider.ingest_df_to_offline_store(v, t), oldest, self)
            self.rows_offline += table.num_rows
        self._buffer = []
        self._timed(started)
        if self.run_stats is not None and self._offline_targets:
            self.run_stats.add(rows_offline=len(rows))
        if self.on_flush is not None and not self._online_targets:
            self.on_flush(rows)
        return len(rows)

    def _flush_online(self) -> None:
        rows = self._online
        self._last_online = self._clock()
        if not rows:
            return
        if not self._online_targets:
            self._online = []
            return
        started = time.perf_counter()
        oldest = min(r.event_timestamp for r in rows)
        if self._write_values is not None:
            latest = latest_rows(rows)
            keys = [r.key for r in latest]
            stamps = [r.event_timestamp for r in latest]
            for target, slots in zip(self._online_targets, self._online_slots, strict=True):
                values = [tuple(r.values[i] for i in slots) for r in latest]
                self.retry.call("online", lambda v=target.view, x=values: self._write_values(
                    self.store.config, v, keys, stamps, x), oldest, self)
                self.rows_online += len(latest)
        else:
            latest = latest_per_key(rows_to_frame(rows, self.spec), self.spec.join_key)
            for target in self._online_targets:
                frame = latest.loc[:, list(target.columns)].rename(columns=target.renames)
                self.retry.call("online", lambda f=frame, v=target.view:
                                self._online_write(v, f), oldest, self)
                self.rows_online += len(frame)
        self._online = []  # kept until every target took them (a store that stays down)
        self._timed(started)
        if self.run_stats is not None:
            self.run_stats.add(rows_online=len(latest))
        if self.on_flush is not None:
            self.on_flush(rows)

    def _timed(self, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.flush_seconds_total += elapsed
        PUSH_SECONDS.observe(elapsed)

    def _online_write(self, view: Any, frame: Any) -> None:
        if self._write_frame is not None:  # columnar fast path (FastRedisOnlineStore)
            self._write_frame(self.store.config, view, frame, view.batch_source.timestamp_field)
        else:
            self._provider.ingest_df(view, frame)

    def stats(self) -> dict[str, float | int]:
        """Counters since construction. `rows_online` counts (key, view) writes after
        coalescing; `rows_offline` counts rows written (once per batch source)."""
        return {"rows_in": self.rows_in,
                "rows_pending": max(len(self._buffer), len(self._online)),
                "rows_offline": self.rows_offline, "rows_online": self.rows_online,
                "flushes": self.flushes, "flush_seconds_total": self.flush_seconds_total}

    def checkpoint(self) -> dict:
        """At a Bytewax snapshot: flush, then commit (live) or stage (replay) the offline
        parts written since the last one (`flush()` then `commit()`). Returns the resume
        state."""
        self.flush()
        return self.commit()

    def commit(self) -> dict:
        """Commit (live) or stage (replay) the offline parts written since the last
        checkpoint, without flushing first. Returns the resume state."""
        return {name: self.retry.call("offline", txn.checkpoint, None, self)
                for name, txn in self.txns.items()}

    def close(self, finished: bool = True, replace: tuple[int, int] | None = None) -> None:
        """Flush what is buffered; when the input `finished` (not an abort), commit the offline
        writes (a replay: replacing `replace`, else its range). Later writes raise.
        Idempotent."""
        if self._closed:
            return
        self.flush()
        if finished:
            for txn in self.txns.values():
                self.retry.call("offline", lambda x=txn: x.finish(replace), None, self)
        self._closed = True
        if self.divergence is not None:
            log.info("%s: %s", self.spec.join_key, self.divergence.summary())


def resolve_views(store: Any, spec: EngineSpec | TableSpec) -> list:
    """The registered views the spec's rows feed (stream views; a joined table's plain
    `FeatureView`), checked against the spec."""
    views = list(store.list_stream_feature_views())
    if isinstance(spec, TableSpec):
        views += store.list_feature_views()
    if spec.views:
        by_name = {v.name: v for v in views}
        missing = [n for n in spec.views if n not in by_name]
        if missing:
            raise ValueError(
                f"feature views {missing} of the spec are not in the registry "
                f"(registered: {sorted(by_name)}); run `feast apply`"
            )
        chosen = [by_name[n] for n in spec.views]
    else:
        chosen = [v for v in views
                  if v.stream_source is not None and v.stream_source.name == spec.push_source]
        if not chosen:
            raise ValueError(f"no stream feature view reads push source {spec.push_source!r}")
    known = set(spec.feature_names)
    for view in chosen:
        unknown = [n for n in feature_names(view) if n not in known]
        if unknown:
            raise ValueError(
                f"view {view.name!r} has features {unknown} that the spec does not compute")
        if view.batch_source is None:
            raise ValueError(f"view {view.name!r} has no batch source")
        if view.batch_source.field_mapping:
            raise ValueError(f"view {view.name!r}: batch source field_mapping is not supported")
        if [c.name for c in view.entity_columns] != [spec.join_key]:
            raise ValueError(
                f"view {view.name!r} joins on {[c.name for c in view.entity_columns]}, "
                f"the spec on {[spec.join_key]}"
            )
    return chosen
