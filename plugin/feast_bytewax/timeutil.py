"""Event time as integer microseconds since the Unix epoch, UTC.

The engine does all window arithmetic on ints: exact, fast, and free of timezone slips.
Datetimes appear only at the edges (parsing input, writing to Feast), always tz-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

US_PER_S = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(dt: datetime) -> int:
    """Aware datetime -> epoch microseconds. Naive datetimes are refused, never guessed."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()} has no UTC offset")
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def from_us(us: int) -> datetime:
    """Epoch microseconds -> aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def td_us(td: timedelta) -> int:
    """timedelta -> whole microseconds."""
    return (td.days * 86_400 + td.seconds) * US_PER_S + td.microseconds


def utc_now_us() -> int:
    """Wall clock in epoch microseconds (the default injectable clock)."""
    return to_us(datetime.now(UTC))
