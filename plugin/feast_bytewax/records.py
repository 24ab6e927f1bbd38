"""Typed records that flow between the dataflow steps, and their dead-letter form.

Small slotted dataclasses: they are created per event, so their size and construction
cost matter. Field names of `Event` are the column names Feast `Aggregation`s and view
filters refer to (see shared/spec/events.md); columns beyond the spec's six (declared in the
event stream's schema, see `feast_bytewax.features.schema`) ride in `Event.extra`, and
`column_getter` reads either kind the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

# FeatureRow.cause of the rows of the provisional engine (`engine.provisional`): online only
PROVISIONAL = "provisional"
EVENT_TYPES = frozenset({"view", "purchase", "login_failed", "login_ok"})
EVENT_FIELDS = ("event_id", "user_id", "event_type", "amount", "category", "event_timestamp")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def pickled_by_fields(cls: type) -> type:
    """Pickle a slotted dataclass as ``(cls, field values)``. Records are pickled whenever
    they cross Bytewax's exchange between processes and in every recovery snapshot of the
    events a shard holds; the default path for slotted dataclasses (copyreg and a state
    dict) made a 2-process exchange of 400k events 1.5x slower (bench/RESULTS.md,
    *Batched exchange*)."""
    args = attrgetter(*(f.name for f in fields(cls)))

    def __reduce__(self):
        return (cls, args(self))

    cls.__reduce__ = __reduce__
    return cls


def unbatch(values: Iterable[Any]) -> list[Any]:
    """The records of a sink's batch. The dataflow exchanges one list per shard and upstream
    batch instead of one item per record (`dataflow.flow`: the per-item cost of Bytewax's
    exchange was most of a 2-process run's), so a sink gets lists; a record on its own (a
    rejected input, a caller outside the dataflow) passes as it is."""
    out: list[Any] = []
    for v in values:
        if type(v) is list:
            out.extend(v)
        else:
            out.append(v)
    return out


@pickled_by_fields
@dataclass(slots=True)
class Event:
    """A validated event. `event_timestamp` is epoch microseconds, UTC. `extra` holds the
    declared extra columns (None when the schema has none).

    `part` and `frontier` are set by the source that read it (`ingest.partitions`): the index
    of its input partition and that partition's event-time frontier once this event was read
    (-1 / None for events made elsewhere: the engine then treats them as one partition).
    Events are not mutated after that.
    """

    event_id: int | str
    user_id: str
    event_type: str
    amount: float
    category: str
    event_timestamp: int
    origin: str = ""
    extra: Mapping[str, Any] | None = None
    part: int = -1
    frontier: int | None = None
    # set by the shard engine (`engine.joins`): joined view -> (valid_from, values) of the
    # version this event was applied with
    joined: dict[str, tuple[int, Mapping[str, Any]] | None] | None = None


def column_getter(column: str) -> Callable[[Event], Any]:
    """A fast reader of one event column, a spec field or a declared extra column (missing
    extra values read as None, which every aggregator skips)."""
    if column in EVENT_FIELDS:
        return attrgetter(column)

    def extra(ev: Event) -> Any:
        values = ev.extra
        return None if values is None else values.get(column)

    return extra


@pickled_by_fields
@dataclass(slots=True)
class TableVersion:
    """A version of a row of a Feast view that events join as of their time: valid from
    `valid_from` (epoch us) on, for entity key `key`. `part` / `frontier` as on `Event`."""

    view: str
    key: str
    valid_from: int
    values: Mapping[str, Any]
    origin: str = ""
    part: int = -1
    frontier: int | None = None

    @property
    def event_timestamp(self) -> int:  # the time the watermark rules apply to
        return self.valid_from


@pickled_by_fields
@dataclass(slots=True, frozen=True)
class Rejected:
    """Input that failed validation: the payload, why, and where it came from.

    `payload` is the original as text (records as JSON text). `raw` is the exact bytes when
    the source delivered bytes (a Kafka value, a JSON line), so a dead letter can carry them
    byte for byte; `no_value` marks a message without any value (a Kafka tombstone).
    """

    payload: str
    reason: str
    origin: str
    raw: bytes | None = None
    no_value: bool = False

    @property
    def code(self) -> str:
        return reason_code(self.reason)


@pickled_by_fields
@dataclass(slots=True, frozen=True)
class Late:
    """A valid event (or table version) older than the watermark minus the allowed
    lateness."""

    event: Event | TableVersion
    reason: str
    watermark: int

    @property
    def origin(self) -> str:
        return self.event.origin

    @property
    def code(self) -> str:
        return reason_code(self.reason)


@pickled_by_fields
@dataclass(slots=True, frozen=True)
class FeatureRow:
    """One feature vector of one entity key, holding from `event_timestamp` (epoch us) on.

    `values` follow `EngineSpec.feature_names`. `cause` is `event`, `decay` (a pane left a
    window or a session expired), `correction` (a late-but-allowed event was applied) or
    `seed` (the value at the start of a range replay); `provisional` rows come from the
    provisional engine (`engine.provisional`) and go online only.
    """

    key: str
    event_timestamp: int
    values: tuple
    cause: str


@pickled_by_fields
@dataclass(slots=True, frozen=True)
class Mark:
    """Control record: the progress of input partition `part` (its index in the source's
    sorted partition list), sent to every shard in order with that partition's events.

    `frontier` is the newest event time the partition has read (in a live run, while it is
    idle, advanced by its idle wall-clock time); `state` is `active`, `idle` (read nothing
    for the idle timeout: it stops holding the watermark back) or `done` (finite input read).
    """

    part: int
    frontier: int | None
    state: str


def reason_code(reason: str) -> str:
    """The stable code of a rejection or lateness reason (the text before the first colon)."""
    return reason.split(":", 1)[0]


def iso_us(us: int) -> str:
    """Epoch microseconds as an ISO-8601 UTC string."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat()


def event_payload(e: Event) -> dict[str, Any]:
    """An event as the JSON object the validator accepts (ISO-8601 UTC time): what a late
    dead letter carries, so it can be fed back as it is."""
    out: dict[str, Any] = {
        "event_id": e.event_id, "user_id": e.user_id, "event_type": e.event_type,
        "amount": e.amount, "category": e.category, "event_timestamp": iso_us(e.event_timestamp),
    }
    if e.extra:
        out.update(e.extra)
    return out


def dead_letter_record(x: Rejected | Late) -> dict[str, Any]:
    """The JSON object written for one dead letter (file lines, Kafka late envelopes)."""
    if isinstance(x, Rejected):
        return {"kind": "rejected", "code": x.code, "reason": x.reason, "origin": x.origin,
                "payload": x.payload}
    if isinstance(x, Late) and isinstance(x.event, TableVersion):
        v = x.event
        return {"kind": "late_version", "code": x.code, "reason": x.reason, "origin": x.origin,
                "watermark": x.watermark, "watermark_iso": iso_us(x.watermark),
                "payload": {"view": v.view, "key": v.key, "valid_from": iso_us(v.valid_from),
                            "values": dict(v.values)}}
    if isinstance(x, Late):
        return {"kind": "late", "code": x.code, "reason": x.reason, "origin": x.origin,
                "watermark": x.watermark, "watermark_iso": iso_us(x.watermark),
                "payload": event_payload(x.event)}
    raise TypeError(f"dead letters are Rejected or Late, got {type(x).__name__}")
