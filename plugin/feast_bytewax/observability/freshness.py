"""Freshness of the live run: `FreshnessRecorder` samples arrival and event times and
observes the sink's flushes (its `on_flush` hook) into the freshness histograms, which the
SLO alert (`observability.slo`) and Prometheus read."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from feast_bytewax.observability.metrics import FRESHNESS_ARRIVAL_SECONDS, FRESHNESS_SECONDS
from feast_bytewax.records import PROVISIONAL, Event
from feast_bytewax.timeutil import utc_now_us

ARRIVAL_SAMPLE_PER_BATCH = 64
ARRIVAL_MAX_TRACKED = 200_000
# a row an event made (exact, or provisional: mostly events, the rest never match an arrival)
CAUSED_BY_EVENT = frozenset({"event", PROVISIONAL})


class FreshnessRecorder:
    """Measures, per row that became readable, its freshness:

    - since event time: readable wall time - the row's timestamp (`FRESHNESS_SECONDS`);
    - since arrival: readable wall time - the wall time its event was validated
      (`FRESHNESS_ARRIVAL_SECONDS`), for rows caused by an event. Arrivals are sampled (the
      first `sample_per_batch` events of each validated batch, at most `max_tracked` waiting)
      and looked up by (key, event time); they live in this process only, so with several
      worker processes a row flushed on another process is simply not measured.

    Only the latest row per key of a flush is online-readable (the sink coalesces), so only
    those are measured. Thread-safe (validators and sinks run on worker threads).
    """

    def __init__(self, *, sample_per_batch: int = ARRIVAL_SAMPLE_PER_BATCH,
                 max_tracked: int = ARRIVAL_MAX_TRACKED, horizon_s: float = 600.0,
                 clock: Callable[[], int] | None = None) -> None:
        self.sample_per_batch = sample_per_batch
        self.max_tracked = max_tracked
        self.horizon_us = int(horizon_s * 1e6)
        self.clock = clock or utc_now_us
        self._arrivals: dict[tuple[str, int], int] = {}
        self._order: deque[tuple[int, tuple[str, int]]] = deque()
        self._lock = threading.Lock()
        self.rows_measured = 0
        self.arrivals_measured = 0

    def observe_batch(self, batch: Sequence[Any], now_us: int) -> None:
        """`flow.make_validator` hook: remember when sampled events arrived."""
        picked = []
        for x in batch:
            if type(x) is Event:
                picked.append((x.user_id, x.event_timestamp))
                if len(picked) >= self.sample_per_batch:
                    break
        if not picked:
            return
        with self._lock:
            self._prune(now_us)
            for key in picked:
                if len(self._arrivals) >= self.max_tracked:
                    break
                self._arrivals[key] = now_us
                self._order.append((now_us, key))

    def _prune(self, now_us: int) -> None:
        order, arrivals = self._order, self._arrivals
        while order and (now_us - order[0][0] > self.horizon_us):
            t, key = order.popleft()
            if arrivals.get(key) == t:
                del arrivals[key]

    def rows_readable(self, rows: Sequence[Any], now_us: int | None = None) -> None:
        """Rows a flush just made readable (in flush order): the sink's `on_flush` hook."""
        if not rows:
            return
        now_us = self.clock() if now_us is None else now_us
        latest: dict[str, Any] = {}
        for r in rows:
            prev = latest.get(r.key)
            if prev is None or r.event_timestamp >= prev.event_timestamp:
                latest[r.key] = r
        fresh = [(now_us - r.event_timestamp) / 1e6 for r in latest.values()]
        since_arrival = []
        with self._lock:
            if self._arrivals:
                for r in rows:
                    t = self._arrivals.pop((r.key, r.event_timestamp), None)
                    if t is not None and r.cause in CAUSED_BY_EVENT and latest[r.key] is r:
                        since_arrival.append((now_us - t) / 1e6)
        for v in fresh:
            FRESHNESS_SECONDS.observe(v)
        for v in since_arrival:
            FRESHNESS_ARRIVAL_SECONDS.observe(v)
        self.rows_measured += len(fresh)
        self.arrivals_measured += len(since_arrival)


class StallMonitor:
    """Rows waiting for a failing store: writers report the event time of their oldest
    waiting row while their store is down; the freshness SLO reads the age of the oldest
    (`pending_age`), so a stall is an alert while it lasts, not after. Thread-safe."""

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self.clock = clock or utc_now_us
        self._waiting: dict[int, int] = {}
        self._lock = threading.Lock()

    def stalled(self, writer: int, oldest_event_us: int) -> None:
        with self._lock:
            self._waiting[writer] = oldest_event_us

    def clear(self, writer: int) -> None:
        with self._lock:
            self._waiting.pop(writer, None)

    def pending_age(self) -> float | None:
        """Seconds since the event time of the oldest waiting row; None if nothing waits."""
        with self._lock:
            if not self._waiting:
                return None
            oldest = min(self._waiting.values())
        return (self.clock() - oldest) / 1e6
