"""Per-key window state: shared slide panes for sliding/tumbling features, sessions for
session features.

Why panes: a 24 h window sliding by 1 min would put each event into 1440 windows (what
Bytewax's SlidingWindower does). Here each event updates one pane per feature group, and
each feature keeps one running IR over the panes inside its window:

- exact-revert aggregators (count, sum, mean, count_distinct) subtract a pane when it
  leaves the window (`unmerge`): O(1) per event and per pane;
- the others (min, max, sketches) keep a two-stacks queue over the window's panes:
  amortized O(1) merges, exact, no per-window copies.

Several features with the same filter and slide share one pane list; each feature has its
own eviction pointer because windows differ. Times are epoch microseconds. Panes are flat
lists `[pane_index, ir_0, ir_1, ...]` to keep per-key memory small.

Events reach these classes in event-time order (the engine buffers until the watermark);
the only out-of-order writes are late-but-allowed corrections, which rebuild the group.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feast_bytewax.aggregators import Aggregator


@dataclass(frozen=True, slots=True)
class Member:
    """One feature inside a group: its vector slot, aggregator, input getter, window."""

    slot: int
    agg: Aggregator
    get: Callable[[Any], Any]
    n_panes: int  # window / slide for sliding features; 0 for sessions


@dataclass(frozen=True, slots=True)
class SlidingGroup:
    """Compiled description of features sharing a filter and a slide."""

    gid: int
    slide: int
    members: tuple[Member, ...]

    def new_state(self) -> SlidingState:
        return SlidingState(self)


@dataclass(frozen=True, slots=True)
class SessionGroup:
    """Compiled description of session features sharing a filter and a gap."""

    gid: int
    gap: int
    members: tuple[Member, ...]

    def new_state(self) -> SessionState:
        return SessionState(self)


class SlidingState:
    """Panes of one key for one `SlidingGroup`, with per-feature window aggregates.

    For member m: panes[pos[m]:] are inside its window. Exact-revert members keep `run[m]`;
    others keep a two-stacks queue: `front[m]` holds suffix aggregates of panes
    pos..split-1 (top = oldest), `back[m]` aggregates panes split..last-1; the last pane is
    merged in at read time because it may still be updated.
    """

    __slots__ = ("back", "front", "panes", "pos", "run", "split", "timer_at")

    def __init__(self, group: SlidingGroup) -> None:
        members = group.members
        self.panes: list[list] = []
        self.pos = [0] * len(members)
        self.run = [m.agg.empty() if m.agg.exact_revert else None for m in members]
        self.front: list[list | None] = [None if m.agg.exact_revert else [] for m in members]
        self.back = [None if m.agg.exact_revert else m.agg.empty() for m in members]
        self.split = [0] * len(members)
        self.timer_at: int | None = None

    # -- reads ---------------------------------------------------------------------------
    def value(self, group: SlidingGroup, i: int) -> Any:
        m = group.members[i]
        agg = m.agg
        if agg.exact_revert:
            return agg.result(self.run[i])
        last = len(self.panes) - 1
        if self.pos[i] > last:
            return agg.empty_value
        front = self.front[i]
        acc = agg.copy(front[-1]) if front else agg.empty()
        acc = agg.merge(acc, self.back[i])
        return agg.result(agg.merge(acc, self.panes[last][i + 1]))

    def is_empty(self) -> bool:
        return not self.panes

    def next_eviction(self, group: SlidingGroup) -> int | None:
        """Earliest boundary at which some member's oldest pane leaves its window."""
        panes, best = self.panes, None
        for i, m in enumerate(group.members):
            p = self.pos[i]
            if p < len(panes):
                t = (panes[p][0] + m.n_panes) * group.slide
                if best is None or t < best:
                    best = t
        return best

    # -- writes --------------------------------------------------------------------------
    def fill(self, group: SlidingGroup, vals: list, now: int) -> None:
        """Write every member's current value into its slot of the key's vector."""
        for i, m in enumerate(group.members):
            vals[m.slot] = self.value(group, i)

    def add(self, group: SlidingGroup, ev: Any, t: int) -> bool:
        """Fold an in-order event at time t (>= every earlier event) into its pane.
        True when it opened a pane (the only time the next eviction can move earlier)."""
        q = t // group.slide
        panes = self.panes
        opened = not panes or panes[-1][0] != q
        if opened:
            self._open_pane(group, q)
        pane = panes[-1]
        run = self.run
        for i, m in enumerate(group.members):
            x = m.get(ev)
            agg = m.agg
            pane[i + 1] = agg.update(pane[i + 1], x)
            if agg.exact_revert:
                run[i] = agg.update(run[i], x)
        return opened

    def _open_pane(self, group: SlidingGroup, q: int) -> None:
        panes = self.panes
        last = len(panes) - 1
        for i, m in enumerate(group.members):
            if m.agg.exact_revert:
                continue
            if self.pos[i] <= last:  # the previous last pane is closed: move it to back
                self.back[i] = m.agg.merge(self.back[i], m.agg.copy(panes[last][i + 1]))
            else:  # window was empty: the new pane starts a fresh queue
                self.front[i] = []
                self.back[i] = m.agg.empty()
                self.split[i] = last + 1
        panes.append([q, *(m.agg.empty() for m in group.members)])

    def evict_until(self, group: SlidingGroup, t: int) -> bool:
        """Drop from each member's window the panes whose window ends at or before t."""
        panes, changed = self.panes, False
        for i, m in enumerate(group.members):
            horizon = t // group.slide - m.n_panes  # panes with index <= horizon are out
            while self.pos[i] < len(panes) and panes[self.pos[i]][0] <= horizon:
                self._evict_one(m, i)
                changed = True
        self._compact()
        return changed

    def _evict_one(self, m: Member, i: int) -> None:
        p, panes, agg = self.pos[i], self.panes, m.agg
        last = len(panes) - 1
        if agg.exact_revert:
            self.run[i] = agg.unmerge(self.run[i], panes[p][i + 1])
        elif p == last:
            self.front[i], self.back[i], self.split[i] = [], agg.empty(), p + 1
        else:
            if not self.front[i]:  # flip: suffix aggregates over closed panes p..last-1
                front, acc = [], agg.empty()
                for k in range(last - 1, p - 1, -1):
                    acc = agg.merge(agg.copy(acc), panes[k][i + 1])
                    front.append(acc)
                self.front[i], self.back[i], self.split[i] = front, agg.empty(), last
            self.front[i].pop()
        self.pos[i] = p + 1

    def _compact(self) -> None:
        head = min(self.pos) if self.pos else 0
        if head == 0:
            return
        if head >= len(self.panes):
            self.panes.clear()
            self.pos = [0] * len(self.pos)
            self.split = [0] * len(self.split)
            return
        if head >= 16 and head * 2 >= len(self.panes):
            del self.panes[:head]
            self.pos = [p - head for p in self.pos]
            self.split = [max(s - head, 0) for s in self.split]

    def correct(self, group: SlidingGroup, ev: Any, t: int, now: int) -> bool:
        """Apply a late event (t <= now) as of `now`; False when it is outside every window."""
        q = t // group.slide
        now_q = now // group.slide
        if all(q <= now_q - m.n_panes for m in group.members):
            return False
        panes = self.panes
        idx = [p[0] for p in panes]
        k = bisect_left(idx, q)
        if k == len(panes) or panes[k][0] != q:
            panes.insert(k, [q, *(m.agg.empty() for m in group.members)])
        pane = panes[k]
        for i, m in enumerate(group.members):
            pane[i + 1] = m.agg.update(pane[i + 1], m.get(ev))
        self.rebuild(group, now)
        return True

    def rebuild(self, group: SlidingGroup, now: int) -> None:
        """Recompute pointers and window aggregates from the panes, as of `now`."""
        panes = self.panes
        idx = [p[0] for p in panes]
        last = len(panes) - 1
        for i, m in enumerate(group.members):
            agg = m.agg
            p = bisect_left(idx, now // group.slide - m.n_panes + 1)
            self.pos[i] = p
            if agg.exact_revert:
                acc = agg.empty()
                for k in range(p, last + 1):
                    acc = agg.merge(acc, panes[k][i + 1])
                self.run[i] = acc
            else:
                acc = agg.empty()
                for k in range(p, last):
                    acc = agg.merge(acc, agg.copy(panes[k][i + 1]))
                self.front[i], self.back[i], self.split[i] = [], acc, p
        self._compact()


class SessionState:
    """Sessions of one key for one `SessionGroup`: flat lists `[start, end, ir_0, ...]`.

    Only the newest session can be open; closed ones are kept while a late-but-allowed
    event could still bridge into them (the engine prunes them).
    """

    __slots__ = ("sessions", "timer_at")

    def __init__(self, group: SessionGroup) -> None:
        self.sessions: list[list] = []
        self.timer_at: int | None = None

    def value(self, group: SessionGroup, i: int, now: int) -> Any:
        s = self.sessions
        m = group.members[i]
        if s and now - s[-1][1] < group.gap:
            return m.agg.result(s[-1][i + 2])
        return m.agg.empty_value

    def is_empty(self) -> bool:
        return not self.sessions

    def next_wakeup(self, group: SessionGroup, now: int, lateness: int) -> int | None:
        """The open session's expiry, or else when the oldest kept session can be forgotten."""
        s = self.sessions
        if not s:
            return None
        expiry = s[-1][1] + group.gap
        if expiry > now:
            return expiry
        return s[0][1] + group.gap + lateness

    def fill(self, group: SessionGroup, vals: list, now: int) -> None:
        """Write every member's value as of `now` into its slot of the key's vector."""
        s = self.sessions
        live = s and now - s[-1][1] < group.gap
        for i, m in enumerate(group.members):
            vals[m.slot] = m.agg.result(s[-1][i + 2]) if live else m.agg.empty_value

    def add(self, group: SessionGroup, ev: Any, t: int) -> bool:
        """Fold an in-order event in; True when it started a new session."""
        s = self.sessions
        started = not (s and t - s[-1][1] < group.gap)
        if started:
            cur = [t, t, *(m.agg.empty() for m in group.members)]
            s.append(cur)
        else:
            cur = s[-1]
            cur[1] = t
        for i, m in enumerate(group.members):
            cur[i + 2] = m.agg.update(cur[i + 2], m.get(ev))
        return started

    def correct(self, group: SessionGroup, ev: Any, t: int) -> None:
        """Insert a late event, merging every session it lies within the gap of."""
        gap = group.gap
        new = [t, t, *(m.agg.update(m.agg.empty(), m.get(ev)) for m in group.members)]
        keep = []
        for s in self.sessions:
            if s[0] - new[1] < gap and new[0] - s[1] < gap:
                new[0], new[1] = min(new[0], s[0]), max(new[1], s[1])
                for i, m in enumerate(group.members):
                    new[i + 2] = m.agg.merge(new[i + 2], s[i + 2])
            else:
                keep.append(s)
        keep.append(new)
        keep.sort(key=lambda s: s[0])
        self.sessions = keep

    def prune(self, group: SessionGroup, now: int, lateness: int) -> None:
        """Forget sessions no allowed-late event can reach any more."""
        s = self.sessions
        while s and s[0][1] + group.gap + lateness <= now:
            s.pop(0)
