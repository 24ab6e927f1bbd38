"""Live runs: with an injected wall clock the watermark keeps moving while the stream is
idle, so keys decay on time, and the Bytewax logic asks to be woken exactly then."""

from __future__ import annotations

from feast_bytewax.dataflow.step import FeatureStepConfig
from feast_bytewax.engine.shard import EngineConfig, ShardEngine
from feast_bytewax.records import EndOfInput, Event, FeatureRow
from feast_bytewax.timeutil import to_us
from tests import reference as ref

MIN = 60_000_000
SPEC = ref.shipped_spec()
COUNT = SPEC.feature_names.index("purchase_count_30m")


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def purchase(t: int, user: str = "u") -> Event:
    return Event(1, user, "purchase", 5.0, "", t, "test")


def test_idle_key_decays_when_wall_clock_passes_the_boundary():
    t0 = 1_763_000_000_000_000 // MIN * MIN + 15_000_000
    clock = FakeClock(t0 + 1_000_000)  # the event arrives 1 s after it happened
    delay = 5_000_000
    eng = ShardEngine(SPEC, EngineConfig(watermark_delay=delay, clock=clock))
    assert eng.ingest([purchase(t0)]) == []  # still inside the watermark delay
    clock.now += delay  # the watermark passes the event: its row is held at W, not final
    assert eng.tick() == []
    clock.now += 1
    rows = [r for r in eng.tick() if isinstance(r, FeatureRow)]
    assert [(r.event_timestamp, r.values[COUNT]) for r in rows] == [(t0, 1)]
    boundary = (t0 // MIN) * MIN + 30 * MIN
    clock.now = boundary + delay + 1_000_000 + 1  # no new events at all
    rows = [r for r in eng.tick() if isinstance(r, FeatureRow)]
    assert (boundary, 0) in [(r.event_timestamp, r.values[COUNT]) for r in rows]


def test_logic_notify_at_is_when_the_next_timer_becomes_due():
    t0 = 1_763_000_000_000_000 // MIN * MIN
    clock = FakeClock(t0)
    step = FeatureStepConfig(SPEC, EngineConfig(watermark_delay=0, clock=clock))
    logic = step.build(None)
    logic.on_batch([purchase(t0 + 1)])
    due = logic.notify_at()
    # The next item is the row held at the watermark (t0+1): wake up shortly to flush it.
    assert due is not None and to_us(due) <= t0 + 200_000
    clock.now = t0 + 10
    logic.on_notify()
    # Now the next due item is the pane exit 30 min after the event's pane.
    expected_wall = t0 + (30 * MIN - 1)  # event time gap to the boundary, mapped to wall time
    assert abs(to_us(logic.notify_at()) - expected_wall) <= 2


def test_replay_logic_never_asks_for_wall_clock_wakeups():
    """Without a clock (replay) there is no busy loop: notify_at is always None."""
    logic = FeatureStepConfig(SPEC, EngineConfig(watermark_delay=0)).build(None)
    logic.on_batch([purchase(1_763_000_000_000_000)])
    assert logic.notify_at() is None
    out, _ = logic.on_batch([EndOfInput(1_763_000_000_000_000 + 40 * MIN)])
    out2, _ = logic.on_eof()
    rows = [r for r in [*out, *out2] if isinstance(r, FeatureRow)]
    assert [r.values[COUNT] for r in rows] == [1, 0]
