"""Sinks that wait: store writes retried with backoff while a store is down.

A Feast write that fails with a store error (Redis unreachable or timing out, SQLite
locked, a full or read-only disk, S3 errors) is retried with exponential backoff and full
jitter, on the worker's own thread: while it waits, the worker reads no input (Bytewax runs
sources, steps and sinks of a worker in one loop), so the stream pauses with its state kept
instead of dropping anything, and the Kafka offsets stay where they were. Each incident is
one ERROR line when it starts and one when it ends, counted in
``feast_bytewax_store_incidents_total{store}`` with ``feast_bytewax_store_stalled{store}`` set
while it lasts; the waiting rows are reported to a `StallMonitor` so the freshness SLO fires
during the stall. After `outage_limit` seconds the write gives up with `StoreUnavailable`
(the sink stops the run cleanly: its summary, no panic; with recovery a restart resumes
exactly). Errors that are not about a store (a bug, a schema mismatch) are not retried.
"""

from __future__ import annotations

import errno
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import BusyLoadingError, ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from feast_bytewax.errors import StoreUnavailable
from feast_bytewax.observability.freshness import StallMonitor
from feast_bytewax.observability.metrics import STORE_ERRORS, STORE_INCIDENTS, STORE_STALLED

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a store that is down, overloaded or out of space raises; an error that says the request
# itself is wrong (a missing table, a wrong value type) is not an outage and is not retried.
REDIS_OUTAGES = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ClusterDownError,
                 TryAgainError)
SQLITE_OUTAGES = ("locked", "busy", "disk i/o", "disk is full", "unable to open",
                  "readonly", "read-only")
NOT_OUTAGES = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EINVAL, errno.EEXIST}


def is_outage(e: BaseException) -> bool:
    """Is `e` a store being unavailable (worth waiting for) rather than a bad request?"""
    if isinstance(e, REDIS_OUTAGES):
        return True
    if isinstance(e, sqlite3.OperationalError):
        text = str(e).lower()
        return any(s in text for s in SQLITE_OUTAGES)
    if isinstance(e, OSError):
        return e.errno not in NOT_OUTAGES  # sockets, timeouts, ENOSPC, EROFS, EIO, S3 errors
    return False


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


@dataclass
class StoreRetry:
    """Retry policy of one writer. `sleep` and `clock` (monotonic seconds) are injectable."""

    outage_limit: float = 600.0
    first_backoff: float = 0.1
    max_backoff: float = 5.0
    monitor: StallMonitor | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def call(self, store: str, fn: Callable[[], T], waiting_since_us: int | None = None,
             owner: Any = None) -> T:
        """`fn()`, retried while it raises a store error; `waiting_since_us` is the event time
        of the oldest row the write carries (for the stall monitor)."""
        started: float | None = None
        attempt = 0
        while True:
            try:
                result = fn()
            except Exception as e:
                if not is_outage(e):
                    raise
                now = self.clock()
                STORE_ERRORS.labels(store=store).inc()
                if started is None:
                    started = now
                    STORE_INCIDENTS.labels(store=store).inc()
                    STORE_STALLED.labels(store=store).set(1)
                    if self.monitor is not None and waiting_since_us is not None:
                        self.monitor.stalled(id(owner), waiting_since_us)
                    log.error("%s store write failed (%s); input paused, retrying with "
                              "backoff for up to %g s", store, one_line(e), self.outage_limit)
                down = now - started
                if down >= self.outage_limit:
                    raise StoreUnavailable(
                        f"the {store} store has been failing for {down:.0f} s (limit "
                        f"--store-outage-limit {self.outage_limit:g} s): {one_line(e)}"
                    ) from None
                backoff = min(self.max_backoff, self.first_backoff * 2 ** attempt)
                self.sleep(min(self.rng.uniform(0, backoff), self.outage_limit - down))
                attempt += 1
                continue
            if started is not None:
                STORE_STALLED.labels(store=store).set(0)
                if self.monitor is not None:
                    self.monitor.clear(id(owner))
                log.error("%s store is back after %.1f s and %d retries; input resumes", store,
                          self.clock() - started, attempt)
            return result
