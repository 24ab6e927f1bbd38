"""ShardEngine against the brute-force reference (tests/reference.py), row for row.

Random streams (Hypothesis) with jitter inside the watermark delay, events behind the
watermark but within the allowed lateness (corrections), and events beyond it (late).
Amounts are whole numbers so sums and means are exact and change points compare exactly.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.features.spec import FeatureSpec
from feast_bytewax.records import Event, FeatureRow, Late
from tests import reference as ref

MIN = 60_000_000
BASE = 1_763_000_000_000_000 // MIN * MIN  # a pane boundary
SPEC = ref.shipped_spec()

# A second spec exercising what the shipped one does not: sum, min, tumbling, multi-value
# filters, distinct counts in a sliding window, a session mean.
_EXTRA = (
    FeatureSpec("sum_amount_5m", "x", "sum", "amount", "sliding", 5 * MIN, MIN,
                (("event_type", frozenset({"purchase"})),), "float64"),
    FeatureSpec("min_amount_7m", "x", "min", "amount", "sliding", 7 * MIN, MIN,
                (("event_type", frozenset({"purchase"})),), "float64"),
    FeatureSpec("logins_tumbling_10m", "x", "count", "event_id", "sliding", 10 * MIN, 10 * MIN,
                (("event_type", frozenset({"login_ok", "login_failed"})),), "int64"),
    FeatureSpec("categories_15m", "x", "count_distinct", "category", "sliding", 15 * MIN, 5 * MIN,
                (), "int64"),
    FeatureSpec("session_mean", "y", "mean", "amount", "session", 4 * MIN, 0,
                (("event_type", frozenset({"purchase", "view"})),), "float64"),
)
EXTRA_SPEC = replace(SPEC, features=_EXTRA, views=("x", "y"))

EVENT_TYPES = ["view", "purchase", "login_failed", "login_ok"]


@st.composite
def streams(draw, max_events: int = 120):
    """(events in arrival order, delay, lateness). Times cluster on pane boundaries."""
    n = draw(st.integers(1, max_events))
    users = draw(st.integers(1, 4))
    delay = draw(st.sampled_from([0, 5_000_000, 90_000_000]))
    lateness = draw(st.sampled_from([0, 3 * MIN, 40 * MIN]))
    events = []
    for i in range(n):
        minute = draw(st.integers(0, 180))
        offset = draw(st.sampled_from([0, 0, 1, 59_999_999, 30_000_000]))
        et = draw(st.sampled_from(EVENT_TYPES))
        events.append({
            "event_id": i,
            "user_id": f"u{draw(st.integers(0, users - 1))}",
            "event_type": et,
            "amount": float(draw(st.integers(0, 50))) if et == "purchase" else 0.0,
            "category": draw(st.sampled_from(["a", "b", "c", ""])),
            "event_timestamp": BASE + minute * MIN + offset,
        })
    # Arrival order: by event time plus a random lag; a few events arrive very late.
    lags = [draw(st.sampled_from([0, 0, 1_000_000, 60_000_000, 20 * MIN, 60 * MIN]))
            for _ in events]
    order = sorted(range(n), key=lambda i: (events[i]["event_timestamp"] + lags[i], i))
    return [events[i] for i in order], delay, lateness


def to_event(e: dict) -> Event:
    return Event(e["event_id"], e["user_id"], e["event_type"], e["amount"], e["category"],
                 e["event_timestamp"], "test")


def run_engine(spec, arrived, delay, lateness, batch=7):
    eng = ShardEngine(spec, EngineConfig(watermark_delay=delay, allowed_lateness=lateness))
    out = []
    evs = [to_event(e) for e in arrived]
    for i in range(0, len(evs), batch):
        out += eng.ingest(evs[i:i + batch])
    out += eng.finish()
    return eng, out


def rows_by_key(out) -> dict[str, list[tuple[int, tuple]]]:
    got: dict[str, list[tuple[int, tuple]]] = {}
    for r in out:
        if isinstance(r, FeatureRow):
            got.setdefault(r.key, []).append((r.event_timestamp, r.values))
    return got


def check_against_reference(spec, arrived, delay, lateness, batch=7):
    eng, out = run_engine(spec, arrived, delay, lateness, batch)
    visible, late_idx = ref.arrival_model(arrived, delay, lateness)
    kept = [e for i, e in enumerate(arrived) if i not in late_idx]
    end = max(e["event_timestamp"] for e in kept)
    expected = ref.expected_rows(spec, arrived, end, visible)
    got = rows_by_key(out)
    assert got == expected
    late = [r for r in out if isinstance(r, Late)]
    want_late = sorted(arrived[i]["event_id"] for i in late_idx)
    assert sorted(r.event.event_id for r in late) == want_late
    assert eng.counts["processed"] + eng.counts["late"] == len(arrived)
    for rows in got.values():
        stamps = [t for t, _ in rows]
        assert stamps == sorted(set(stamps)), "row timestamps must strictly increase per key"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_shipped_features_match_reference(case):
    arrived, delay, lateness = case
    check_against_reference(SPEC, arrived, delay, lateness)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_extra_functions_and_windows_match_reference(case):
    arrived, delay, lateness = case
    check_against_reference(EXTRA_SPEC, arrived, delay, lateness)


@settings(max_examples=40, deadline=None)
@given(streams(max_events=60), st.integers(1, 50))
def test_batch_boundaries_do_not_change_rows(case, batch):
    arrived, delay, lateness = case
    _, a = run_engine(SPEC, arrived, delay, lateness, batch=1)
    _, b = run_engine(SPEC, arrived, delay, lateness, batch=batch)
    assert rows_by_key(a) == rows_by_key(b)


@settings(max_examples=40, deadline=None)
@given(streams(max_events=80), st.integers(1, 79))
def test_snapshot_restore_mid_stream_is_exact(case, cut):
    """Resume from a snapshot taken mid-stream: the rows are those of an unbroken run."""
    arrived, delay, lateness = case
    cut = min(cut, len(arrived))
    cfg = EngineConfig(watermark_delay=delay, allowed_lateness=lateness)
    evs = [to_event(e) for e in arrived]
    first = ShardEngine(SPEC, cfg)
    out = first.ingest(evs[:cut])
    resumed = ShardEngine(SPEC, cfg, first.snapshot())
    out += resumed.ingest(evs[cut:]) + resumed.finish()
    _, whole = run_engine(SPEC, arrived, delay, lateness, batch=len(arrived))
    assert rows_by_key(out) == rows_by_key(whole)


def test_idle_key_decays_without_new_events():
    """A user who stops buying sees purchase_count_30m fall to 0 exactly when the pane
    leaves the window, stamped with that boundary, driven by other keys' events."""
    t0 = BASE + 10 * MIN + 5_000_000
    arrived = [
        {"event_id": 1, "user_id": "buyer", "event_type": "purchase", "amount": 10.0,
         "category": "x", "event_timestamp": t0},
        {"event_id": 2, "user_id": "other", "event_type": "view", "amount": 0.0,
         "category": "x", "event_timestamp": t0 + 25 * 3600 * 1_000_000},
    ]
    _, out = run_engine(SPEC, arrived, 0, 0)
    rows = rows_by_key(out)["buyer"]
    names = SPEC.feature_names
    count = names.index("purchase_count_30m")
    mean = names.index("avg_amount_1h")
    mx = names.index("max_amount_24h")
    boundary = BASE + 10 * MIN
    assert rows[0] == (t0, rows[0][1]) and rows[0][1][count] == 1
    stamps = {t: v for t, v in rows}
    assert stamps[boundary + 30 * MIN][count] == 0
    assert stamps[boundary + 60 * MIN][mean] is None
    assert stamps[boundary + 24 * 60 * MIN][mx] is None
    assert len(rows) == 4


def test_late_event_goes_to_late_output_with_reason():
    arrived = [
        {"event_id": 1, "user_id": "a", "event_type": "purchase", "amount": 1.0,
         "category": "", "event_timestamp": BASE + 60 * MIN},
        {"event_id": 2, "user_id": "a", "event_type": "purchase", "amount": 1.0,
         "category": "", "event_timestamp": BASE},
    ]
    eng, out = run_engine(SPEC, arrived, 0, 10 * MIN)
    late = [r for r in out if isinstance(r, Late)]
    assert [r.event.event_id for r in late] == [2]
    assert "behind the watermark" in late[0].reason and late[0].watermark == BASE + 60 * MIN
    assert eng.counts == {"processed": 1, "late": 1, "duplicates": 0, "corrections": 0,
                          "rows": len(out) - 1, "versions": 0, "late_versions": 0}


def test_correction_is_stamped_at_the_watermark():
    arrived = [
        {"event_id": 1, "user_id": "a", "event_type": "purchase", "amount": 4.0,
         "category": "", "event_timestamp": BASE + 10 * MIN},
        {"event_id": 2, "user_id": "b", "event_type": "view", "amount": 0.0,
         "category": "c", "event_timestamp": BASE + 12 * MIN},
        {"event_id": 3, "user_id": "a", "event_type": "purchase", "amount": 8.0,
         "category": "", "event_timestamp": BASE + 9 * MIN},
    ]
    eng, out = run_engine(SPEC, arrived, 0, 5 * MIN)
    rows = [r for r in out if isinstance(r, FeatureRow) and r.key == "a"]
    assert [(r.event_timestamp, r.cause) for r in rows][:2] == [
        (BASE + 10 * MIN, "event"), (BASE + 12 * MIN, "correction")]
    count = SPEC.feature_names.index("purchase_count_30m")
    assert rows[1].values[count] == 2 and eng.counts["corrections"] == 1


def _purchase(i: int, t: int, amount: float, user: str = "u") -> dict:
    return {"event_id": i, "user_id": user, "event_type": "purchase", "amount": amount,
            "category": "", "event_timestamp": t}


def test_late_events_into_front_stack_back_aggregate_and_open_pane():
    """Corrections land in every part of a min/max two-stacks queue: a pane in the front
    stack (after a flip), one in the back aggregate, the open pane, and a missing pane."""
    arrived = [_purchase(m, BASE + m * MIN + 1, 50.0 - m) for m in range(7)]
    arrived.append(_purchase(7, BASE + 8 * MIN + 30_000_000, 45.0))  # evicts panes 0, 1
    late = [(BASE + 3 * MIN + 10_000_000, 1.0),  # a pane in the front stack (pane 3)
            (BASE + 6 * MIN + 5, 0.5),  # the back aggregate (pane 6)
            (BASE + 8 * MIN + 1, 0.25),  # the open pane (8)
            (BASE + 7 * MIN + 9, 0.125)]  # a pane that did not exist (7)
    for k, (t, amount) in enumerate(late):
        arrived.append(_purchase(8 + 2 * k, t, amount))
        tick = dict(_purchase(9 + 2 * k, BASE + 8 * MIN + 31_000_000 + k, 0.0, user="v"))
        arrived.append({**tick, "event_type": "view"})  # moves the watermark on
    arrived.append(_purchase(99, BASE + 20 * MIN, 9.0))  # later: the fixes decay again
    for spec in (SPEC, EXTRA_SPEC):
        check_against_reference(spec, arrived, 0, 10 * MIN, batch=1)
    _, out = run_engine(EXTRA_SPEC, arrived, 0, 10 * MIN, batch=1)
    low = EXTRA_SPEC.feature_names.index("min_amount_7m")
    corrections = [r.values[low] for r in out
                   if isinstance(r, FeatureRow) and r.cause == "correction"]
    assert corrections == [1.0, 0.5, 0.25, 0.125]
