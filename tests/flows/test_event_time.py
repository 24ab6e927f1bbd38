"""Event time across partitions, idleness, restarts and outliers (issue 8), at the level of
the source partition (`ingest.partitions`) and the shard engine, with injected clocks.

Flow-level equality across files, workers and processes is in tests/e2e/test_partitions.py.
"""

from __future__ import annotations

import json
import pickle

from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.ingest.partitions import (
    ACTIVE,
    DONE,
    IDLE,
    OUTLIER_CONFIRM,
    EventTimePartition,
    Pacer,
    PartitionPolicy,
)
from feast_bytewax.records import Event, FeatureRow, Mark, Rejected
from tests import reference as ref

MIN = 60_000_000
S = 1_000_000
BASE = 1_763_000_000_000_000 // MIN * MIN
SPEC = ref.shipped_spec()
COUNT = SPEC.feature_names.index("purchase_count_30m")


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class FakeInner:
    """A raw partition: each call returns the next queued batch ([] = nothing to read)."""

    def __init__(self, batches: list[list], offset: int = 0, finite: bool = False) -> None:
        self.batches = list(batches)
        self.offset = offset
        self.finite = finite

    def next_batch(self):
        if not self.batches:
            if self.finite:
                raise StopIteration
            return []
        batch = self.batches.pop(0)
        self.offset += len(batch)
        return batch

    def snapshot(self):
        return self.offset

    def close(self):
        pass


def raw(i: int, t: int, user: str = "u", et: str = "purchase") -> tuple[str, str]:
    from datetime import UTC, datetime

    ts = datetime.fromtimestamp(t / S, tz=UTC).isoformat()
    return (json.dumps({"event_id": i, "user_id": user, "event_type": et, "amount": 5.0,
                        "category": "c", "event_timestamp": ts}), f"p:{i}")


def partition(inner, clock, live=True, resume=None, part=0, pacer=None, max_ahead=3600 * S):
    policy = PartitionPolicy(max_future=10**15, max_ahead=max_ahead, max_skew=60 * S,
                             idle_timeout=5 * S if live else None)
    return EventTimePartition(inner, part, policy, pacer or Pacer(60 * S), resume, clock)


def marks(out) -> list[Mark]:
    return [x for x in out if type(x) is Mark]


def test_idle_partition_advances_with_wall_time_and_then_stops_holding_back():
    clock = Clock(BASE + S)
    p = partition(FakeInner([[raw(1, BASE)]]), clock)
    out = p.next_batch()
    assert [type(x) for x in out] == [Event, Mark] and out[0].frontier == BASE
    assert out[1] == Mark(0, BASE, ACTIVE)
    clock.now += 2 * S
    p.next_batch()  # the first empty poll: quiet from here
    clock.now += 2 * S
    (m,) = marks(p.next_batch())
    assert m == Mark(0, BASE + 2 * S, ACTIVE)  # stream time goes on while quiet
    clock.now += 4 * S
    (m,) = marks(p.next_batch())
    assert m == Mark(0, BASE + 6 * S, IDLE)  # past the idle timeout: no longer holds back


def test_a_restart_does_not_count_its_downtime_as_stream_time():
    """Issue 8, finding 2: the snapshot kept wall time, so downtime became idle stream time."""
    clock = Clock(BASE + S)
    p = partition(FakeInner([[raw(1, BASE)], []]), clock)
    p.next_batch()
    state = pickle.loads(pickle.dumps(p.snapshot()))
    clock.now += 30 * 60 * S  # down for half an hour
    q = partition(FakeInner([[], []], offset=state[0]), clock, resume=state)
    q.next_batch()
    clock.now += S
    (m,) = marks(q.next_batch())
    assert m.frontier == BASE + S  # one second of quiet since the restart, not 30 min
    eng = ShardEngine(SPEC, EngineConfig(watermark_delay=5 * S))
    eng.ingest([Event(1, "u", "purchase", 5.0, "c", BASE, "o", None, 0, BASE), m])
    assert eng.watermark() == BASE + S - 5 * S


def test_replay_partition_is_never_idle_and_ends_done_at_its_newest_time():
    clock = Clock(BASE + 10 * MIN)
    p = partition(FakeInner([[raw(1, BASE), raw(2, BASE + 3 * S)]], finite=True), clock,
                  live=False)
    assert marks(p.next_batch()) == [Mark(0, BASE + 3 * S, ACTIVE)]
    assert p.next_batch() == [Mark(0, BASE + 3 * S, DONE)]


def test_engine_watermark_is_the_minimum_and_idle_or_done_partitions_step_aside():
    eng = ShardEngine(SPEC, EngineConfig(watermark_delay=5 * S, partitions=3))
    ev = Event(1, "u", "purchase", 5.0, "c", BASE + 100 * S, "o", None, 0, BASE + 100 * S)
    eng.ingest([ev])
    assert eng.watermark() is None  # partitions 1 and 2 have said nothing yet
    eng.ingest([Mark(1, BASE + 50 * S, ACTIVE), Mark(2, None, ACTIVE)])
    assert eng.watermark() is None
    eng.ingest([Mark(2, None, IDLE)])  # an empty partition gone idle
    assert eng.watermark() == BASE + 45 * S
    eng.ingest([Mark(1, BASE + 60 * S, DONE)])  # finished: only partition 0 counts
    assert eng.watermark() == BASE + 95 * S
    eng.ingest([Mark(1, BASE + 10 * S, ACTIVE)])  # never backwards
    assert eng.watermark() == BASE + 95 * S


def test_idle_marks_make_an_idle_key_decay_on_time():
    t0 = BASE + 15 * S
    eng = ShardEngine(SPEC, EngineConfig(watermark_delay=5 * S))
    eng.ingest([Event(1, "u", "purchase", 5.0, "", t0, "o", None, 0, t0)])
    boundary = (t0 // MIN) * MIN + 30 * MIN
    # the watermark must pass the boundary: a row at exactly W is held for corrections
    rows = [r for r in eng.ingest([Mark(0, boundary + 5 * S + 1, IDLE)])
            if isinstance(r, FeatureRow)]
    assert [(r.event_timestamp, r.values[COUNT]) for r in rows] == [(t0, 1), (boundary, 0)]


def test_finite_input_ends_at_its_newest_event_time_not_beyond():
    eng = ShardEngine(SPEC, EngineConfig(watermark_delay=0))
    out = eng.ingest([Event(1, "u", "purchase", 5.0, "", BASE + S, "o", None, 0, BASE + S),
                      Mark(0, BASE + 10 * MIN, DONE)])
    out += eng.finish()
    rows = [(r.event_timestamp, r.values[COUNT]) for r in out if isinstance(r, FeatureRow)]
    assert rows == [(BASE + S, 1)]  # the 30 min window has not ended by the newest time


def test_an_outlier_is_held_without_moving_the_frontier_then_dead_lettered():
    """Issue 8, finding 4: three events stamped 'now' in a replay of old data moved the
    watermark to today and made everything after them late."""
    clock = Clock(BASE + 400 * 24 * 3600 * S)
    old = [raw(i, BASE + i * S) for i in range(5)]
    bad = [raw(100 + i, BASE + 90 * 24 * 3600 * S) for i in range(3)]
    later = [raw(10 + i, BASE + (10 + i) * S) for i in range(5)]
    p = partition(FakeInner([old + bad[:2], [bad[2], *later]], finite=True), clock,
                  live=False)
    out = p.next_batch() + p.next_batch()
    events = [x for x in out if type(x) is Event]
    assert [e.event_id for e in events] == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert max(e.frontier for e in events) == BASE + 14 * S
    end = p.next_batch()
    rejected = [x for x in end if type(x) is Rejected]
    assert [json.loads(r.payload)["event_id"] for r in rejected] == [100, 101, 102]
    assert all(r.code == "outlier_timestamp" for r in rejected)
    assert marks(end) == [Mark(0, BASE + 14 * S, DONE)]


def test_a_real_jump_is_confirmed_by_enough_events_and_released_in_order():
    clock = Clock(BASE + 400 * 24 * 3600 * S)
    jump = BASE + 5 * 3600 * S
    after_gap = [raw(i, jump + i * S) for i in range(OUTLIER_CONFIRM)]
    p = partition(FakeInner([[raw(0, BASE)], after_gap], finite=True), clock, live=False)
    p.next_batch()
    clock.now += S  # marks are sent at most every 20 ms
    out = p.next_batch()
    assert [e.event_id for e in out if type(e) is Event] == list(range(OUTLIER_CONFIRM))
    assert marks(out)[-1].frontier == jump + (OUTLIER_CONFIRM - 1) * S


def test_a_partition_far_ahead_of_the_slowest_pauses():
    pacer = Pacer(60 * S)
    clock = Clock(BASE + 10**12)
    slow = partition(FakeInner([[raw(1, BASE)]]), clock, part=0, pacer=pacer)
    fast = partition(FakeInner([[raw(2, BASE + 600 * S)], [raw(3, BASE + 700 * S)]]), clock,
                     part=1, pacer=pacer)
    slow.next_batch()
    assert any(type(x) is Event for x in fast.next_batch())  # reads, and is now ahead
    assert fast.next_batch() == [] and fast.next_awake() is not None  # paused
    assert pacer.ahead(1) and not pacer.ahead(0)


def test_duplicates_are_counted_once_and_change_nothing():
    """Issue 8, finding 5: event_id was not used for de-duplication."""
    events = [Event(i % 4, "u", "purchase", 1.0, "", BASE + i * S, "o") for i in range(8)]
    eng = ShardEngine(SPEC, EngineConfig(watermark_delay=0, allowed_lateness=10 * MIN))
    out = eng.ingest(events) + eng.finish()
    assert eng.counts["duplicates"] == 4 and eng.counts["processed"] == 4
    rows = [r.values[COUNT] for r in out if isinstance(r, FeatureRow)]
    assert max(rows) == 4
    # once the original is beyond the lateness horizon, the id is forgotten (bounded)
    assert len(eng.dedup) == 4
    eng.ingest([Event(99, "v", "view", 0.0, "", BASE + 2 * 3600 * S, "o")])
    assert len(eng.dedup) == 1
