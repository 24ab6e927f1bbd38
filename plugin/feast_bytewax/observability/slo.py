"""The freshness SLO alert, computed from the freshness histogram itself.

Prometheus computes quantiles from bucket counts (`histogram_quantile`); this does the same
in-process, over the window between two readings of the same `FRESHNESS_SECONDS` histogram
that the sink observes, so the alert, the dashboard and the bench read one number, and no
second copy of the samples is kept.

A stalled pipeline makes no rows, hence no samples: a histogram alone would stay silent for
as long as a store is down. So the check also asks `pending_age()` (the age of the oldest
row waiting to be written, from the sink; None when nothing waits): a stall older than the
objective is a breach at once, during the stall, not after it.

Going from ok to breach logs an ERROR and bumps `breaches` (and the Prometheus counter);
while the breach lasts the alert is repeated every `realert_s`; going back logs a recovery.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Histogram

from feast_bytewax.observability.metrics import (
    FRESHNESS_P99,
    FRESHNESS_SECONDS,
    SLO_BREACHED,
    SLO_BREACHES,
)

log = logging.getLogger(__name__)


def bucket_counts(histogram: Histogram) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a label-less histogram, +Inf last."""
    out = []
    for metric in histogram.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                out.append((float(s.labels["le"]), s.value))
    return sorted(out)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """`histogram_quantile` over cumulative buckets: linear within the bucket (the lowest
    bucket from 0); in the +Inf bucket, the highest finite bound. None without samples."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


class FreshnessSLO:
    """Alert when the windowed quantile of freshness (or a stall) exceeds an objective."""

    def __init__(self, slo_s: float, *, histogram: Histogram = FRESHNESS_SECONDS,
                 window_s: float = 60.0, quantile_q: float = 0.99, realert_s: float = 60.0,
                 pending_age: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        if not slo_s > 0:
            raise ValueError("slo_s must be > 0")
        self.slo_s = float(slo_s)
        self.histogram = histogram
        self.window_s = window_s
        self.q = quantile_q
        self.realert_s = realert_s
        self.pending_age = pending_age
        self._clock = clock
        self._log = logger or log
        self._lock = threading.Lock()
        # The first reading is the baseline: samples from before this monitor do not count.
        self._readings: deque[tuple[float, list[tuple[float, float]]]] = deque(
            [(clock(), bucket_counts(histogram))])
        self._last_alert = 0.0
        self.breached = False
        self.breaches = 0
        self.last_p99: float | None = None
        self.last_count = 0
        self.stalled_s: float | None = None
        self._stall_breach = False  # the current breach is a stall (it ends with the stall)

    def window(self) -> list[tuple[float, float]]:
        """Bucket counts observed within the last `window_s` (cumulative)."""
        now = self._clock()
        current = bucket_counts(self.histogram)
        with self._lock:
            self._readings.append((now, current))
            while len(self._readings) > 1 and now - self._readings[1][0] >= self.window_s:
                self._readings.popleft()
            base = self._readings[0][1]
        return [(b, c - c0) for (b, c), (_, c0) in zip(current, base, strict=True)]

    def p99(self) -> float | None:
        """The window's quantile now (None without samples)."""
        return quantile(self.q, self.window())

    def check(self) -> bool:
        """Evaluate now; returns whether the SLO is breached."""
        now = self._clock()
        buckets = self.window()
        p = quantile(self.q, buckets)
        age = self.pending_age() if self.pending_age is not None else None
        self.stalled_s = age if age is not None and age > self.slo_s else None
        if p is not None:
            self.last_p99, self.last_count = p, int(buckets[-1][1])
            FRESHNESS_P99.set(p)
        elif self.stalled_s is None and not self._stall_breach:
            return self.breached  # nothing to judge
        q = f"p{self.q * 100:g}"
        bad = (p is not None and p > self.slo_s) or self.stalled_s is not None
        self._stall_breach = self.stalled_s is not None
        if self.stalled_s is not None:
            what = f"rows waiting {self.stalled_s:.1f} s to be written (store stalled?)"
        elif p is not None:
            what = f"{q} freshness {p:.3f} s over the last {self.window_s:g} s"
        else:
            what = "nothing waits to be written any more"
        if bad:
            if not self.breached:
                self.breached = True
                self.breaches += 1
                SLO_BREACHES.inc()
                SLO_BREACHED.set(1)
                self._last_alert = now
                self._log.error("FRESHNESS SLO BREACH: %s > SLO %g s", what, self.slo_s)
            elif now - self._last_alert >= self.realert_s:
                self._last_alert = now
                self._log.error("FRESHNESS SLO still breached: %s > SLO %g s", what, self.slo_s)
        elif self.breached:
            self.breached = False
            SLO_BREACHED.set(0)
            self._log.warning("freshness SLO recovered: %s (SLO %g s)", what, self.slo_s)
        return self.breached
