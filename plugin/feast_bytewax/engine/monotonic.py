"""Monotonic candidate queues for min/max over sliding windows.

A window's min or max only needs the panes that could still become the answer: a value is
dropped as soon as a newer one at least as good arrives (it leaves the window later and wins
every comparison until then). For random data that is a handful of entries, so a 24 h max
costs a few dozen bytes per key instead of a pane per minute of activity.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from feast_bytewax.features.aggregators import Aggregator


class MonoQueue(list):
    """A monotonic candidate queue `[q0, v0, q1, v1, ...]` (its own type, so a state can tell
    it from list-shaped IRs such as Sum's `[sum, n]`)."""

    __slots__ = ()


def mono_push(dq: list, q: int, x: Any, agg: Aggregator) -> bool:
    """Add value x of the newest pane q to a monotonic queue `[q0, v0, q1, v1, ...]` (panes
    ascending, each value strictly better than every later one). True if it was empty."""
    if x is None or x != x:
        return False
    was_empty = not dq
    while dq and agg.merge(dq[-1], x) == x:  # an older candidate x is at least as good as
        del dq[-2:]
    if not dq or dq[-2] != q:  # else the same pane already holds a better value
        dq += (q, x)
    return was_empty


def mono_insert(dq: list, q: int, x: Any, agg: Aggregator) -> None:
    """Add a late value x of an older pane q, keeping the queue monotonic."""
    if x is None or x != x:
        return
    j = bisect_left(dq[0::2], q)
    if 2 * j < len(dq):
        best_newer = dq[2 * j + 1]
        if agg.merge(best_newer, x) == best_newer:
            return  # a candidate at least as new and as good exists: x never wins
        if dq[2 * j] == q:
            dq[2 * j + 1] = x
        else:
            dq[2 * j:2 * j] = (q, x)
    else:
        dq += (q, x)
    k = 2 * j
    while k >= 2 and agg.merge(dq[k - 1], x) == x:  # older candidates x now dominates
        del dq[k - 2:k]
        k -= 2
