"""The watermark of a feature step: the minimum over its input partitions.

shared/spec/features.md: the watermark is the minimum over the active input partitions of
(newest event time seen in that partition - delay), as in Flink; a partition that is
finished or idle stops holding it back. Each partition's progress reaches every shard
in-band, in the order that partition emitted it (`ingest.partitions` stamps every event with
its partition's frontier and sends a `Mark` per batch to every shard), so an event that was
on time in its own partition is never judged against a later state of that partition.

- A partition whose frontier is unknown yet (it has read nothing) holds the watermark back,
  until it reads something, becomes idle or finishes.
- With no active partition left: every partition finished means the end of the input, the
  watermark is the newest event time (no delay: no disorder can follow); idle partitions
  (live runs) report a frontier that advances with their idle wall-clock time, minus delay.
- The watermark never moves backwards (a restart may report lower frontiers for a while).

`advance` is called per event (and `mark` per partition mark, in every shard): raising a
partition that is not the slowest one cannot move the minimum, so the common case is O(1);
only the slowest partition's events recompute, except when it is the only active one (a
single input, or the others done or idle): then its frontier is the minimum, O(1) again.
"""

from __future__ import annotations

ACTIVE, IDLE, DONE = "active", "idle", "done"


class PartitionWatermarks:
    """Frontiers and states of `n` input partitions, combined into one watermark."""

    __slots__ = ("delay", "floor", "frontier", "inactive", "sole", "state", "wm")

    def __init__(self, n: int, delay: int) -> None:
        if n < 1:
            raise ValueError(f"a feature step needs at least one input partition, got {n}")
        self.delay = delay
        self.frontier: list[int | None] = [None] * n
        self.state: list[str] = [ACTIVE] * n
        self.wm: int | None = None
        self.floor: int | None = None  # min frontier over active partitions (None: unknown)
        self.sole: int | None = None  # the only active partition, once its frontier is known
        self.inactive = 0  # partitions idle or done (0: the minimum is a plain `min`)

    def advance(self, part: int, t: int) -> int | None:
        """An event of `part` with the partition's frontier `t`; returns the watermark."""
        cur = self.frontier[part]
        if part == self.sole:  # the one active partition (one input, or the others ended)
            if t > cur:
                self.frontier[part] = self.floor = t
                w = t - self.delay
                if self.wm is None or w > self.wm:
                    self.wm = w
            return self.wm
        if cur is not None and t <= cur and self.state[part] == ACTIVE:
            return self.wm
        self.frontier[part] = t if cur is None or t > cur else cur
        if self.state[part] != ACTIVE:
            self.state[part] = ACTIVE
            self.inactive -= 1
        elif cur is not None and self.floor is not None and cur > self.floor:
            return self.wm  # not the slowest partition: the minimum cannot move
        return self._combine()

    def mark(self, part: int, frontier: int | None, state: str) -> int | None:
        """A partition's progress report (`Mark`); returns the watermark."""
        cur = self.frontier[part]
        if (state == ACTIVE and self.state[part] == ACTIVE and cur is not None
                and part != self.sole and self.floor is not None):
            if frontier is None or frontier <= cur:
                return self.wm  # no news
            if cur > self.floor:  # not the slowest partition: the minimum cannot move
                self.frontier[part] = frontier
                return self.wm
        if frontier is not None and (cur is None or frontier > cur):
            self.frontier[part] = frontier
        self.inactive += (state != ACTIVE) - (self.state[part] != ACTIVE)
        self.state[part] = state
        return self._combine()

    def _combine(self) -> int | None:
        frontier = self.frontier
        if not self.inactive:  # every partition active: the minimum of them all, in C
            self.sole = None
            if None in frontier:
                self.floor = None
                return self.wm
            self.floor = floor = min(frontier)
            if len(frontier) == 1:
                self.sole = 0
            w = floor - self.delay
            if self.wm is None or w > self.wm:
                self.wm = w
            return self.wm
        active = [f for f, s in zip(self.frontier, self.state, strict=True) if s == ACTIVE]
        self.sole = None
        if len(active) == 1 and active[0] is not None:
            self.sole = self.state.index(ACTIVE)
        if active:
            self.floor = None if None in active else min(active)
            w = None if self.floor is None else self.floor - self.delay
        else:
            self.floor = None
            known = [f for f in self.frontier if f is not None]
            lag = self.delay if IDLE in self.state else 0
            w = max(known) - lag if known else None
        if w is not None and (self.wm is None or w > self.wm):
            self.wm = w
        return self.wm

    def retarget(self, delay: int) -> int | None:
        """Use `delay` from now on (a provisional engine restored from an exact one's
        marks); returns the watermark, recombined (it never moves back)."""
        self.delay = delay
        return self._combine()

    def end(self) -> int | None:
        """The final watermark of a finite input: the newest event time of any partition."""
        known = [f for f in self.frontier if f is not None]
        end = max(known) if known else None
        if end is not None and (self.wm is None or end > self.wm):
            self.wm = end
        return self.wm

    def __getstate__(self) -> tuple:
        return (self.delay, self.frontier, self.state, self.wm, self.floor)

    def __setstate__(self, s: tuple) -> None:
        self.delay, self.frontier, self.state, self.wm, self.floor = s
        self.sole = None  # found again by the next combine
        self.inactive = sum(state != ACTIVE for state in self.state)
