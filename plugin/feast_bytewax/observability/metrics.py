"""Counters that prove nothing is lost: consumed = processed + late + rejected.

`FlowStats` is per dataflow run (the CLI prints it at the end); every increment is mirrored
to process-wide Prometheus metrics, which `serve_metrics` exposes for live runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, start_http_server

_PREFIX = "feast_bytewax_"
PROM_COUNTERS = {
    name: Counter(_PREFIX + name, doc)
    for name, doc in {
        "consumed": "Input records read from the source",
        "processed": "Valid events accepted by the feature step",
        "late": "Valid events older than watermark - allowed lateness (late output)",
        "rejected": "Invalid input records (dead-letter output)",
        "corrections": "Rows re-emitted because a late-but-allowed event changed a value",
        "rows": "Feature rows emitted by the feature step",
        "rows_offline": "Feature rows written to the offline store",
        "rows_online": "Feature rows written to the online store (coalesced per key)",
    }.items()
}
PUSH_SECONDS = Histogram(_PREFIX + "push_seconds", "Time of one sink flush through Feast")
FRESHNESS_SECONDS = Histogram(
    _PREFIX + "freshness_seconds",
    "Wall time a row became readable online minus the event time it is stamped with",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
BUFFERED = Gauge(_PREFIX + "buffered_events", "Events waiting for the watermark")


@dataclass
class FlowStats:
    """Thread-safe run counters (Bytewax workers of one process are threads)."""

    consumed: int = 0
    processed: int = 0
    late: int = 0
    rejected: int = 0
    corrections: int = 0
    rows: int = 0
    rows_offline: int = 0
    rows_online: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, value in deltas.items():
                if value:
                    setattr(self, name, getattr(self, name) + value)
                    PROM_COUNTERS[name].inc(value)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def balanced(self) -> bool:
        """The conservation law every run must satisfy once the input is drained."""
        return self.consumed == self.processed + self.late + self.rejected

    def summary(self) -> str:
        d = self.as_dict()
        verdict = "ok" if self.balanced() else "UNBALANCED"
        return (f"consumed={d['consumed']} processed={d['processed']} late={d['late']} "
                f"rejected={d['rejected']} corrections={d['corrections']} rows={d['rows']} "
                f"pushed_offline={d['rows_offline']} pushed_online={d['rows_online']} "
                f"[consumed = processed + late + rejected: {verdict}]")


def serve_metrics(port: int) -> None:
    """Expose the Prometheus metrics on http://0.0.0.0:port/metrics (daemon thread)."""
    start_http_server(port)


# -- live runs (feast-bytewax run): Kafka, dead letters, freshness SLO ----------------------

KAFKA_ERRORS = Counter(_PREFIX + "kafka_errors", "Kafka client/partition errors by code",
                       ["code"])
KAFKA_LAG = Gauge(_PREFIX + "kafka_lag",
                  "Records behind the partition's high watermark (updated about every second "
                  "from the consumer's cached watermark)", ["topic", "partition"])
DEAD_LETTERS_PRODUCED = Counter(_PREFIX + "dead_letters_produced",
                                "Dead letters acknowledged by the dead-letter topic(s)", ["kind"])
FRESHNESS_ARRIVAL_SECONDS = Histogram(
    _PREFIX + "freshness_since_arrival_seconds",
    "Wall time a row became readable online minus the wall time its event was ingested "
    "(rows caused by an event; sampled)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
FRESHNESS_P99 = Gauge(_PREFIX + "freshness_p99_seconds",
                      "p99 of freshness (readable - event time) over the SLO window")
SLO_BREACHES = Counter(_PREFIX + "freshness_slo_breaches",
                       "Times the freshness p99 went above the SLO (ok -> breach transitions)")
SLO_BREACHED = Gauge(_PREFIX + "freshness_slo_breached", "1 while the freshness p99 > SLO")


class FreshnessSLO:
    """Alert when the p99 of freshness over a sliding window exceeds an objective.

    `observe(values)` adds freshness samples (seconds); at most every `check_every_s` it
    re-evaluates the window's p99 (nearest rank, exact over the samples kept). Going from ok
    to breach logs an ERROR and bumps `breaches` (and the Prometheus counter); while the
    breach lasts the alert is repeated every `realert_s`; going back logs a recovery. `check()`
    can also be called from a timer. Samples older than `window_s` are dropped; beyond
    `max_samples` the oldest are dropped too (memory bound). With no sample in the window
    there is nothing to judge: the state stays as it was (pair the alert with lag/throughput
    alerts: a stalled pipeline produces no rows, hence no samples).
    """

    def __init__(self, slo_s: float, *, window_s: float = 60.0, quantile: float = 0.99,
                 check_every_s: float = 5.0, realert_s: float = 60.0,
                 max_samples: int = 200_000, clock=time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        if not slo_s > 0:
            raise ValueError("slo_s must be > 0")
        self.slo_s = float(slo_s)
        self.window_s = window_s
        self.quantile = quantile
        self.check_every_s = check_every_s
        self.realert_s = realert_s
        self.max_samples = max_samples
        self._clock = clock
        self._log = logger or logging.getLogger("feast_bytewax.slo")
        self._lock = threading.Lock()
        self._chunks: deque[tuple[float, np.ndarray]] = deque()
        self._n = 0
        self._last_check: float | None = None
        self._last_alert = 0.0
        self.breached = False
        self.breaches = 0
        self.last_p99: float | None = None
        self.last_count = 0

    def observe(self, values) -> None:
        arr = np.asarray(values, dtype=np.float64).ravel()
        now = self._clock()
        if arr.size:
            with self._lock:
                self._chunks.append((now, arr))
                self._n += arr.size
        if self._last_check is None or now - self._last_check >= self.check_every_s:
            self.check()

    def _window(self, now: float) -> np.ndarray:
        chunks = self._chunks
        while chunks and (now - chunks[0][0] > self.window_s or
                          self._n - chunks[0][1].size >= self.max_samples):
            self._n -= chunks.popleft()[1].size
        return np.concatenate([c for _, c in chunks]) if chunks else np.empty(0)

    def p99(self) -> float | None:
        """The window's quantile now (None without samples)."""
        with self._lock:
            values = self._window(self._clock())
        if not values.size:
            return None
        return float(np.quantile(values, self.quantile, method="inverted_cdf"))

    def check(self) -> bool:
        """Evaluate now; returns whether the SLO is breached."""
        now = self._clock()
        with self._lock:
            self._last_check = now
            values = self._window(now)
        if not values.size:
            return self.breached
        p = float(np.quantile(values, self.quantile, method="inverted_cdf"))
        self.last_p99, self.last_count = p, int(values.size)
        FRESHNESS_P99.set(p)
        q = f"p{self.quantile * 100:g}"
        if p > self.slo_s:
            if not self.breached:
                self.breached = True
                self.breaches += 1
                SLO_BREACHES.inc()
                SLO_BREACHED.set(1)
                self._last_alert = now
                self._log.error(
                    "FRESHNESS SLO BREACH: %s freshness %.3f s over the last %g s > SLO %g s "
                    "(%d rows)", q, p, self.window_s, self.slo_s, values.size)
            elif now - self._last_alert >= self.realert_s:
                self._last_alert = now
                self._log.error("FRESHNESS SLO still breached: %s %.3f s > SLO %g s (%d rows)",
                                q, p, self.slo_s, values.size)
        elif self.breached:
            self.breached = False
            SLO_BREACHED.set(0)
            self._log.warning("freshness SLO recovered: %s %.3f s <= SLO %g s", q, p, self.slo_s)
        return self.breached
