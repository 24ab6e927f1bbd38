"""Event validation: raw input (a JSON message, a file row) -> `Event` or `Rejected`.

Rules follow shared/spec/events.md. Every rejection carries a reason of the form
``"<code>: <human text>"``; the code (the part before the first colon, see `reason_code`)
is one of `REASON_CODES` and is stable, the text is for people and may change.

Decisions where the spec leaves room (each one is table-tested in tests/unit/test_validate.py):

- ``category``: the spec says it "may be empty for login events". An empty string is accepted
  for every event type (an empty category is not in the spec's list of rejections). A missing
  or null ``category`` is accepted as ``""`` only for ``login_ok`` / ``login_failed``; for
  ``view`` and ``purchase`` it is ``missing_field``.
- ``amount`` is required for every event type (the spec lists "missing field" as a rejection
  and gives no exemption). An ``int`` is accepted and converted to ``float``; ``bool`` is not
  a number. A non-zero amount on a non-purchase event is kept as given (not a listed rejection).
- A JSON ``null`` counts as a missing field (code ``missing_field``, text "... is null").
- ``event_id``: an ``int`` within int64 (the parquet column type) or a non-empty ``str``;
  ``bool``/``float`` are ``bad_type``. An empty ``event_id`` or ``user_id`` string is
  ``empty_field``.
- ``event_timestamp`` in JSON must be an ISO-8601 string with an offset (``Z``, ``+hh:mm``,
  ``+hh:mm:ss``); it is converted to UTC epoch microseconds. Fractional seconds beyond 6
  digits (e.g. nanosecond producers) are truncated to microseconds, not rejected. A date
  without a time or a time without an offset is ``naive_timestamp``. Other strings are
  ``bad_timestamp``; a non-string is ``bad_type``. In records (parquet rows) the timestamp
  may also be a tz-aware ``datetime`` / ``pandas.Timestamp``; naive ones are rejected.
- A timestamp more than ``max_future_us`` after ``now_us`` is ``future_timestamp``. The only
  lower bound is technical: a time before 1900-01-01 (`MIN_EVENT_US`) is ``bad_timestamp``
  (replays of old data are legitimate, but Feast's SQLite online store cannot write a row
  stamped in year 1, and such a failure would stop the whole flow).
- Unknown extra fields are ignored.
- JSON is decoded by ``orjson`` (4-5x the standard library per message); a payload it refuses
  is decoded again by ``json.loads``, whose result (or error) decides, so the rules above are
  the standard library's: ``NaN`` / ``Infinity`` tokens and integers beyond 64 bits (which
  orjson refuses) still get their own codes, not ``bad_json``.
- A string field holding a lone surrogate (a ``\\ud800`` escape, or CESU-style bytes that
  ``json.loads`` decodes with ``surrogatepass``) is not valid Unicode text: ``bad_json``.
  Accepting it would crash the flow later (UTF-8 encoding of the key for routing, Feast).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from feast_bytewax.features.schema import EventSchema
from feast_bytewax.ingest.timestamps import (
    EPOCH,
    MIN_EVENT_US,
    ONE_US,
    EpochUs,
    parse_timestamp_us,
    type_name,
)
from feast_bytewax.records import EVENT_FIELDS, EVENT_TYPES, Event, Rejected

__all__ = [
    "FIELDS",
    "REASON_CODES",
    "column_value",
    "from_record",
    "parse_json",
    "reject",
    "validate_item",
]

FIELDS = EVENT_FIELDS

REASON_CODES = frozenset(
    {
        "bad_json",  # payload is not valid JSON (or not valid UTF-8)
        "not_object",  # valid JSON but not an object
        "missing_field",  # a required field is absent or null
        "bad_type",  # a field has the wrong JSON type
        "empty_field",  # event_id or user_id is an empty string
        "unknown_event_type",  # event_type not in EVENT_TYPES
        "negative_amount",
        "non_finite_amount",  # NaN / Infinity / overflowing number
        "naive_timestamp",  # timestamp without a UTC offset
        "bad_timestamp",  # timestamp string that is not ISO-8601
        "future_timestamp",  # more than max_future_us after now
    }
)

_LOGIN_TYPES = frozenset({"login_ok", "login_failed"})
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_loads = json.loads
_fast_loads = orjson.loads
_FastError = orjson.JSONDecodeError
_isfinite = math.isfinite


def _as_text(payload: Any) -> str:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload).decode("utf-8", errors="replace")
    if isinstance(payload, dict):
        payload = {
            k: (EPOCH + v * ONE_US).isoformat() if type(v) is EpochUs else v
            for k, v in payload.items()
        }
    try:
        return json.dumps(payload, default=str, allow_nan=True)
    except (TypeError, ValueError):
        return repr(payload)


def reject(payload: Any, reason: str, origin: str) -> Rejected:
    """A rejection that keeps the payload: as text, and byte for byte when it was bytes."""
    if payload is None:
        return Rejected("", reason, origin, no_value=True)
    if isinstance(payload, bytes | bytearray | memoryview):
        raw = bytes(payload)
        return Rejected(raw.decode("utf-8", errors="replace"), reason, origin, raw=raw)
    return Rejected(_as_text(payload), reason, origin)


def _check_event_id(v: Any) -> str | None:
    t = type(v)
    if t is int:
        if _INT64_MIN <= v <= _INT64_MAX:
            return None
        return "bad_type: event_id int out of int64 range"
    if t is str:
        return None if v else "empty_field: event_id"
    # numpy / pandas integers from records are fine (bool is an Integral too: refuse it)
    if not isinstance(v, bool) and hasattr(v, "__index__") and not isinstance(v, float):
        return None
    return f"bad_type: event_id must be an int or a string, got {type_name(v)}"


def _utf8_ok(s: str) -> bool:
    """False for a str holding a lone surrogate (it cannot be encoded as UTF-8)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _slow_reject(rec: dict, now_us: int, max_future_us: int) -> str:
    """Find the (first) reason a record fails. Only called when the fast path failed."""
    for f in FIELDS:
        v = rec.get(f)
        if v is None:
            if f == "category" and rec.get("event_type") in _LOGIN_TYPES:
                continue
            return f"missing_field: {f}" + (" is null" if f in rec else "")
    for f in ("event_id", "user_id", "event_type", "category"):
        v = rec.get(f)
        if type(v) is str and not _utf8_ok(v):
            return f"bad_json: {f} is not valid Unicode (lone surrogate)"
    eid = rec["event_id"]
    r = _check_event_id(eid)
    if r:
        return r
    uid = rec["user_id"]
    if not isinstance(uid, str):
        return f"bad_type: user_id must be a string, got {type_name(uid)}"
    if not uid:
        return "empty_field: user_id"
    et = rec["event_type"]
    if not isinstance(et, str):
        return f"bad_type: event_type must be a string, got {type_name(et)}"
    if et not in EVENT_TYPES:
        return f"unknown_event_type: {et[:64]}"
    amt = rec["amount"]
    if isinstance(amt, bool) or not isinstance(amt, int | float):
        return f"bad_type: amount must be a number, got {type_name(amt)}"
    try:
        famt = float(amt)
    except OverflowError:
        return "non_finite_amount: amount overflows a float"
    if not _isfinite(famt):
        return f"non_finite_amount: amount is {famt}"
    if famt < 0:
        return f"negative_amount: amount {famt} < 0"
    cat = rec.get("category")
    if cat is not None and not isinstance(cat, str):
        return f"bad_type: category must be a string, got {type_name(cat)}"
    ts = parse_timestamp_us(rec["event_timestamp"])
    if type(ts) is not int:
        return ts
    if ts < MIN_EVENT_US:
        return (f"bad_timestamp: timestamp {str(rec['event_timestamp'])[:64]!r} is before "
                "1900-01-01 (implausibly old)")
    if ts - now_us > max_future_us:
        return (
            f"future_timestamp: timestamp {rec['event_timestamp']} is in the future "
            f"by {(ts - now_us) / 1e6:.0f} s (max {max_future_us / 1e6:.0f} s)"
        )
    return "bad_type: unclassified"  # pragma: no cover - fast path accepted it


def column_value(name: str, kind: str, v: Any) -> tuple[Any, str | None]:
    """(value, None) or (None, reason) for one declared extra column; null is allowed."""
    if v is None:
        return None, None
    if kind == "string":
        if type(v) is str and (v.isascii() or _utf8_ok(v)):
            return v, None
        if isinstance(v, str):
            return None, f"bad_json: {name} is not valid Unicode (lone surrogate)"
    elif kind == "int":
        if not isinstance(v, bool | float) and hasattr(v, "__index__"):
            i = int(v)
            if _INT64_MIN <= i <= _INT64_MAX:
                return i, None
            return None, f"bad_type: {name} int out of int64 range"
    elif kind == "double":
        if not isinstance(v, bool) and isinstance(v, int | float):
            try:
                f = float(v)
            except OverflowError:
                return None, f"non_finite_amount: {name} overflows a float"
            if _isfinite(f):
                return f, None
            return None, f"non_finite_amount: {name} is {f}"
    elif kind == "bool":
        if isinstance(v, bool):
            return v, None
    elif kind == "timestamp":
        us = parse_timestamp_us(v)
        return (us, None) if type(us) is int else (None, us.replace("event_timestamp", name))
    return None, f"bad_type: {name} must be {_KIND_TEXT.get(kind, kind)}, got {type_name(v)}"


_KIND_TEXT = {"string": "a string", "int": "an integer", "double": "a number",
              "bool": "a boolean", "timestamp": "an ISO-8601 timestamp"}


def _with_extra(ev: Event, rec: dict, extra: tuple[tuple[str, str], ...], payload: Any,
                origin: str) -> Event | Rejected:
    values: dict[str, Any] = {}
    get = rec.get
    for name, kind in extra:
        value, reason = column_value(name, kind, get(name))
        if reason is not None:
            return reject(payload, reason, origin)
        values[name] = value
    return Event(ev.event_id, ev.user_id, ev.event_type, ev.amount, ev.category,
                 ev.event_timestamp, origin, values)


def _validate(rec: dict, payload: Any, origin: str, now_us: int, max_future_us: int,
              extra: tuple[tuple[str, str], ...] = ()):
    ev = _validate_core(rec, payload, origin, now_us, max_future_us)
    if extra and type(ev) is Event:
        return _with_extra(ev, rec, extra, payload, origin)
    return ev


def _validate_core(rec: dict, payload: Any, origin: str, now_us: int, max_future_us: int):
    # Fast path: exact types, no exceptions raised for valid input.
    try:
        eid = rec["event_id"]
        uid = rec["user_id"]
        et = rec["event_type"]
        amt = rec["amount"]
        cat = rec.get("category")
        ts = rec["event_timestamp"]
    except KeyError:
        return reject(payload, _slow_reject(rec, now_us, max_future_us), origin)
    te = type(eid)
    ta = type(amt)
    if (
        ((te is str and eid) or (te is int and _INT64_MIN <= eid <= _INT64_MAX))
        and type(uid) is str
        and uid
        and type(et) is str
        and et in EVENT_TYPES
        and (ta is float or ta is int)
    ):
        if ta is int:
            try:
                amt = float(amt)
            except OverflowError:
                amt = math.inf
        if amt >= 0 and _isfinite(amt):
            if cat is None:
                cat = "" if et in _LOGIN_TYPES else None
            elif type(cat) is not str:
                cat = None
            if (
                cat is not None
                and (uid.isascii() or _utf8_ok(uid))
                and (cat.isascii() or _utf8_ok(cat))
                and (te is int or eid.isascii() or _utf8_ok(eid))
            ):
                us = parse_timestamp_us(ts)
                if type(us) is int and us >= MIN_EVENT_US and us - now_us <= max_future_us:
                    return Event(eid, uid, et, amt, cat, us, origin)
    # Slow path: lenient types (numpy ints from records) or a real rejection.
    reason = _slow_reject(rec, now_us, max_future_us)
    if reason.startswith("bad_type: unclassified"):
        # Valid except for non-builtin types (e.g. numpy.int64 event_id): normalise.
        us = parse_timestamp_us(ts)
        if not isinstance(eid, int | str):
            eid = int(eid)
        cat = cat if isinstance(cat, str) else ""
        return Event(eid, str(uid), str(et), float(amt), str(cat), us, origin)
    return reject(payload, reason, origin)


def parse_json(
    payload: bytes | str, origin: str, now_us: int, max_future_us: int,
    schema: EventSchema | None = None,
) -> Event | Rejected:
    """Parse and validate one JSON message.

    :arg payload: the raw message (UTF-8 bytes or str).
    :arg origin: where it came from (``topic/partition/offset`` or ``file:line``).
    :arg now_us: the current time, epoch microseconds UTC.
    :arg max_future_us: how far past `now_us` an event time may be.
    :arg schema: the declared extra columns to validate and keep (default: none).
    :returns: an `Event`, or a `Rejected` with the original payload (text, and bytes).
    """
    try:
        rec = _fast_loads(payload)
    except (_FastError, TypeError):
        rec = _stdlib_loads(payload, origin)
        if type(rec) is Rejected:
            return rec
    if type(rec) is not dict:
        return reject(
            payload, f"not_object: expected a JSON object, got {type_name(rec)}", origin
        )
    return _validate(rec, payload, origin, now_us, max_future_us, _extra(schema))


def _stdlib_loads(payload: Any, origin: str) -> Any:
    """What `json.loads` makes of a payload orjson refused: the value, or the rejection."""
    try:
        return _loads(payload)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        msg = str(e) if len(str(e)) < 120 else str(e)[:117] + "..."
        return reject(payload, f"bad_json: {msg}", origin)
    except TypeError as e:  # not bytes/str at all
        return reject(payload, f"bad_json: {e}", origin)


def _extra(schema: EventSchema | None) -> tuple[tuple[str, str], ...]:
    return schema.extra if schema is not None else ()


def from_record(rec: dict, origin: str, now_us: int, max_future_us: int,
                schema: EventSchema | None = None) -> Event | Rejected:
    """Validate one already-decoded record (a parquet row as a dict).

    Same rules as `parse_json`; additionally ``event_timestamp`` may be a tz-aware
    ``datetime`` or ``pandas.Timestamp`` (naive ones are rejected) and integer-like numpy
    scalars are accepted for ``event_id``. The `Rejected` payload is the record as JSON text.
    """
    if not isinstance(rec, dict):
        return reject(
            rec, f"not_object: expected a record, got {type_name(rec)}", origin
        )
    return _validate(rec, rec, origin, now_us, max_future_us, _extra(schema))


def validate_item(payload: Any, origin: str, now_us: int, max_future_us: int,
                  schema: EventSchema | None = None) -> Event | Rejected:
    """Dispatch a raw source item: ``str``/``bytes`` -> `parse_json`, ``dict`` -> `from_record`.

    Matches the ``(payload, origin)`` items of `feast_bytewax.ingest.files.EventFileSource`.
    """
    if isinstance(payload, dict):
        return _validate(payload, payload, origin, now_us, max_future_us, _extra(schema))
    return parse_json(payload, origin, now_us, max_future_us, schema)
