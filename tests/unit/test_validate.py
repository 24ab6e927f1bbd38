"""Table-driven tests of event validation (shared/spec/events.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feast_bytewax.ingest import validate
from feast_bytewax.ingest.validate import REASON_CODES, from_record, parse_json
from feast_bytewax.records import Event, Rejected, reason_code
from feast_bytewax.timeutil import to_us

NOW = to_us(datetime(2026, 11, 2, tzinfo=UTC))
HOUR = 3_600_000_000
T0 = "2026-11-01T08:30:00.123456+00:00"
T0_US = to_us(datetime(2026, 11, 1, 8, 30, 0, 123456, tzinfo=UTC))

GOOD = {
    "event_id": 42,
    "user_id": "u1",
    "event_type": "purchase",
    "amount": 12.5,
    "category": "books",
    "event_timestamp": T0,
}


def js(**over) -> str:
    d = dict(GOOD)
    for k, v in over.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d)


_DROP = object()

# (id, payload, expected reason code)
REJECT_CASES = [
    ("empty", "", "bad_json"),
    ("garbage", "not json", "bad_json"),
    ("truncated", js()[:-5], "bad_json"),
    ("bad_utf8", b'{"event_id": "\xff\xfe"}', "bad_json"),
    ("array", "[1, 2]", "not_object"),
    ("string", '"hello"', "not_object"),
    ("null", "null", "not_object"),
    ("missing_event_id", js(event_id=_DROP), "missing_field"),
    ("missing_user_id", js(user_id=_DROP), "missing_field"),
    ("missing_event_type", js(event_type=_DROP), "missing_field"),
    ("missing_amount", js(amount=_DROP), "missing_field"),
    ("missing_amount_login", js(event_type="login_ok", amount=_DROP), "missing_field"),
    ("missing_category_view", js(event_type="view", category=_DROP), "missing_field"),
    ("null_category_purchase", js(category=None), "missing_field"),
    ("missing_timestamp", js(event_timestamp=_DROP), "missing_field"),
    ("null_amount", js(amount=None), "missing_field"),
    ("null_user", js(user_id=None), "missing_field"),
    ("event_id_bool", js(event_id=True), "bad_type"),
    ("event_id_float", js(event_id=1.5), "bad_type"),
    ("event_id_list", js(event_id=[1]), "bad_type"),
    ("event_id_too_big", js(event_id=2**70), "bad_type"),
    ("event_id_empty", js(event_id=""), "empty_field"),
    ("user_id_int", js(user_id=7), "bad_type"),
    ("user_id_empty", js(user_id=""), "empty_field"),
    ("event_type_int", js(event_type=3), "bad_type"),
    ("event_type_list", js(event_type=["view"]), "bad_type"),
    ("event_type_click", js(event_type="click"), "unknown_event_type"),
    ("event_type_case", js(event_type="VIEW"), "unknown_event_type"),
    ("amount_str", js(amount="12.5"), "bad_type"),
    ("amount_bool", js(amount=True), "bad_type"),
    ("amount_negative", js(amount=-0.01), "negative_amount"),
    ("amount_negative_int", js(amount=-3), "negative_amount"),
    ("amount_nan", js(amount=float("nan")), "non_finite_amount"),
    ("amount_inf", js(amount=float("inf")), "non_finite_amount"),
    ("amount_huge_int", js(amount=10**400), "non_finite_amount"),
    ("category_int", js(category=5), "bad_type"),
    ("category_int_login", js(event_type="login_ok", category=5), "bad_type"),
    ("ts_naive", js(event_timestamp="2026-11-01T08:30:00"), "naive_timestamp"),
    ("ts_date_only", js(event_timestamp="2026-11-01"), "naive_timestamp"),
    ("ts_garbage", js(event_timestamp="yesterday"), "bad_timestamp"),
    ("ts_bad_hour", js(event_timestamp="2026-11-01T25:00:00Z"), "bad_timestamp"),
    ("ts_epoch_number", js(event_timestamp=1793521800), "bad_type"),
    ("ts_future", js(event_timestamp="2026-11-02T02:00:00Z"), "future_timestamp"),
    ("ts_far_future", js(event_timestamp="2126-11-01T00:00:00Z"), "future_timestamp"),
]


@pytest.mark.parametrize(
    ("payload", "code"), [c[1:] for c in REJECT_CASES], ids=[c[0] for c in REJECT_CASES]
)
def test_rejections(payload, code):
    r = parse_json(payload, "f.jsonl:7", NOW, HOUR)
    assert isinstance(r, Rejected), r
    assert reason_code(r.reason) == code, r.reason
    assert r.reason.startswith(code + ":")
    assert len(r.reason) > len(code) + 2  # carries human text
    assert r.origin == "f.jsonl:7"
    expected_text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    assert r.payload == expected_text  # the original payload, as text


def test_every_reason_code_is_covered():
    assert {c[2] for c in REJECT_CASES} == set(REASON_CODES)


ACCEPT_CASES = [
    # (id, overrides, expected (event_id, event_type, amount, category, ts_us))
    ("plain", {}, (42, "purchase", 12.5, "books", T0_US)),
    (
        "z_suffix",
        {"event_timestamp": "2026-11-01T08:30:00.123456Z"},
        (42, "purchase", 12.5, "books", T0_US),
    ),
    (
        "offset_0530",
        {"event_timestamp": "2026-11-01T14:00:00.123456+05:30"},
        (42, "purchase", 12.5, "books", T0_US),
    ),
    (
        "offset_neg",
        {"event_timestamp": "2026-11-01T01:30:00.123456-07:00"},
        (42, "purchase", 12.5, "books", T0_US),
    ),
    (
        "millis",
        {"event_timestamp": "2026-11-01T08:30:00.123Z"},
        (42, "purchase", 12.5, "books", T0_US - 456),
    ),
    (
        "no_fraction",
        {"event_timestamp": "2026-11-01T08:30:00Z"},
        (42, "purchase", 12.5, "books", T0_US - 123456),
    ),
    (
        "nanos_truncated",
        {"event_timestamp": "2026-11-01T08:30:00.123456789Z"},
        (42, "purchase", 12.5, "books", T0_US),
    ),
    ("int_amount", {"amount": 3}, (42, "purchase", 3.0, "books", T0_US)),
    ("zero_amount", {"amount": 0}, (42, "purchase", 0.0, "books", T0_US)),
    ("str_event_id", {"event_id": "evt-9"}, ("evt-9", "purchase", 12.5, "books", T0_US)),
    ("negative_int_event_id", {"event_id": -5}, (-5, "purchase", 12.5, "books", T0_US)),
    (
        "empty_category_login",
        {"event_type": "login_ok", "amount": 0, "category": ""},
        (42, "login_ok", 0.0, "", T0_US),
    ),
    (
        "missing_category_login",
        {"event_type": "login_failed", "amount": 0, "category": _DROP},
        (42, "login_failed", 0.0, "", T0_US),
    ),
    (
        "null_category_login",
        {"event_type": "login_ok", "amount": 0, "category": None},
        (42, "login_ok", 0.0, "", T0_US),
    ),
    (
        "empty_category_view",
        {"event_type": "view", "amount": 0, "category": ""},
        (42, "view", 0.0, "", T0_US),
    ),
    ("extra_field", {"session": "abc"}, (42, "purchase", 12.5, "books", T0_US)),
    (
        "future_within_bound",
        {"event_timestamp": "2026-11-02T00:59:59Z"},
        (42, "purchase", 12.5, "books", NOW + HOUR - 1_000_000),
    ),
    (
        "old_event",
        {"event_timestamp": "1999-12-31T23:59:59+00:00"},
        (42, "purchase", 12.5, "books", to_us(datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC))),
    ),
]


@pytest.mark.parametrize(
    ("over", "expected"), [c[1:] for c in ACCEPT_CASES], ids=[c[0] for c in ACCEPT_CASES]
)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_accepted(over, expected, as_bytes):
    payload = js(**over)
    if as_bytes:
        payload = payload.encode()
    ev = parse_json(payload, "t/0/5", NOW, HOUR)
    assert isinstance(ev, Event), ev
    assert (ev.event_id, ev.event_type, ev.amount, ev.category, ev.event_timestamp) == expected
    assert type(ev.amount) is float
    assert ev.user_id == "u1" and ev.origin == "t/0/5"


def test_future_boundary_is_inclusive():
    exactly = datetime(2026, 11, 2, 1, tzinfo=UTC).isoformat()
    assert isinstance(parse_json(js(event_timestamp=exactly), "o", NOW, HOUR), Event)
    past = (datetime(2026, 11, 2, 1, tzinfo=UTC) + timedelta(microseconds=1)).isoformat()
    r = parse_json(js(event_timestamp=past), "o", NOW, HOUR)
    assert isinstance(r, Rejected) and reason_code(r.reason) == "future_timestamp"
    assert "in the future" in r.reason


def test_specific_reason_texts():
    r = parse_json(js(amount=_DROP), "o", NOW, HOUR)
    assert r.reason == "missing_field: amount"
    r = parse_json(js(amount="x"), "o", NOW, HOUR)
    assert r.reason == "bad_type: amount must be a number, got str"
    r = parse_json(js(event_type="click"), "o", NOW, HOUR)
    assert r.reason == "unknown_event_type: click"
    r = parse_json("", "o", NOW, HOUR)
    assert r.reason.startswith("bad_json: Expecting value")


# --- records (parquet rows) --------------------------------------------------------------


def rec(**over) -> dict:
    d = dict(GOOD, event_timestamp=datetime(2026, 11, 1, 8, 30, 0, 123456, tzinfo=UTC))
    d.update(over)
    return d


RECORD_CASES = [
    ("aware_utc", rec(), T0_US),
    (
        "aware_offset",
        rec(
            event_timestamp=datetime(
                2026, 11, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))
            )
        ),
        T0_US,
    ),
    ("pandas_ts", rec(event_timestamp=pd.Timestamp("2026-11-01T08:30:00.123456789Z")), T0_US),
    (
        "pandas_ts_paris",
        rec(event_timestamp=pd.Timestamp("2026-11-01T09:30:00.123456", tz="Europe/Paris")),
        T0_US,
    ),
    ("iso_string", rec(event_timestamp=T0), T0_US),
    ("numpy_int_id", rec(event_id=np.int64(42)), T0_US),
    ("numpy_float_amount", rec(amount=np.float64(12.5)), T0_US),
]


@pytest.mark.parametrize(
    ("r", "ts"), [c[1:] for c in RECORD_CASES], ids=[c[0] for c in RECORD_CASES]
)
def test_record_accepted(r, ts):
    ev = from_record(r, "p.parquet:3", NOW, HOUR)
    assert isinstance(ev, Event), ev
    assert ev.event_timestamp == ts
    assert ev.event_id == 42 and type(ev.event_id) is int
    assert ev.amount == 12.5 and type(ev.amount) is float


RECORD_REJECTS = [
    ("naive_datetime", rec(event_timestamp=datetime(2026, 11, 1, 8, 30)), "naive_timestamp"),
    ("naive_pandas", rec(event_timestamp=pd.Timestamp("2026-11-01T08:30")), "naive_timestamp"),
    ("numpy_datetime64", rec(event_timestamp=np.datetime64("2026-11-01T08:30")), "bad_type"),
    ("null_ts", rec(event_timestamp=None), "missing_field"),
    ("nan_amount", rec(amount=float("nan")), "non_finite_amount"),
    ("bool_id", rec(event_id=True), "bad_type"),
    ("numpy_bool_id", rec(event_id=np.bool_(True)), "bad_type"),
    ("not_a_dict", [1, 2], "not_object"),
]


@pytest.mark.parametrize(
    ("r", "code"), [c[1:] for c in RECORD_REJECTS], ids=[c[0] for c in RECORD_REJECTS]
)
def test_record_rejected(r, code):
    out = from_record(r, "p.parquet:3", NOW, HOUR)
    assert isinstance(out, Rejected), out
    assert reason_code(out.reason) == code, out.reason
    assert out.origin == "p.parquet:3"
    if isinstance(r, dict):
        json.loads(out.payload)  # the record, as JSON text


def test_validation_speed_smoke():
    """Loose guard (the real figure is ~4 us/event): catches an accidental 10x slowdown."""
    import time

    line = js()
    n = 20_000
    t = time.perf_counter()
    for _ in range(n):
        parse_json(line, "o", NOW, HOUR)
    per_event = (time.perf_counter() - t) / n
    assert per_event < 50e-6


# -- orjson first, the standard library on refusal: the same results -----------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers()
    | st.integers(min_value=2**63, max_value=2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)
_fields = st.fixed_dictionaries(
    {}, optional={"event_id": st.integers(-5, 2**64) | st.text(max_size=3) | st.floats(),
                  "user_id": st.text(max_size=3) | st.integers(0, 3),
                  "event_type": st.sampled_from(["view", "purchase", "login_ok", "x"]),
                  "amount": st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
                  "category": st.text(max_size=3) | st.none(),
                  "event_timestamp": st.sampled_from(
                      ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "junk", "2026-01-01"])
                  | st.integers()}) | _json_values


@settings(max_examples=400, deadline=None)
@given(value=_fields, garble=st.sampled_from(["", "x", "}", "\ufeff"]),
       encoding=st.sampled_from(["utf-8", "utf-16", "str"]), surrogate=st.booleans())
def test_orjson_decoding_gives_what_the_standard_library_gives(value, garble, encoding,
                                                              surrogate):
    """`parse_json` decodes with orjson and falls back to `json.loads` when orjson refuses:
    every payload (NaN, > 64-bit ints, lone surrogates, UTF-16, BOMs, garbage) gets the event
    or the rejection code the standard library alone gives."""
    text = json.dumps(value)
    if surrogate and text.startswith("{") and len(text) > 2:
        text = text[:1] + '"s": "\\ud800", ' + text[1:]
    text = garble + text if garble == "\ufeff" else text + garble
    payload = text if encoding == "str" else text.encode(encoding, "surrogatepass")
    now = to_us(datetime(2026, 1, 1, tzinfo=UTC))
    fast = parse_json(payload, "o", now, 300_000_000)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(validate, "_fast_loads", _refuse)
        slow = parse_json(payload, "o", now, 300_000_000)
    if type(slow) is Event:
        assert fast == slow
    else:
        assert type(fast) is Rejected and fast.code == slow.code, (fast, slow)


def _refuse(payload):
    raise orjson.JSONDecodeError("refused", "", 0)
