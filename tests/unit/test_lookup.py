"""The batched async lookup operator: values, fallbacks by reason, cache, bounds, and a real
Feast online store (SQLite) read through `feast_reader`."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, String
from prometheus_client import REGISTRY

from feast_bytewax.dataflow import lookup as lookup_module
from feast_bytewax.dataflow.lookup import LookupSettings, LookupStep, feast_reader
from feast_bytewax.engine.groups import CompiledSpec
from feast_bytewax.features.enrich import Lookup
from feast_bytewax.records import Event, Mark, Rejected
from tests.reference import shipped_spec

RISK = Lookup("category_risk", "risk", "category", "double", fallback=-1.0)
COL = RISK.column  # category_risk__risk
NAME = "category_risk:risk"
# Tests not about timeouts wait long enough for a loaded CI machine to schedule the reader
# thread (a fast reader returns at once; the wait ends when it does).
PATIENT = LookupSettings(timeout_s=5.0)


def event(category: str | None, i: int = 0, extra: dict | None = None) -> Event:
    return Event(i, f"u{i}", "purchase", 1.0, category, 1_700_000_000_000_000 + i, extra=extra)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reader:
    """A fake store: `values` by key; records every request's key list (thread-safe)."""

    def __init__(self, values: dict, delay: float = 0.0, gate: threading.Event | None = None,
                 error: Exception | None = None) -> None:
        self.values = values
        self.delay = delay
        self.gate = gate
        self.error = error
        self.calls: list[list] = []
        self.lock = threading.Lock()

    def __call__(self, lookup: Lookup, keys: list) -> dict:
        with self.lock:
            self.calls.append(list(keys))
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return {k: self.values[k] for k in keys if k in self.values}

    @property
    def keys(self) -> list:
        return [k for call in self.calls for k in call]


@pytest.fixture
def make_step():
    steps: list[LookupStep] = []

    def make(read, settings: LookupSettings = PATIENT, clock=time.monotonic,
             lookups=(RISK,)) -> LookupStep:
        step = LookupStep(lookups, read, settings, clock=clock)
        steps.append(step)
        return step

    yield make
    for step in steps:
        step.close()


def values(batch: list, column: str = COL) -> list:
    return [item.extra[column] for item in batch if isinstance(item, Event)]


def test_settings_are_validated():
    assert LookupSettings() == LookupSettings(0.05, 8, 60.0, 256)
    for knob, bad in [("timeout_s", 0), ("concurrency", 0), ("ttl_s", -1.0), ("chunk", 0),
                      ("concurrency", 1.5), ("timeout_s", "1")]:
        with pytest.raises(ValueError, match=knob):
            LookupSettings(**{knob: bad})


def prom(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"feast_bytewax_{name}", labels) or 0.0


def test_hits_misses_and_fallback(make_step):
    read = Reader({"books": 0.2, "toys": 0.9})
    step = make_step(read)
    before = (prom("lookup_fallbacks_total", lookup=NAME, reason="miss"),
              prom("lookup_requests_total", lookup=NAME),
              prom("lookup_seconds_count", lookup=NAME))
    batch = [event("books", 0), event("toys", 1, {"merchant": "m"}), event("games", 2),
             event("books", 3)]
    assert step(batch) is batch
    assert values(batch) == [0.2, 0.9, -1.0, 0.2]
    assert batch[1].extra == {"merchant": "m", COL: 0.9}
    assert sorted(read.keys) == ["books", "games", "toys"]  # distinct keys, one request
    assert len(read.calls) == 1
    assert step.fallbacks[(NAME, "miss")] == 1
    assert step.requests[NAME] == 1 and step.hits[NAME] == 0 and step.events[NAME] == 4
    assert step.summary() == ("lookups: category_risk:risk events=4 hits=0 requests=1 "
                              "fallbacks miss=1 timeout=0 error=0 overloaded=0 no_key=0")
    after = (prom("lookup_fallbacks_total", lookup=NAME, reason="miss"),
             prom("lookup_requests_total", lookup=NAME),
             prom("lookup_seconds_count", lookup=NAME))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    hits = prom("lookup_cache_hits_total", lookup=NAME)
    assert step.wait_idle(5)  # the read's done-callback has filled the cache
    step([event("books"), event("games")])
    assert prom("lookup_cache_hits_total", lookup=NAME) - hits == 2


def test_no_fallback_declared_gives_none(make_step):
    lookup = Lookup("category_risk", "risk", "category", "double")
    step = make_step(Reader({}), lookups=(lookup,))
    batch = step([event("books")])
    assert values(batch) == [None]
    assert step.fallbacks[(NAME, "miss")] == 1


def test_key_from_an_extra_column(make_step):
    lookup = Lookup("merchant_score", "score", "merchant", "double", 0.0)
    step = make_step(Reader({"m1": 5.0}), lookups=(lookup,))
    batch = step([event("x", 0, {"merchant": "m1"}), event("x", 1, {"merchant": "m2"})])
    assert values(batch, lookup.column) == [5.0, 0.0]


def test_cache_ttl_with_injected_clock(make_step):
    clock = Clock()
    read = Reader({"books": 0.2})
    step = make_step(read, LookupSettings(timeout_s=5.0, ttl_s=60.0), clock=clock)
    assert values(step([event("books")])) == [0.2]
    assert step.wait_idle(5)  # cached (at clock time 1000) by the read's done-callback
    clock.now += 30
    read.values["books"] = 0.3  # the store changed; the cached value is still fresh
    assert values(step([event("books"), event("books")])) == [0.2, 0.2]
    assert len(read.calls) == 1 and step.hits[NAME] == 2
    clock.now += 31  # 61 s after the read: expired
    assert values(step([event("books")])) == [0.3]
    assert len(read.calls) == 2


def test_misses_are_cached_too(make_step):
    clock = Clock()
    read = Reader({})
    step = make_step(read, LookupSettings(timeout_s=5.0, ttl_s=10.0), clock=clock)
    for _ in range(3):
        assert values(step([event("nope")])) == [-1.0]
        assert step.wait_idle(5)
        clock.now += 1
    assert read.calls == [["nope"]]
    assert step.fallbacks[(NAME, "miss")] == 3 and step.hits[NAME] == 2
    read.values["nope"] = 0.5  # written since; asked again once the miss expires
    clock.now += 10
    assert values(step([event("nope")])) == [0.5]
    assert len(read.calls) == 2


def test_timeout_then_value_from_cache_requested_once(make_step):
    gate = threading.Event()
    read = Reader({"books": 0.2}, gate=gate)
    step = make_step(read, LookupSettings(timeout_s=0.05))
    began = time.monotonic()
    assert values(step([event("books"), event("books")])) == [-1.0, -1.0]
    assert time.monotonic() - began < 1.0
    assert step.fallbacks[(NAME, "timeout")] == 2
    # still in flight: the next batch does not ask again, and times out too
    assert values(step([event("books")])) == [-1.0]
    assert step.fallbacks[(NAME, "timeout")] == 3
    gate.set()
    assert step.wait_idle(5)
    assert values(step([event("books")])) == [0.2]  # landed in the cache meanwhile
    assert read.calls == [["books"]]
    assert step.requests[NAME] == 1 and step.hits[NAME] == 1


def test_overloaded_when_every_request_slot_is_taken(make_step):
    gate = threading.Event()
    read = Reader({"books": 0.2, "toys": 0.9}, gate=gate)
    step = make_step(read, LookupSettings(timeout_s=0.02, concurrency=1))
    assert values(step([event("books")])) == [-1.0]  # timeout, still in flight
    began = time.monotonic()
    batch = step([event("toys"), event("books")])
    assert time.monotonic() - began < 1.0  # never blocks past the timeout
    assert values(batch) == [-1.0, -1.0]
    assert step.fallbacks[(NAME, "overloaded")] == 1
    assert step.fallbacks[(NAME, "timeout")] == 2
    assert read.calls == [["books"]]  # toys was not queued
    gate.set()
    assert step.wait_idle(5)
    step([event("toys")])  # a slot is free again: requested (in time or not, under load)
    assert step.wait_idle(5)
    assert values(step([event("toys"), event("books")])) == [0.9, 0.2]
    assert read.calls == [["books"], ["toys"]]


def test_reader_error_falls_back_logs_once_and_is_not_cached(make_step, caplog):
    clock = Clock()
    read = Reader({}, error=ConnectionError("store down\n  (details)"))
    step = make_step(read, clock=clock)
    with caplog.at_level(logging.WARNING, logger="feast_bytewax.dataflow.lookup"):
        assert values(step([event("books")])) == [-1.0]
        assert step.wait_idle(5)
        assert values(step([event("books")])) == [-1.0]
        assert step.wait_idle(5)
        clock.now += 61
        step([event("books")])
        assert step.wait_idle(5)
    assert len(read.calls) == 3  # errors are asked again
    assert step.fallbacks[(NAME, "error")] == 3
    warnings = [r for r in caplog.records if r.name == "feast_bytewax.dataflow.lookup"]
    assert len(warnings) == 2  # once, then again a minute later
    line = warnings[0].getMessage()
    assert "ConnectionError: store down (details)" in line and "\n" not in line
    assert warnings[0].exc_info is None


def test_no_key(make_step):
    read = Reader({"books": 0.2})
    step = make_step(read)
    batch = step([event(None, 0), event("", 1), event("books", 2)])
    assert values(batch) == [-1.0, -1.0, 0.2]
    assert step.fallbacks[(NAME, "no_key")] == 2
    assert read.calls == [["books"]]


def test_other_items_pass_through_in_order(make_step):
    step = make_step(Reader({"books": 0.2}))
    mark = Mark(0, 1, "active")
    rejected = Rejected("{}", "bad_json: x", "test")
    other = object()
    events = [event("books", i) for i in range(3)]
    batch = [mark, events[0], rejected, events[1], other, events[2], mark]
    out = step(list(batch))
    assert len(out) == len(batch)
    assert all(a is b for a, b in zip(out, batch, strict=True))
    assert values(out) == [0.2, 0.2, 0.2]
    assert step([mark, other]) == [mark, other]  # no events: nothing to do
    assert step([]) == []


def test_requests_are_chunked(make_step):
    read = Reader({f"k{i}": i for i in range(1000)})
    step = make_step(read, LookupSettings(chunk=64, concurrency=16, timeout_s=5.0))
    batch = step([event(f"k{i % 1000}", i) for i in range(3000)])
    assert values(batch) == [i % 1000 for i in range(3000)]
    assert max(len(c) for c in read.calls) <= 64
    assert len(read.calls) == 16 and sorted(read.keys) == sorted(f"k{i}" for i in range(1000))


def test_two_lookups_on_one_event(make_step):
    score = Lookup("merchant_score", "score", "merchant", "double", 0.0)
    step = make_step(Reader({"books": 0.2, "m1": 7.0}), lookups=(RISK, score))
    (ev,) = step([event("books", 0, {"merchant": "m1"})])
    assert ev.extra == {"merchant": "m1", COL: 0.2, score.column: 7.0}


def test_throughput_is_not_bound_by_the_store_latency(make_step):
    read = Reader({f"k{i}": float(i) for i in range(50)}, delay=0.005)
    step = make_step(read, PATIENT)
    batches = [[event(f"k{(b + i) % 50}", i) for i in range(500)] for b in range(200)]
    began = time.perf_counter()
    for batch in batches:
        step(batch)
    elapsed = time.perf_counter() - began
    events = 200 * 500
    naive = 0.005 * events  # one blocking read per event
    assert elapsed < 0.25 * naive
    assert len(read.calls) == 1  # 50 keys, one chunk, then the cache
    assert step.hits[NAME] >= events - 1000  # batch 2 may beat the cache's done-callback
    assert sum(step.fallbacks[(NAME, r)] for r in ("miss", "timeout", "error")) == 0


# ---------------------------------------------------------------------------------------
# A real Feast repo: SQLite online store read through get_online_features
# ---------------------------------------------------------------------------------------

FEATURE_STORE_YAML = """\
project: x
provider: local
registry: registry.db
online_store:
  type: sqlite
  path: online.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""


@pytest.fixture
def risk_repo(tmp_path: Path) -> Path:
    (tmp_path / "feature_store.yaml").write_text(FEATURE_STORE_YAML)
    now = datetime.now(UTC)
    frame = pd.DataFrame({"category": ["books", "toys", "games"],
                          "risk": [0.2, 0.9, 0.5],
                          "event_timestamp": [now - timedelta(minutes=1)] * 3})
    frame.to_parquet(tmp_path / "category_risk.parquet")
    category = Entity(name="category", join_keys=["category"], value_type=ValueType.STRING)
    view = FeatureView(
        name="category_risk", entities=[category], ttl=timedelta(0), online=True,
        schema=[Field(name="category", dtype=String), Field(name="risk", dtype=Float64)],
        source=FileSource(name="category_risk_source",
                          path=str(tmp_path / "category_risk.parquet"),
                          timestamp_field="event_timestamp"),
    )
    store = FeatureStore(repo_path=str(tmp_path))
    store.apply([category, view])
    store.write_to_online_store("category_risk", frame)
    return tmp_path


def test_feast_reader_on_a_real_online_store(risk_repo: Path, make_step):
    read = feast_reader(str(risk_repo))
    assert read(RISK, ["books", "nope", "toys"]) == {"books": 0.2, "toys": 0.9}
    step = make_step(read, LookupSettings(timeout_s=5.0))
    batch = [Mark(0, 1, "active"), event("books", 0), event("toys", 1), event("nope", 2),
             event("books", 3)]
    out = step(batch)
    assert out[0] is batch[0] and len(out) == 5
    assert values(out) == [0.2, 0.9, -1.0, 0.2]
    assert step.fallbacks[(NAME, "miss")] == 1 and step.requests[NAME] == 1
    explicit = feast_reader(str(risk_repo), str(risk_repo / "feature_store.yaml"))
    assert explicit(RISK, ["games"]) == {"games": 0.5}


def test_feast_reader_opens_one_store_per_thread(risk_repo: Path, monkeypatch):
    opened: list[int] = []

    class CountingStore(FeatureStore):
        def __init__(self, *args, **kwargs) -> None:
            opened.append(threading.get_ident())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lookup_module, "FeatureStore", CountingStore)
    read = feast_reader(str(risk_repo))
    assert opened == []  # lazily, in the thread that reads
    results: list = []
    errors: list = []
    together = threading.Barrier(6)  # all alive at once: thread idents are not reused

    def work(key: str) -> None:
        try:
            results.append(read(RISK, [key]))
            together.wait(10)
            for _ in range(19):
                results.append(read(RISK, [key]))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in ("books", "toys") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(opened) == 6 and len(set(opened)) == 6
    assert len(results) == 120 and {next(iter(r)) for r in results} == {"books", "toys"}


def test_only_the_events_a_feature_reading_the_lookup_takes_are_looked_up():
    """The shipped repo reads `category_risk__risk` only through `risky` in a view filtered
    on purchases: views and logins are neither read nor enriched (nor counted), purchases
    are; with several features reading it, any of their filters is enough."""
    spec = shipped_spec()
    (lk,) = spec.enrichment.lookups
    wanted = CompiledSpec(spec).lookup_wanted(lk.column)
    reader = Reader({"books": 0.9, "games": 0.1})
    step = LookupStep((lk,), reader, PATIENT, wanted=(wanted,))
    try:
        batch = [Event(i, "u1", et, 1.0, cat, 1_700_000_000_000_000 + i) for i, (et, cat) in
                 enumerate([("view", "books"), ("purchase", "books"), ("login_ok", ""),
                            ("purchase", "games"), ("view", "toys")])]
        step(batch)
        assert [ev.extra for ev in batch] == [None, {lk.column: 0.9}, None, {lk.column: 0.1},
                                              None]
        assert sorted(reader.keys) == ["books", "games"]
        assert step.events[f"{lk.view}:{lk.feature}"] == 2
    finally:
        step.close()
    assert wanted(Event(1, "u", "purchase", 1.0, "x", 0))
    assert not wanted(Event(1, "u", "view", 1.0, "x", 0))
