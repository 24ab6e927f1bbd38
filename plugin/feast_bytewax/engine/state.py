"""What every per-key group state offers the shard engine, and the members it aggregates.

A *group* is a set of features that share per-key state: sliding features with the same
filter and slide share panes (`engine.sliding`), session features with the same filter and
gap share sessions (`engine.sessions`). The engine never asks which kind it holds: both
states answer the same five questions, so adding a window kind is a new module, not a
branch in the release loop.

    add(group, ev, t) -> bool          fold an in-order event in; True when the next
                                       wake-up may have moved earlier
    correct(group, ev, t, now, lateness) -> bool
                                       apply a late-but-allowed event as of `now`; False
                                       when it is outside every window (nothing changed)
    expire(group, t, lateness)         a wake-up fired at t: drop what left the windows
    next_wakeup(group, now, lateness)  the next time the state changes without an event
    fill(group, vals, now)             write the members' values into the key's vector
    is_empty()                         nothing left to remember

Every state has a `timer_at` slot (the wake-up the engine scheduled, or None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feast_bytewax.features.aggregators import Aggregator


@dataclass(frozen=True, slots=True)
class Member:
    """One feature inside a group: its vector slot, aggregator, input getter, window, and
    the identity of the definition that produced it (recovery snapshots are keyed by it)."""

    slot: int
    agg: Aggregator
    get: Callable[[Any], Any]
    n_panes: int  # window / slide for sliding features; 0 for sessions
    identity: tuple = ()


class KeyState:
    """Per-key state: one slot per group (None until used) and the last row's vector handed
    downstream. The key's current vector is its open (held) row if it has one, else
    `emitted`: no second copy is kept (per-key memory is the scaling limit)."""

    __slots__ = ("emitted", "groups")

    def __init__(self, n_groups: int, empty: tuple) -> None:
        self.groups: list[Any] = [None] * n_groups
        self.emitted: tuple = empty
