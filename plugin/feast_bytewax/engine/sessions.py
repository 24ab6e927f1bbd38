"""Per-key state of session features: flat lists `[start, end, ir_0, ir_1, ...]`.

A session of a key is a maximal run of its counted events less than the gap apart
(shared/spec/features.md). Features with the same filter and gap share the sessions. Events
arrive in event-time order (the engine buffers until the watermark); a late-but-allowed event
may bridge sessions, so closed ones are kept while such an event could still reach them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feast_bytewax.engine.state import Member


@dataclass(frozen=True, slots=True)
class SessionGroup:
    """Compiled description of session features sharing a filter and a gap."""

    gid: int
    gap: int
    members: tuple[Member, ...]

    def new_state(self) -> SessionState:
        return SessionState(self)

    @property
    def identity(self) -> tuple:
        return ("session", self.gap, tuple(m.identity for m in self.members))


class SessionState:
    """Sessions of one key for one `SessionGroup`: flat lists `[start, end, ir_0, ...]`.

    Only the newest session can be open; closed ones are kept while a late-but-allowed
    event could still bridge into them (the engine prunes them).
    """

    __slots__ = ("sessions", "timer_at")

    def __init__(self, group: SessionGroup) -> None:
        self.sessions: list[list] = []
        self.timer_at: int | None = None

    def remapped(self, group: SessionGroup, member_map: list[int | None]) -> SessionState:
        """This state under a changed definition of its group (see `SlidingState.remapped`)."""
        new = SessionState(group)
        new.sessions = [[s[0], s[1], *(s[j + 2] if j is not None else mem.agg.empty()
                                       for mem, j in zip(group.members, member_map,
                                                         strict=True))]
                        for s in self.sessions]
        new.timer_at = self.timer_at
        return new

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

    def correct(self, group: SessionGroup, ev: Any, t: int, now: int, lateness: int) -> bool:
        """Insert a late event, merging every session it lies within the gap of, then forget
        what no later event can reach. Always a change (the event joins a session)."""
        self._insert(group, ev, t)
        self.prune(group, now, lateness)
        return True

    def expire(self, group: SessionGroup, t: int, lateness: int) -> None:
        """A wake-up at t: the open session expired, or old sessions can be forgotten."""
        self.prune(group, t, lateness)

    def _insert(self, group: SessionGroup, ev: Any, t: int) -> None:
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
