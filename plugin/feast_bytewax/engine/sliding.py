"""Per-key window state of sliding and tumbling features: shared slide panes.

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
from dataclasses import dataclass
from typing import Any

from feast_bytewax.engine.monotonic import MonoQueue, mono_insert, mono_push
from feast_bytewax.engine.state import Member


@dataclass(frozen=True, slots=True)
class SlidingGroup:
    """Compiled description of features sharing a filter and a slide.

    `mono[i]` marks members whose aggregator is `monotonic` (min, max): they keep their own
    monotonic candidate queue and do not need the shared panes, so a long window (24 h max)
    does not pin a day of panes for the short-window features beside it.
    """

    gid: int
    slide: int
    members: tuple[Member, ...]
    mono: tuple[bool, ...] = ()

    def new_state(self) -> SlidingState:
        return SlidingState(self)

    @property
    def identity(self) -> tuple:
        return ("sliding", self.slide, tuple(m.identity for m in self.members))


class SlidingState:
    """Panes of one key for one `SlidingGroup`, with per-feature window aggregates.

    Per member i, four fields live in one flat list `m` at `4*i` (one list instead of five
    keeps a typical key's state small): `pos` (panes[pos:] are inside its window), `acc`,
    `front` and `split`. Exact-revert members keep the window's running IR in `acc`. Others
    keep a two-stacks queue: `front` holds suffix aggregates of panes pos..split-1 (top =
    oldest; None when empty) and `acc` aggregates panes split..last-1; the last pane is merged
    in at read time because it may still be updated.
    """

    __slots__ = ("m", "panes", "timer_at")

    def __init__(self, group: SlidingGroup) -> None:
        self.panes: list[list] = []
        m: list = []
        for mem, mono in zip(group.members, group.mono, strict=True):
            m += [0, MonoQueue() if mono else mem.agg.empty(), None, 0]
        self.m = m
        self.timer_at: int | None = None

    def remapped(self, group: SlidingGroup, member_map: list[int | None]) -> SlidingState:
        """This state under a changed definition of its group: member i of `group` takes the
        state of old member `member_map[i]`; a new member (None) starts empty."""
        new = SlidingState.__new__(SlidingState)
        m: list = []
        for mem, mono, j in zip(group.members, group.mono, member_map, strict=True):
            m += (self.m[4 * j:4 * j + 4] if j is not None
                  else [0, MonoQueue() if mono else mem.agg.empty(), None, 0])
        new.m = m
        new.panes = [[p[0], *(p[j + 1] if j is not None else mem.agg.empty()
                              for mem, j in zip(group.members, member_map, strict=True))]
                     for p in self.panes]
        new.timer_at = self.timer_at
        return new

    # -- reads ---------------------------------------------------------------------------
    def value(self, group: SlidingGroup, i: int) -> Any:
        agg = group.members[i].agg
        m, b = self.m, 4 * i
        if agg.exact_revert:
            return agg.result(m[b + 1])
        if group.mono[i]:
            dq = m[b + 1]
            return agg.result(dq[1]) if dq else agg.empty_value
        last = len(self.panes) - 1
        if m[b] > last:
            return agg.empty_value
        front = m[b + 2]
        acc = agg.copy(front[-1]) if front else agg.empty()
        acc = agg.merge(acc, m[b + 1])
        return agg.result(agg.merge(acc, self.panes[last][i + 1]))

    def fill(self, group: SlidingGroup, vals: list, now: int) -> None:
        """Write every member's current value into its slot of the key's vector."""
        for i, mem in enumerate(group.members):
            vals[mem.slot] = self.value(group, i)

    def is_empty(self) -> bool:
        return not self.panes and not any(
            self.m[4 * i + 1] for i, mono in enumerate(self._mono_flags()) if mono)

    def _mono_flags(self) -> list[bool]:
        return [type(self.m[4 * i + 1]) is MonoQueue for i in range(len(self.m) // 4)]

    def next_wakeup(self, group: SlidingGroup, now: int, lateness: int) -> int | None:
        """Earliest boundary at which some member's oldest pane leaves its window."""
        panes, m, best = self.panes, self.m, None
        for i, mem in enumerate(group.members):
            if group.mono[i]:
                dq = m[4 * i + 1]
                if not dq:
                    continue
                t = (dq[0] + mem.n_panes) * group.slide
            else:
                p = m[4 * i]
                if p >= len(panes):
                    continue
                t = (panes[p][0] + mem.n_panes) * group.slide
            if best is None or t < best:
                best = t
        return best

    # -- writes --------------------------------------------------------------------------
    def add(self, group: SlidingGroup, ev: Any, t: int) -> bool:
        """Fold an in-order event at time t (>= every earlier event) into its pane.
        True when it opened a pane (the only time the next eviction can move earlier)."""
        q = t // group.slide
        panes, m, mono = self.panes, self.m, group.mono
        opened = False
        if not all(mono):
            opened = not panes or panes[-1][0] != q
            if opened:
                self._open_pane(group, q)
        pane = panes[-1] if panes else None
        for i, mem in enumerate(group.members):
            x = mem.get(ev)
            agg = mem.agg
            if mono[i]:
                opened = mono_push(m[4 * i + 1], q, x, agg) or opened
                continue
            pane[i + 1] = agg.update(pane[i + 1], x)
            if agg.exact_revert:
                m[4 * i + 1] = agg.update(m[4 * i + 1], x)
        return opened

    def _open_pane(self, group: SlidingGroup, q: int) -> None:
        panes, m = self.panes, self.m
        last = len(panes) - 1
        for i, mem in enumerate(group.members):
            agg = mem.agg
            if agg.exact_revert or group.mono[i]:
                continue
            b = 4 * i
            if m[b] <= last:  # the previous last pane is closed: move it into acc (back)
                m[b + 1] = agg.merge(m[b + 1], agg.copy(panes[last][i + 1]))
            else:  # window was empty: the new pane starts a fresh queue
                m[b + 1], m[b + 2], m[b + 3] = agg.empty(), None, last + 1
        panes.append([q, *(mem.agg.empty() for mem in group.members)])

    def expire(self, group: SlidingGroup, t: int, lateness: int) -> None:
        """A wake-up at boundary t: the panes whose window ended leave it."""
        self.evict_until(group, t)

    def evict_until(self, group: SlidingGroup, t: int) -> bool:
        """Drop from each member's window the panes whose window ends at or before t."""
        panes, m, changed = self.panes, self.m, False
        for i, mem in enumerate(group.members):
            horizon = t // group.slide - mem.n_panes  # panes with index <= horizon are out
            if group.mono[i]:
                dq = m[4 * i + 1]
                while dq and dq[0] <= horizon:
                    del dq[:2]
                    changed = True
                continue
            while m[4 * i] < len(panes) and panes[m[4 * i]][0] <= horizon:
                self._evict_one(mem, i)
                changed = True
        self._compact()
        return changed

    def _evict_one(self, mem: Member, i: int) -> None:
        m, panes, agg, b = self.m, self.panes, mem.agg, 4 * i
        p = m[b]
        last = len(panes) - 1
        if agg.exact_revert:
            m[b + 1] = agg.unmerge(m[b + 1], panes[p][i + 1])
        elif p == last:
            m[b + 1], m[b + 2], m[b + 3] = agg.empty(), None, p + 1
        else:
            if not m[b + 2]:  # flip: suffix aggregates over closed panes p..last-1
                front, acc = [], agg.empty()
                for k in range(last - 1, p - 1, -1):
                    acc = agg.merge(agg.copy(acc), panes[k][i + 1])
                    front.append(acc)
                m[b + 1], m[b + 2], m[b + 3] = agg.empty(), front, last
            m[b + 2].pop()
        m[b] = p + 1

    def _compact(self) -> None:
        m = self.m
        users = [i for i, mono in enumerate(self._mono_flags()) if not mono]
        head = min((m[4 * i] for i in users), default=len(self.panes))
        if head == 0:
            return
        if head >= len(self.panes):
            self.panes.clear()
            for i in users:
                m[4 * i] = m[4 * i + 3] = 0
            return
        if head >= 16 and head * 2 >= len(self.panes):
            del self.panes[:head]
            for i in users:
                m[4 * i] -= head
                m[4 * i + 3] = max(m[4 * i + 3] - head, 0)

    def correct(self, group: SlidingGroup, ev: Any, t: int, now: int, lateness: int) -> bool:
        """Apply a late event (t <= now) as of `now`; False when it is outside every window.

        Usually its pane still exists: the value goes into the pane and into whatever
        aggregate covers that pane (O(1), or O(front) for a pane in a front stack). A pane
        that has to be inserted makes the group rebuild its aggregates once.
        """
        q = t // group.slide
        now_q = now // group.slide
        if all(q <= now_q - mem.n_panes for mem in group.members):
            return False
        panes, m, mono = self.panes, self.m, group.mono
        for i, mem in enumerate(group.members):
            if mono[i] and q > now_q - mem.n_panes:
                mono_insert(m[4 * i + 1], q, mem.get(ev), mem.agg)
        if all(q <= now_q - mem.n_panes for i, mem in enumerate(group.members) if not mono[i]):
            return True
        k = bisect_left(panes, q, key=lambda p: p[0])
        if k == len(panes) or panes[k][0] != q:
            panes.insert(k, [q, *(mem.agg.empty() for mem in group.members)])
            for i, mem in enumerate(group.members):
                if not mono[i]:
                    panes[k][i + 1] = mem.agg.update(panes[k][i + 1], mem.get(ev))
            self.rebuild(group, now)
            return True
        last = len(panes) - 1
        pane = panes[k]
        for i, mem in enumerate(group.members):
            if mono[i]:
                continue
            agg, b, x = mem.agg, 4 * i, mem.get(ev)
            pane[i + 1] = agg.update(pane[i + 1], x)
            if k < m[b] or (k == last and not agg.exact_revert):
                continue  # outside this member's window, or the open pane (read live)
            if agg.exact_revert or k >= m[b + 3]:
                m[b + 1] = agg.update(m[b + 1], x)  # running IR, or the back aggregate
            else:  # inside the front stack: every suffix aggregate from pos..k covers it
                front = m[b + 2]
                for j in range(len(front) - 1, len(front) - 2 - (k - m[b]), -1):
                    front[j] = agg.update(front[j], x)
        return True

    def rebuild(self, group: SlidingGroup, now: int) -> None:
        """Recompute pointers and window aggregates from the panes, as of `now`."""
        panes, m = self.panes, self.m
        last = len(panes) - 1
        for i, mem in enumerate(group.members):
            if group.mono[i]:
                continue  # its queue does not depend on the panes
            agg, b = mem.agg, 4 * i
            p = bisect_left(panes, now // group.slide - mem.n_panes + 1, key=lambda x: x[0])
            acc = agg.empty()
            for k in range(p, last + 1 if agg.exact_revert else last):
                acc = agg.merge(acc, agg.copy(panes[k][i + 1]))
            m[b], m[b + 1], m[b + 2], m[b + 3] = p, acc, None, p
        self._compact()


