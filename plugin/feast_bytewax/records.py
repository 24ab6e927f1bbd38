"""Typed records that flow between the dataflow steps.

Small slotted dataclasses: they are created per event, so their size and construction
cost matter. Field names of `Event` are the column names Feast `Aggregation`s and view
filters refer to (see shared/spec/events.md).
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_TYPES = frozenset({"view", "purchase", "login_failed", "login_ok"})


@dataclass(slots=True, frozen=True)
class Event:
    """A validated event. `event_timestamp` is epoch microseconds, UTC."""

    event_id: int | str
    user_id: str
    event_type: str
    amount: float
    category: str
    event_timestamp: int
    origin: str = ""


@dataclass(slots=True, frozen=True)
class Rejected:
    """Input that failed validation: the original payload, why, and where it came from."""

    payload: str
    reason: str
    origin: str


@dataclass(slots=True, frozen=True)
class Late:
    """A valid event older than the watermark minus the allowed lateness."""

    event: Event
    reason: str
    watermark: int


@dataclass(slots=True, frozen=True)
class FeatureRow:
    """One feature vector of one entity key, holding from `event_timestamp` (epoch us) on.

    `values` follow `EngineSpec.feature_names`. `cause` is `event`, `decay` (a pane left a
    window or a session expired) or `correction` (a late-but-allowed event was applied).
    """

    key: str
    event_timestamp: int
    values: tuple
    cause: str


@dataclass(slots=True, frozen=True)
class EndOfInput:
    """Control record: the finite input is exhausted; its newest valid event time is `max_ts`.

    Lets every shard close at the same final watermark whatever data it saw itself.
    """

    max_ts: int
