"""The temporal join in the shard: table versions per key, and events kept for corrections.

Profile versions (`records.TableVersion`) are routed like events (same entity key, same
shard: the table is spread over the workers, not broadcast) and follow the same event-time
rules. A version on time (ahead of the watermark) is kept at once, by its time: an event
joins the version valid at its own time (the latest `valid_from` <= event time), so a
version of a later time changes nothing for it, and one of the same instant is joined. A
version that arrives after events it should have enriched (behind the watermark, within
the allowed lateness) corrects their effect: the key's groups
that read joined columns are rebuilt from the events they keep (`Retained`), and the change
is a correction row at the watermark, as for a late event. Later than that, it is counted
(`late_versions`), reported as a late record, and joined only by events applied from then on
(the table is current again; the past is not rewritten).

What is kept: per key, the latest version older than the lateness horizon (it is still
valid for later events) and every version inside it; per key and join-reading group, the
events still inside that group's longest window (only those can change a value).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from typing import Any

from feast_bytewax.records import TableVersion


class Versions:
    """Versions of one joined table for the keys of a shard: key -> sorted [(t, values)]."""

    __slots__ = ("by_key",)

    def __init__(self) -> None:
        self.by_key: dict[Any, list[tuple[int, dict]]] = {}

    def insert(self, key: Any, t: int, values: dict) -> None:
        versions = self.by_key.setdefault(key, [])
        i = bisect_right(versions, t, key=lambda v: v[0])
        if i and versions[i - 1][0] == t:
            versions[i - 1] = (t, values)  # the same version again: the last one wins
        else:
            versions.insert(i, (t, values))

    def at(self, key: Any, t: int) -> tuple[int, dict] | None:
        """The version valid at t (the latest with valid_from <= t) as (valid_from, values),
        or None."""
        versions = self.by_key.get(key)
        if not versions:
            return None
        i = bisect_right(versions, t, key=lambda v: v[0])
        return versions[i - 1] if i else None

    def prune(self, key: Any, horizon: int) -> None:
        """Forget versions no event can need: older than the latest one before `horizon`."""
        versions = self.by_key.get(key)
        if not versions:
            return
        i = bisect_right(versions, horizon, key=lambda v: v[0])
        if i > 1:
            del versions[:i - 1]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_key.values())


class Retained:
    """Events of join-reading groups, per key and group, while they are inside its windows.

    Kept in arrival order (a deque): events are released in event-time order, so the oldest
    is at the front and pruning pops from there, O(1) per event. A correction (older than
    the events before it) may outstay its window a little: a rebuild adds it to a state
    that then expires it, so that changes nothing.
    """

    __slots__ = ("by_key",)

    def __init__(self) -> None:
        self.by_key: dict[Any, dict[int, deque[tuple[int, Any]]]] = {}

    def keep(self, key: Any, gid: int, t: int, ev: Any) -> None:
        groups = self.by_key.get(key)
        if groups is None:
            groups = self.by_key[key] = {}
        kept = groups.get(gid)
        if kept is None:
            kept = groups[gid] = deque()
        kept.append((t, ev))

    def events(self, key: Any, gid: int) -> deque[tuple[int, Any]] | tuple:
        groups = self.by_key.get(key)
        return () if groups is None else groups.get(gid, ())

    def prune(self, key: Any, gid: int, before: int) -> None:
        """Drop events of the group stamped before `before` (they left every window)."""
        groups = self.by_key.get(key)
        if not groups:
            return
        kept = groups.get(gid)
        if kept is None:
            return
        while kept and kept[0][0] < before:
            kept.popleft()
        if not kept:
            del groups[gid]
            if not groups:
                del self.by_key[key]

    def __len__(self) -> int:
        return sum(len(v) for g in self.by_key.values() for v in g.values())


class JoinState:
    """A shard's side of the temporal join: every joined view's versions, the events kept
    for corrections, and what each event joined (`Event.joined`: view -> (valid_from,
    values) of the version it was applied with).

    An event joins the versions known when it is applied. A version that comes later
    changes what an event joined only if it may correct it (within the allowed lateness:
    `rejoin`); one that is too late holds for the events applied after it.
    """

    __slots__ = ("retained", "versions", "views")

    def __init__(self, views: tuple[str, ...]) -> None:
        self.views = views
        self.versions: dict[str, Versions] = {v: Versions() for v in views}
        self.retained = Retained()

    def join(self, ev: Any, key: Any, t: int, horizon: int) -> None:
        """Set what `ev` joins at t. No later join of this shard is older than `horizon`
        (the release time, or the watermark, minus the allowed lateness): the key's versions
        it no longer needs go now, so a key keeps the latest plus the ones inside it."""
        joined = ev.joined
        if joined is None:
            joined = ev.joined = {}
        for view in self.views:
            versions = self.versions[view]
            mine = versions.by_key.get(key)
            if mine is not None and len(mine) > 1 and mine[1][0] <= horizon:
                versions.prune(key, horizon)
            joined[view] = versions.at(key, t)

    def insert(self, v: TableVersion, horizon: int | None) -> None:
        versions = self.versions.get(v.view)
        if versions is None:  # a view joined since the snapshot this state came from
            versions = self.versions[v.view] = Versions()
        versions.insert(v.key, v.valid_from, v.values)
        if horizon is not None:
            versions.prune(v.key, horizon)

    def rejoin(self, v: TableVersion, gid: int) -> list[tuple[int, Any]] | None:
        """The kept events of group `gid` for `v.key` in event-time order, those at or after
        `v.valid_from` now joining `v` unless they joined a later version; None when none of
        them is at or after it (nothing changes)."""
        events = self.retained.events(v.key, gid)
        t = v.valid_from
        if not any(et >= t for et, _ in events):
            return None
        entry = (t, v.values)
        for et, ev in events:
            if et < t:
                continue
            joined = ev.joined
            if joined is None:
                joined = ev.joined = {}
            current = joined.get(v.view)
            if current is None or current[0] <= t:
                joined[v.view] = entry
        return sorted(events, key=lambda x: x[0])  # kept in arrival order

    def __len__(self) -> int:
        return sum(len(v) for v in self.versions.values())
