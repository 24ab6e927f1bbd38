"""Counters that prove nothing is lost: consumed = processed + late + rejected.

`FlowStats` is per dataflow run (the CLI prints it at the end); every increment is mirrored
to process-wide Prometheus metrics, which `serve_metrics` exposes for live runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

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
