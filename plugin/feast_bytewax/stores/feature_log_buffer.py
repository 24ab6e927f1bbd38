"""The buffer behind feature logging: served responses in, logged-feature tables out.

`feature_logging.LoggingProvider` hands every sampled response to a `FeatureLogBuffer`; this
module is what keeps that cheap on the serving thread and correct in the log:

- the request thread only appends `(service, response, serve time)` to a list (a few
  microseconds); a daemon thread, started lazily in each process (gunicorn forks `feast
  serve` workers after the store is built), wakes every `flush_interval_s` or when
  `max_buffer_rows` wait, and beyond `max_pending_rows` sampled requests are dropped
  (counted) rather than grow the process without bound;
- a flush turns the buffered responses into an Arrow table in Feast's logged-features
  schema (`feast.feature_logging.FeatureServiceLoggingSource`: the join keys, then per
  feature `<view>__<feature>`, `__timestamp`, `__status`, then `__log_timestamp`,
  `__log_date`, `__request_id`), one row per entity row of the request sharing one request
  id, and writes it with the provider's own `write_feature_service_logs` (the offline
  store's `write_logged_features`: with the file and parquet-folder stores, one new parquet
  file per flush under the destination path);
- `flush_all` (registered with atexit) writes what every buffer of the process still holds.

One deviation from the declared schema: the `<view>__<feature>__timestamp` columns are
written with microsecond resolution (`timestamp[us, UTC]`), not seconds as the Go logger
did: feature rows are stamped to the microsecond and a truncated time would point at the
wrong step of the feature's step function. Readers get the same column names.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from feast.feature_logging import (
    LOG_DATE_FIELD,
    LOG_TIMESTAMP_FIELD,
    REQUEST_ID_FIELD,
    FeatureServiceLoggingSource,
)
from feast.feature_service import FeatureService
from feast.infra.provider import Provider
from feast.repo_config import RepoConfig

logger = logging.getLogger(__name__)

TS_TYPE = pa.timestamp("us", tz="UTC")


class _Columns:
    """How one (service, full_feature_names) response maps onto the log schema."""

    def __init__(self, service: FeatureService, schema: pa.Schema, full_names: bool):
        self.schema = schema
        self.short_to_log: dict[str, str] = {}
        for proj in service.feature_view_projections:
            for feat in proj.features:
                log_name = f"{proj.name_to_use()}__{feat.name}"
                self.short_to_log[log_name if full_names else feat.name] = log_name
        self.plans: dict[tuple[str, ...], tuple[list, list[str]]] = {}
        self.entity_fields = [f.name for f in schema
                              if f.name not in (LOG_TIMESTAMP_FIELD, LOG_DATE_FIELD,
                                                REQUEST_ID_FIELD)
                              and "__" not in f.name]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return getattr(v, kind)


# Every buffer of the process, for the flush at exit; weak, so a collected provider's goes.
_BUFFERS: weakref.WeakSet = weakref.WeakSet()


class FeatureLogBuffer:
    """Buffers served responses and writes them as feature logs from a daemon thread.

    `provider` is only asked to `write_feature_service_logs`, so the log lands wherever the
    provider's offline store puts logged features. The buffer registers itself for
    `flush_all`, so rows buffered when the process exits are still written.
    """

    def __init__(self, provider: Provider, config: RepoConfig,
                 settings: Mapping[str, Any]):
        self._provider = provider
        self._config = config
        self.flush_interval_s = float(settings["flush_interval_s"])
        self.max_buffer_rows = int(settings["max_buffer_rows"])
        self.max_pending_rows = int(settings["max_pending_rows"])
        self._lock = threading.Lock()
        self._buf: list[tuple] = []
        self._pending_rows = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._schemas: dict[tuple[str, bool], _Columns] = {}
        self._run_id = uuid.uuid4().hex[:16] + "-"  # request ids: run id + a counter
        self._seq = 0
        self._write_lock = threading.Lock()
        self.stats = {"requests": 0, "sampled": 0, "dropped": 0, "rows_written": 0,
                      "flushes": 0, "write_errors": 0, "flush_seconds_total": 0.0,
                      "flush_seconds_max": 0.0}
        _BUFFERS.add(self)

    # -- request path ------------------------------------------------------------------
    def add(self, service: FeatureService, response: Any, registry: Any, full_names: bool,
            rows: int) -> None:
        """Record one served response (cheap; called on the serving thread)."""
        st = self.stats
        st["requests"] += 1
        rate = service.logging_config.sample_rate
        if rate < 1.0 and random.random() >= rate:
            return
        if self._pid != os.getpid():  # forked (gunicorn worker): start afresh here
            self._after_fork()
        if self._pending_rows + rows > self.max_pending_rows:
            st["dropped"] += 1
            return
        item = (service, response, registry, full_names, time.time_ns() // 1000)
        with self._lock:
            self._buf.append(item)
            self._pending_rows += rows
            full = self._pending_rows >= self.max_buffer_rows
        st["sampled"] += 1
        if self._thread is None:
            self._start()
        if full:
            self._wake.set()

    # -- background ----------------------------------------------------------------------
    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buf, self._pending_rows = [], 0
        self._wake = threading.Event()
        self._thread = None
        self._pid = os.getpid()
        self._run_id = uuid.uuid4().hex[:16] + "-"
        self._seq = 0

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="feast-bytewax-feature-log",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let logging take serving down
                logger.exception("feature logging: flush failed")

    def _take(self) -> list[tuple]:
        with self._lock:
            items, self._buf, self._pending_rows = self._buf, [], 0
        return items

    def flush(self) -> int:
        """Write everything buffered now; returns the number of log rows written."""
        with self._write_lock:
            items = self._take()
            if not items:
                return 0
            t0 = time.perf_counter()
            by_service: dict[tuple[str, bool], list[tuple]] = {}
            for it in items:
                by_service.setdefault((it[0].name, it[3]), []).append(it)
            written = 0
            for (_name, full), group in by_service.items():
                service, registry = group[0][0], group[0][2]
                try:
                    table = self.to_table(service, registry, full, group)
                    self._provider.write_feature_service_logs(
                        service, table, self._config, registry)
                    written += table.num_rows
                except Exception:
                    self.stats["write_errors"] += 1
                    logger.exception("feature logging: could not write %d requests of %r",
                                     len(group), service.name)
            dt = time.perf_counter() - t0
            st = self.stats
            st["rows_written"] += written
            st["flushes"] += 1
            st["flush_seconds_total"] += dt
            st["flush_seconds_max"] = max(st["flush_seconds_max"], dt)
            return written

    def _columns(self, service: FeatureService, registry: Any, full: bool) -> _Columns:
        key = (service.name, full)
        cols = self._schemas.get(key)
        if cols is None:
            source = FeatureServiceLoggingSource(service, self._config.project)
            schema = source.get_schema(registry)
            schema = pa.schema([
                pa.field(f.name, TS_TYPE) if f.name.endswith("__timestamp") else f
                for f in schema
            ])
            cols = self._schemas[key] = _Columns(service, schema, full)
        return cols

    def _plan(self, cols: _Columns, names: tuple[str, ...]) -> tuple[list, list[str]]:
        """For one response layout: (result index, kind, target field) steps, and the
        schema fields the response lacks (filled with nulls)."""
        plan = cols.plans.get(names)
        if plan is not None:
            return plan
        steps, filled = [], set()
        for i, name in enumerate(names):
            if name in cols.entity_fields and name not in filled:
                steps.append((i, "entity", name))
                filled.add(name)
                continue
            log_name = cols.short_to_log.get(name)
            if log_name is None:
                continue
            steps.append((i, "feature", log_name))
            filled |= {log_name, f"{log_name}__timestamp", f"{log_name}__status"}
        system = {LOG_TIMESTAMP_FIELD, LOG_DATE_FIELD, REQUEST_ID_FIELD}
        lacking = [f.name for f in cols.schema if f.name not in filled | system]
        plan = cols.plans[names] = (steps, lacking)
        return plan

    def to_table(self, service: FeatureService, registry: Any, full: bool,
                 items: list[tuple], chunk: int = 256) -> pa.Table:
        """Responses -> one Arrow table in the logged-features schema. Yields the GIL every
        `chunk` responses so that serving threads are not held up by a large flush."""
        cols = self._columns(service, registry, full)
        data: dict[str, list] = {f.name: [] for f in cols.schema}
        log_ts, req_ids = data[LOG_TIMESTAMP_FIELD], data[REQUEST_ID_FIELD]
        for j, (_svc, response, _reg, _full, served_us) in enumerate(items):
            if j and j % chunk == 0:
                time.sleep(0)
            proto = response.proto
            results = proto.results
            n = len(results[0].values) if results else 0
            steps, lacking = self._plan(cols, tuple(proto.metadata.feature_names.val))
            self._seq += 1
            rid = f"{self._run_id}{self._seq:x}"
            log_ts.extend([served_us] * n)
            req_ids.extend([rid] * n)
            for i, kind, name in steps:
                vec = results[i]
                data[name].extend([_value(v) for v in vec.values])
                if kind == "feature":
                    data[name + "__timestamp"].extend(
                        [t.seconds * 1_000_000 + t.nanos // 1000 for t in vec.event_timestamps])
                    data[name + "__status"].extend(vec.statuses)
            for name in lacking:
                data[name].extend([None] * n)
        arrays = []
        for f in cols.schema:
            if f.name == LOG_DATE_FIELD:
                continue
            if pa.types.is_timestamp(f.type):
                arr = pa.array(data[f.name], pa.int64()).cast(f.type)
            else:
                arr = pa.array(data[f.name], f.type)
            arrays.append((f.name, arr))
        table = pa.table(dict(arrays))
        log_col = table.column(LOG_TIMESTAMP_FIELD)
        table = table.append_column(
            LOG_DATE_FIELD, log_col.cast(pa.timestamp("us")).cast(pa.date32()))
        return table.select([f.name for f in cols.schema])

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is buffered (blocking) and stop the thread."""
        self._stop = True
        self._wake.set()
        t = self._thread
        if t is not None and t.is_alive() and self._pid == os.getpid():
            t.join(timeout)
        self.flush()
        self._stop = False
        self._thread = None


@atexit.register
def flush_all() -> None:
    """Flush every feature log buffer of this process (also run at exit)."""
    for buf in list(_BUFFERS):
        try:
            if buf._pid == os.getpid():
                buf.flush()
        except Exception:
            logger.exception("feature logging: final flush failed")
