"""The fast `PartitionWatermarks` against a straightforward reference.

`advance` skips recomputing the minimum whenever it cannot move (a partition that is not the
slowest) and takes the only active partition's frontier as the minimum (one input, or the
others done or idle). The reference recomputes everything from the definition in
engine/watermark.py (shared/spec/features.md) on every call; random sequences of calls, with
snapshots (pickle round trips) in between, must give the same results and the same state.
"""

from __future__ import annotations

import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feast_bytewax.engine.watermark import ACTIVE, DONE, IDLE, PartitionWatermarks

PROPS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RefWatermarks:
    """The definition, recomputed on every call: the minimum over the active partitions of
    (frontier - delay), unknown while an active partition has read nothing; with none
    active, the newest frontier (minus the delay if a partition is idle); never backwards."""

    def __init__(self, n: int, delay: int) -> None:
        self.n, self.delay = n, delay
        self.frontier: list[int | None] = [None] * n
        self.state = [ACTIVE] * n
        self.wm: int | None = None

    def _raise(self, part: int, f: int | None) -> None:
        cur = self.frontier[part]
        if f is not None and (cur is None or f > cur):
            self.frontier[part] = f

    def _update(self) -> int | None:
        active = [self.frontier[i] for i in range(self.n) if self.state[i] == ACTIVE]
        known = [f for f in self.frontier if f is not None]
        if active:
            w = None if any(f is None for f in active) else min(active) - self.delay
        elif known:
            w = max(known) - (self.delay if IDLE in self.state else 0)
        else:
            w = None
        if w is not None and (self.wm is None or w > self.wm):
            self.wm = w
        return self.wm

    def advance(self, part: int, t: int) -> int | None:
        self._raise(part, t)
        self.state[part] = ACTIVE
        return self._update()

    def mark(self, part: int, frontier: int | None, state: str) -> int | None:
        self._raise(part, frontier)
        self.state[part] = state
        return self._update()

    def end(self) -> int | None:
        known = [f for f in self.frontier if f is not None]
        if known and (self.wm is None or max(known) > self.wm):
            self.wm = max(known)
        return self.wm


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def wm_ops(n: int):
    part = st.integers(0, n - 1)
    time = st.integers(0, 40)
    return st.lists(st.one_of(
        st.tuples(st.just("advance"), part, time),
        st.tuples(st.just("advance"), part, time),  # events are the common call
        st.tuples(st.just("mark"), part, st.none() | time, st.sampled_from([ACTIVE, IDLE, DONE])),
        st.tuples(st.just("end")),
        st.tuples(st.just("snapshot")),
    ), max_size=80)


@PROPS
@given(data=st.data())
def test_partition_watermarks_match_the_definition(data):
    n = data.draw(st.integers(1, 4), label="partitions")
    delay = data.draw(st.sampled_from([0, 3, 10]), label="delay")
    fast, ref = PartitionWatermarks(n, delay), RefWatermarks(n, delay)
    for op in data.draw(wm_ops(n), label="ops"):
        if op[0] == "snapshot":
            fast = roundtrip(fast)
            continue
        got, want = getattr(fast, op[0])(*op[1:]), getattr(ref, op[0])(*op[1:])
        assert got == want, op
        assert fast.wm == ref.wm and fast.frontier == ref.frontier and fast.state == ref.state
        active = [f for f, s in zip(ref.frontier, ref.state, strict=True) if s == ACTIVE]
        if active and None not in active:  # the cached minimum the fast path relies on
            assert fast.floor == min(active), op


@PROPS
@given(data=st.data())
def test_in_order_streams_of_one_partition_match(data):
    """The bench's case: one partition, frontiers that mostly rise, a mark per batch."""
    delay = data.draw(st.sampled_from([0, 5]))
    steps = data.draw(st.lists(st.integers(-3, 6), min_size=1, max_size=200))
    fast, ref = PartitionWatermarks(1, delay), RefWatermarks(1, delay)
    f = 100
    for i, d in enumerate(steps):
        f = max(f, f + d)  # a source's frontier never goes back
        assert fast.advance(0, f) == ref.advance(0, f)
        if i % 17 == 16:
            assert fast.mark(0, f, ACTIVE) == ref.mark(0, f, ACTIVE)
    assert fast.mark(0, f, DONE) == ref.mark(0, f, DONE)
    assert fast.end() == ref.end()


@pytest.mark.parametrize("n", [1, 3])
def test_watermarks_restore_the_snapshot_form_of_earlier_releases(n):
    marks = PartitionWatermarks.__new__(PartitionWatermarks)
    marks.__setstate__((2, [10] * n, [ACTIVE] * n, 8, 10))
    ref = RefWatermarks(n, 2)
    ref.frontier, ref.wm = [10] * n, 8
    for part in range(n):
        assert marks.advance(part, 20 + part) == ref.advance(part, 20 + part)
    assert marks.wm == 18
