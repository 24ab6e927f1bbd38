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


DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1.5h``, ``2d`` -> seconds (> 0): what a cron line reads."""
    t = text.strip().lower()
    unit = t[-1:] if t[-1:].isalpha() else ""
    try:
        seconds = float(t[:len(t) - len(unit)]) * DURATION_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 1h, 2d)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"duration {text!r} must be > 0")
    return seconds


def parse_instant(text: str, before_us: int) -> int:
    """An instant written as ISO-8601 with an offset, or as a duration counted back from
    `before_us` (``15m`` = 15 minutes before it): one option serves a cron line and a fixed
    window. Epoch microseconds."""
    try:
        return before_us - round(parse_duration(text) * US_PER_S)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (15m, 1h) nor an ISO-8601 time"
                         ) from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{text!r} has no UTC offset (add Z or +00:00)")
    return to_us(dt)
