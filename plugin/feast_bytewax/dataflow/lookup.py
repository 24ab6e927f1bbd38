"""Online lookups: a batched, bounded, asynchronous read of other Feast views per micro-batch.

A ``feast_bytewax.lookup`` tag (see `feast_bytewax.features.enrich`) adds to each event one
feature of another view, read from the *online* store by an event column. `LookupStep` does
it the way Flink's async I/O does:

- It reads the store's *current* value at processing time, not the value as of the event's
  time (that is what a temporal join is for). A replay therefore reproduces a lookup only
  against the same table contents; the offline rows keep the value that was actually used,
  so training reads what serving saw.
- Per micro-batch, the distinct keys not in the cache are requested in chunks of `chunk`
  keys on a thread pool, at most `concurrency` requests in flight. The batch waits for its
  requests at most `timeout_s`; a request that finishes later still fills the cache for the
  batches after it, and a key already in flight is not requested again. With every request
  slot taken, further keys are not queued: they get the fallback at once. So a slow or down
  store delays a batch by at most the timeout and never stalls the stream.
- Values read, and misses (negative caching), are cached for `ttl_s`; errors and timeouts
  are not, so they are asked again by the next batch that needs them.
- An event that gets no value read gets the lookup's fallback, counted per reason (`miss`,
  `timeout`, `error`, `overloaded`, `no_key`) in `LookupStep.fallbacks` and in
  ``feast_bytewax_lookup_fallbacks_total{lookup,reason}``: never silently. A failing read
  logs one warning line per distinct error per minute.

Only `Event`s are enriched; every other item of a batch (marks, rejects, table versions)
passes through unchanged, in order: nothing is dropped or duplicated. With `wanted` (per
lookup, `engine.groups.CompiledSpec.lookup_wanted`), only the events some feature reading the
looked-up column would take are enriched (and counted): the others get no such column,
which reads as missing, as an event no filter of that feature passes never needed it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from feast import FeatureStore

from feast_bytewax.features.enrich import Lookup
from feast_bytewax.observability.metrics import (
    LOOKUP_CACHE_HITS,
    LOOKUP_FALLBACKS,
    LOOKUP_REQUESTS,
    LOOKUP_SECONDS,
)
from feast_bytewax.records import Event, column_getter

log = logging.getLogger(__name__)

REASONS = ("miss", "timeout", "error", "overloaded", "no_key")
WARN_EVERY_S = 60.0  # one warning line per distinct read error per this many seconds


@dataclass(frozen=True)
class LookupSettings:
    """How lookups wait: `timeout_s` the most one batch waits for its reads, `concurrency`
    the most read requests in flight, `ttl_s` how long a value (or a miss) is cached,
    `chunk` the most keys per request."""

    timeout_s: float = 0.05
    concurrency: int = 8
    ttl_s: float = 60.0
    chunk: int = 256

    def __post_init__(self) -> None:
        for name in ("timeout_s", "ttl_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"lookup {name} must be a positive number of seconds, "
                                 f"got {value!r}")
        for name in ("concurrency", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"lookup {name} must be a positive int, got {value!r}")


class LookupReader(Protocol):
    """Reads one lookup's feature for some keys: {key: value}; a key left out is a miss.
    Called from the step's worker threads, several at a time."""

    def __call__(self, lookup: Lookup, keys: list[Any]) -> Mapping[Any, Any]: ...


def feast_reader(repo_path: str, fs_yaml_file: str | None = None) -> LookupReader:
    """A `LookupReader` on the online store of a Feast repo, through
    `FeatureStore.get_online_features`. Each thread opens its own `FeatureStore` on first use
    (a store holds one SQLite connection, a Redis client, a registry cache: none of them is
    shared across threads). A null value read is a miss."""
    local = threading.local()
    yaml = None if fs_yaml_file is None else Path(fs_yaml_file)

    def store() -> FeatureStore:
        fs = getattr(local, "store", None)
        if fs is None:
            fs = local.store = FeatureStore(repo_path=str(repo_path), fs_yaml_file=yaml)
        return fs

    def read(lookup: Lookup, keys: list[Any]) -> dict[Any, Any]:
        response = store().get_online_features(
            features=[f"{lookup.view}:{lookup.feature}"],
            entity_rows=[{lookup.key: k} for k in keys],
        ).to_dict()
        values = response[lookup.feature]
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    return read


@dataclass(slots=True)
class _Entry:
    value: Any
    found: bool
    expires: float


class LookupStep:
    """Enriches the `Event`s of a micro-batch with `lookups` read through `read`.

    `step(batch)` returns the batch (the same list, its events given one column per lookup,
    ``<view>__<feature>``). Counters, per lookup name ``view:feature``: `events` enriched,
    `hits` (events whose key the cache answered: a value or a remembered miss), `requests`
    (reads sent), and `fallbacks[(name, reason)]` (events given the fallback). `clock` (seconds,
    monotonic) times the batch deadline and the cache; it may be replaced in tests.
    """

    def __init__(self, lookups: tuple[Lookup, ...] | list[Lookup], read: LookupReader,
                 settings: LookupSettings | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wanted: Sequence[Callable[[Any], bool]] | None = None) -> None:
        self.lookups = tuple(lookups)
        self.wanted = tuple(wanted) if wanted is not None else None
        self.read = read
        self.settings = settings or LookupSettings()
        self.clock = clock
        self.names = [f"{lk.view}:{lk.feature}" for lk in self.lookups]
        self._getters = [column_getter(lk.key) for lk in self.lookups]
        self.events = dict.fromkeys(self.names, 0)
        self.hits = dict.fromkeys(self.names, 0)
        self.requests = dict.fromkeys(self.names, 0)
        self.fallbacks = {(n, r): 0 for n in self.names for r in REASONS}
        self._prom_fallbacks = {(n, r): LOOKUP_FALLBACKS.labels(lookup=n, reason=r)
                                for n in self.names for r in REASONS}
        self._prom_hits = [LOOKUP_CACHE_HITS.labels(lookup=n) for n in self.names]
        self._prom_requests = [LOOKUP_REQUESTS.labels(lookup=n) for n in self.names]
        self._prom_seconds = [LOOKUP_SECONDS.labels(lookup=n) for n in self.names]
        # Shared with the worker threads' done-callbacks, under `_lock`:
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._cache: list[dict[Any, _Entry]] = [{} for _ in self.lookups]
        self._pending: list[dict[Any, Future]] = [{} for _ in self.lookups]
        self._in_flight = 0
        self._warned: dict[str, float] = {}
        self._next_purge = self.clock() + self.settings.ttl_s
        self._pool: ThreadPoolExecutor | None = None

    # -- the batch ---------------------------------------------------------------------------
    def __call__(self, batch: list) -> list:
        if not self.lookups:
            return batch
        events = [item for item in batch if isinstance(item, Event)]
        if not events:
            return batch
        start = self.clock()
        deadline = start + self.settings.timeout_s
        chosen = ([events] * len(self.lookups) if self.wanted is None else
                  [[ev for ev in events if want(ev)] for want in self.wanted])
        keys = [[get(ev) for ev in evs] for get, evs in zip(self._getters, chosen, strict=True)]
        plans = [self._plan(i, set(ks) - {None, ""}, start) for i, ks in enumerate(keys)]
        futures = {f for _, waiting, _ in plans for f in waiting.values()}
        if futures:
            wait(futures, timeout=max(0.0, deadline - self.clock()))
        for i, (ready, waiting, overloaded) in enumerate(plans):
            column = self.lookups[i].column
            values = self._assign(i, keys[i], ready, waiting, overloaded)
            for ev, value in zip(chosen[i], values, strict=True):
                ev.extra = {**ev.extra, column: value} if ev.extra else {column: value}
        if start >= self._next_purge:
            self._purge(start)
        return batch

    def _plan(self, i: int, distinct: set, now: float
              ) -> tuple[dict[Any, _Entry], dict[Any, Future], set]:
        """Split a lookup's distinct keys: fresh in the cache, waiting on a request (an
        earlier batch's or a new one), or overloaded (no request slot left)."""
        cache, pending = self._cache[i], self._pending[i]
        ready: dict[Any, _Entry] = {}
        waiting: dict[Any, Future] = {}
        missing = []
        with self._lock:
            for key in distinct:
                entry = cache.get(key)
                if entry is not None and entry.expires > now:
                    ready[key] = entry
                elif key in pending:
                    waiting[key] = pending[key]
                else:
                    missing.append(key)
            size = self.settings.chunk
            overloaded: set = set()
            for at in range(0, len(missing), size):
                part = missing[at:at + size]
                if self._in_flight >= self.settings.concurrency:
                    overloaded.update(part)
                    continue
                future = self._submit(i, part)
                for key in part:
                    waiting[key] = future
        return ready, waiting, overloaded

    def _submit(self, i: int, keys: list) -> Future:
        """One request, its keys marked in flight (under the lock, before the callback is
        added: that may run at once, in this thread, and must find them)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.concurrency,
                                            thread_name_prefix="feast-bytewax-lookup")
        self._in_flight += 1
        self.requests[self.names[i]] += 1
        self._prom_requests[i].inc()
        future = self._pool.submit(self._fetch, i, keys)
        pending = self._pending[i]
        for key in keys:
            pending[key] = future
        future.add_done_callback(lambda f: self._landed(i, keys, f))
        return future

    def _fetch(self, i: int, keys: list) -> dict[Any, Any]:
        """One request, in a worker thread (a reader returning no mapping is an error)."""
        began = time.perf_counter()
        try:
            return dict(self.read(self.lookups[i], keys))
        finally:
            self._prom_seconds[i].observe(time.perf_counter() - began)

    def _landed(self, i: int, keys: list, future: Future) -> None:
        """A request finished (in a worker thread, or cancelled by `close`): cache what it
        read, including misses; forget errors (the next batch asks again)."""
        failed = future.cancelled() or future.exception() is not None
        if failed and not future.cancelled():
            self._warn(i, len(keys), future.exception())  # before `wait_idle` can return
        result = None if failed else future.result()
        with self._lock:
            pending = self._pending[i]
            if result is not None:
                cache, expires = self._cache[i], self.clock() + self.settings.ttl_s
                for key in keys:
                    value = result.get(key)
                    cache[key] = _Entry(value, value is not None, expires)
            for key in keys:
                if pending.get(key) is future:
                    del pending[key]
            self._in_flight -= 1
            self._idle.notify_all()

    def _assign(self, i: int, keys: list, ready: dict, waiting: dict, overloaded: set) -> list:
        """The column value of each event (in order), counting hits and fallbacks."""
        lk, name = self.lookups[i], self.names[i]
        outcome: dict[Any, tuple[Any, str | None]] = {}
        for key, entry in ready.items():
            outcome[key] = (entry.value, None) if entry.found else (lk.fallback, "miss")
        for key, future in waiting.items():
            if not future.done():
                outcome[key] = (lk.fallback, "timeout")
            elif future.cancelled() or future.exception() is not None:
                outcome[key] = (lk.fallback, "error")
            else:
                value = future.result().get(key)
                outcome[key] = (lk.fallback, "miss") if value is None else (value, None)
        for key in overloaded:
            outcome[key] = (lk.fallback, "overloaded")
        no_key = (lk.fallback, "no_key")
        counts = dict.fromkeys(REASONS, 0)
        hits = 0
        values = []
        for key in keys:
            value, reason = no_key if key is None or key == "" else outcome[key]
            if reason is not None:
                counts[reason] += 1
            if key in ready:
                hits += 1
            values.append(value)
        self.events[name] += len(keys)
        if hits:
            self.hits[name] += hits
            self._prom_hits[i].inc(hits)
        for reason, n in counts.items():
            if n:
                self.fallbacks[(name, reason)] += n
                self._prom_fallbacks[(name, reason)].inc(n)
        return values

    # -- upkeep ------------------------------------------------------------------------------
    def _warn(self, i: int, n: int, error: BaseException | None) -> None:
        text = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        now = self.clock()
        with self._lock:
            last = self._warned.get(text)
            if last is not None and now - last < WARN_EVERY_S:
                return
            self._warned[text] = now
        log.warning("lookup %s: a read of %d keys failed (its events get the fallback, "
                    "reason error): %s", self.names[i], n, text)

    def _purge(self, now: float) -> None:
        """Drop expired cache entries (once per TTL), so the cache holds live keys only."""
        with self._lock:
            for cache in self._cache:
                for key in [k for k, e in cache.items() if e.expires <= now]:
                    del cache[key]
            self._warned = {t: at for t, at in self._warned.items() if now - at < WARN_EVERY_S}
        self._next_purge = now + self.settings.ttl_s

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (their results cached); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)

    def close(self) -> None:
        """Stop the worker threads without waiting: queued requests are cancelled, running
        ones are abandoned (their results are no longer needed)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def summary(self) -> str:
        """One line: `lookups: view:feature events=.. hits=.. requests=.. fallbacks miss=..`."""
        if not self.lookups:
            return "lookups: none"
        parts = []
        for name in self.names:
            reasons = " ".join(f"{r}={self.fallbacks[(name, r)]}" for r in REASONS)
            parts.append(f"{name} events={self.events[name]} hits={self.hits[name]} "
                         f"requests={self.requests[name]} fallbacks {reasons}")
        return "lookups: " + "; ".join(parts)
