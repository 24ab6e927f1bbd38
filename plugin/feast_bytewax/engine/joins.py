"""The temporal join in the shard: table versions per key, and events kept for corrections.

Profile versions (`records.TableVersion`) are routed like events (same entity key, same
shard: the table is spread over the workers, not broadcast) and follow the same event-time
rules. A version on time is released in event-time order with the events, before the events
of its instant, so an event joins the version valid at its own time (the latest
`valid_from` <= event time). A version that arrives after events it should have enriched
(behind the watermark, within the allowed lateness) corrects their effect: the key's groups
that read joined columns are rebuilt from the events they keep (`Retained`), and the change
is a correction row at the watermark, as for a late event. Later than that, it is counted
(`late_versions`) and not applied.

What is kept: per key, the latest version older than the lateness horizon (it is still
valid for later events) and every version inside it; per key and join-reading group, the
events still inside that group's longest window (only those can change a value).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any


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

    def at(self, key: Any, t: int) -> dict | None:
        """The values valid at t (the latest version with valid_from <= t), or None."""
        versions = self.by_key.get(key)
        if not versions:
            return None
        i = bisect_right(versions, t, key=lambda v: v[0])
        return versions[i - 1][1] if i else None

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
    """Events of join-reading groups, per key and group, while they are inside its windows."""

    __slots__ = ("by_key",)

    def __init__(self) -> None:
        self.by_key: dict[Any, dict[int, list[tuple[int, Any]]]] = {}

    def keep(self, key: Any, gid: int, t: int, ev: Any) -> None:
        self.by_key.setdefault(key, {}).setdefault(gid, []).append((t, ev))

    def events(self, key: Any, gid: int) -> list[tuple[int, Any]]:
        return self.by_key.get(key, {}).get(gid, [])

    def prune(self, key: Any, gid: int, before: int) -> None:
        """Drop events of the group stamped before `before` (they left every window)."""
        groups = self.by_key.get(key)
        if not groups or gid not in groups:
            return
        kept = [x for x in groups[gid] if x[0] >= before]
        if kept:
            groups[gid] = kept
        else:
            del groups[gid]
            if not groups:
                del self.by_key[key]

    def __len__(self) -> int:
        return sum(len(v) for g in self.by_key.values() for v in g.values())

