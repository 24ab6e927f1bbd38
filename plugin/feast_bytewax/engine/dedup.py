"""De-duplication by `event_id`, per key, within the allowed-lateness horizon.

shared/spec/features.md: a repeated `event_id` of the same key within the allowed-lateness
horizon is a duplicate: it is counted and changes no value. An id only needs remembering
while an event carrying it could still be applied: once its event time is older than
watermark - allowed lateness, a copy would be late anyway. So memory is bounded by the
events of that horizon; ids expire in arrival order (a late arrival behind newer ones is
kept a little longer, never forgotten early).
"""

from __future__ import annotations

from collections import deque
from typing import Any


class RecentIds:
    """(key, event_id) pairs seen within the horizon."""

    __slots__ = ("order", "seen")

    def __init__(self) -> None:
        self.seen: dict[tuple[Any, Any], int] = {}
        self.order: deque[tuple[int, tuple[Any, Any]]] = deque()

    def repeated(self, key: Any, event_id: Any, t: int) -> bool:
        """True if this (key, event_id) was seen; else remember it (at event time t)."""
        k = (key, event_id)
        if k in self.seen:
            return True
        self.seen[k] = t
        self.order.append((t, k))
        return False

    def expire(self, horizon: int) -> None:
        """Forget ids whose event time is before `horizon` (watermark - allowed lateness)."""
        order, seen = self.order, self.seen
        while order and order[0][0] < horizon:
            t, k = order.popleft()
            if seen.get(k) == t:
                del seen[k]

    def __len__(self) -> int:
        return len(self.seen)

    def __getstate__(self) -> tuple:
        return (self.seen, list(self.order))

    def __setstate__(self, s: tuple) -> None:
        self.seen, order = s
        self.order = deque(order)
