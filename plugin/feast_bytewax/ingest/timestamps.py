"""Event times: what the sources hand over (an ISO-8601 string, an aware datetime, or
`EpochUs`) -> UTC epoch microseconds, or a rejection reason.

Apart from `ingest.validate` because table versions (`ingest.tables`) and the archive
inventory (`ingest.inventory`) read times by the same rules without being events. The rules
(shared/spec/events.md, decisions in `ingest.validate`'s docstring): an offset is required
(``naive_timestamp``), fractions beyond microseconds are truncated, a time before 1900 is
``bad_timestamp`` (`MIN_EVENT_US`: Feast's SQLite store cannot write year 1).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
MIN_EVENT_US = -2_208_988_800_000_000  # 1900-01-01T00:00:00Z
_fromisoformat = datetime.fromisoformat


class EpochUs(int):
    """An event time already known to be UTC epoch microseconds.

    Sources that read a tz-aware typed timestamp column (parquet ``timestamp[unit, tz]``)
    hand the instant over as this int subclass instead of a ``datetime``: building
    datetimes in pyarrow costs ~7 us per row, this costs ~0.1 us. A plain ``int`` is still
    ``bad_type`` (an epoch number of unknown unit is not an accepted timestamp).
    """

    __slots__ = ()


def type_name(v: Any) -> str:
    """The JSON-ish name of a value's type for a rejection text (`null` for None)."""
    if v is None:
        return "null"
    return type(v).__name__


def parse_timestamp_us(value: Any) -> int | str:
    """ISO-8601 string / aware datetime -> UTC epoch us, or a rejection reason string.

    Returns an ``int`` on success and a ``str`` reason on failure (no exceptions on the
    hot path).
    """
    if type(value) is EpochUs:
        return int(value)
    if type(value) is str:
        try:
            dt = _fromisoformat(value)
        except ValueError as e:
            return f"bad_timestamp: {value[:64]!r} is not ISO-8601 ({e})"
        if dt.tzinfo is None:
            return f"naive_timestamp: {value[:64]!r} has no UTC offset"
        return (dt - EPOCH) // ONE_US
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            return f"naive_timestamp: {str(value)[:64]!r} has no UTC offset"
        ns = getattr(value, "value", None)  # pandas.Timestamp: exact epoch nanoseconds
        if type(ns) is int:
            return ns // 1000
        return (value - EPOCH) // ONE_US
    return f"bad_type: event_timestamp must be an ISO-8601 string, got {type_name(value)}"
