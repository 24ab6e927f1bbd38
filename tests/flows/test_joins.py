"""The temporal join in the shard engine against an independent as-of join (issue 10).

Random streams (Hypothesis) of events and profile versions in one arrival order: versions
before, between and after the events, some arriving late (within the allowed lateness:
corrections; beyond it: reported, joined only by later events), events with jitter and late
ones. The reference (`tests.reference.version_model` / `profile_enricher`) recomputes every
value from the raw lists by the issue's formulas: `max_amount_to_credit_24h` is the max of
amount / credit_score over the window's purchases, credit_score being the version valid at
each purchase's time; purchases without a valid profile are skipped. The looked-up risk is
set on the events as the lookup step would (`category_risk__risk`).
"""

from __future__ import annotations

import pickle

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.records import Event, FeatureRow, Late, TableVersion
from tests import reference as ref

MIN = 60_000_000
HOUR = 60 * MIN
BASE = 1_763_000_000_000_000 // MIN * MIN
SPEC = ref.shipped_spec()
RISK = {"a": 0.9, "b": 0.1, "c": 0.85}  # "" has no risk: the fallback 0.0
LOOKUP = "category_risk__risk"


@st.composite
def joined_streams(draw, max_events: int = 80, max_versions: int = 12):
    users = draw(st.integers(1, 3))
    delay = draw(st.sampled_from([0, 5_000_000, 90_000_000]))
    lateness = draw(st.sampled_from([0, 3 * MIN, 40 * MIN]))
    items = []
    for i in range(draw(st.integers(1, max_events))):
        et = draw(st.sampled_from(["purchase", "purchase", "view", "login_ok"]))
        items.append({
            "event_id": i, "user_id": f"u{draw(st.integers(0, users - 1))}", "event_type": et,
            "amount": float(draw(st.integers(0, 40))) if et == "purchase" else 0.0,
            "category": draw(st.sampled_from(["a", "b", "c", ""])),
            "event_timestamp": BASE + draw(st.integers(0, 6 * 60)) * MIN
            + draw(st.sampled_from([0, 1, 30_000_000])),
        })
    for j in range(draw(st.integers(0, max_versions))):
        items.append({
            "version": True, "user_id": f"u{draw(st.integers(0, users - 1))}",
            # before the events, between them, after them
            "event_timestamp": BASE + draw(st.integers(-120, 7 * 60)) * MIN
            + draw(st.sampled_from([0, 1])),
            "credit_score": draw(st.sampled_from([0, 400, 500, 800, None])),
            "account_age_days": j, "segment": draw(st.sampled_from(["new", "vip"])),
        })
    lags = [draw(st.sampled_from([0, 0, 1_000_000, 2 * MIN, 30 * MIN, 3 * HOUR]))
            for _ in items]
    order = sorted(range(len(items)), key=lambda i: (items[i]["event_timestamp"] + lags[i], i))
    return [items[i] for i in order], delay, lateness


def to_record(x: dict) -> Event | TableVersion:
    if x.get("version"):
        return TableVersion("user_profile", x["user_id"], x["event_timestamp"],
                            {c: x[c] for c in ("account_age_days", "credit_score", "segment")})
    return Event(x["event_id"], x["user_id"], x["event_type"], x["amount"], x["category"],
                 x["event_timestamp"], "test",
                 extra={LOOKUP: RISK.get(x["category"], 0.0)})


def run(arrivals, delay, lateness, batch=5, restart_at=None):
    cfg = EngineConfig(watermark_delay=delay, allowed_lateness=lateness)
    eng = ShardEngine(SPEC, cfg)
    out = []
    recs = [to_record(x) for x in arrivals]
    for i in range(0, len(recs), batch):
        if restart_at is not None and i >= restart_at:
            eng = ShardEngine(SPEC, cfg, eng.snapshot())  # a restart from a snapshot
            restart_at = None
        out += eng.ingest(recs[i:i + batch])
    out += eng.finish()
    return eng, out


def expected(arrivals, delay, lateness):
    visible, versions, late = ref.version_model(arrivals, delay, lateness)
    for i in versions:
        visible[i] = None  # versions are not events
    enrich = ref.profile_enricher(arrivals, visible, versions, RISK)
    kept = [x for i, x in enumerate(arrivals) if visible.get(i) is not None]
    end = max([x["event_timestamp"] for x in kept]
              + [arrivals[i]["event_timestamp"] for i in versions], default=BASE)
    extra = {}
    for i, (vis, _) in versions.items():
        extra.setdefault(arrivals[i]["user_id"], []).append(vis)
    rows = ref.expected_rows(SPEC, arrivals, end, visible, enrich, extra)
    return rows, late, versions


def check(arrivals, delay, lateness, **kw):
    eng, out = run(arrivals, delay, lateness, **kw)
    rows, late, versions = expected(arrivals, delay, lateness)
    got: dict[str, list] = {}
    for r in out:
        if isinstance(r, FeatureRow):
            got.setdefault(r.key, []).append((r.event_timestamp, r.values))
    assert got == rows
    too_late = [i for i, (_, ok) in versions.items() if not ok]
    lates = [r for r in out if isinstance(r, Late)]
    assert len(lates) == len(late) + len(too_late)
    assert eng.counts["late_versions"] == len(too_late)
    n = len(arrivals)
    assert eng.counts["processed"] + eng.counts["late"] == n  # nothing lost


def _same_instant(*kinds: str) -> list[dict]:
    """Purchases (`p`) and a profile version (`v`, credit 400) all at one instant."""
    out = []
    for i, kind in enumerate(kinds):
        if kind == "v":
            out.append({"version": True, "user_id": "u0", "event_timestamp": BASE,
                        "credit_score": 400, "account_age_days": i, "segment": "new"})
        else:
            out.append({"event_id": i, "user_id": "u0", "event_type": "purchase",
                        "amount": 8.0, "category": "a", "event_timestamp": BASE})
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(joined_streams())
# Found by CI (stop 15): without delay or lateness, a version arriving at the watermark is
# too late to correct; a purchase at that same instant arriving after it is applied after
# it, so it joins it (the reference used to skip it: amount_to_credit None, not 0.02).
@example(case=(_same_instant("p", "v", "p"), 0, 0))
def test_join_features_match_the_as_of_reference(case):
    check(*case)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(joined_streams(), st.integers(0, 40))
def test_join_state_survives_a_restart(case, at):
    check(*case, restart_at=at)


def u(i, t, amount=10.0, cat="b", et="purchase"):
    return {"event_id": i, "user_id": "u", "event_type": et, "amount": amount,
            "category": cat, "event_timestamp": t}


def version(t, score):
    return {"version": True, "user_id": "u", "event_timestamp": t, "credit_score": score,
            "account_age_days": 1, "segment": "new"}


def test_by_hand_versions_before_between_after():
    arrivals = [version(BASE - HOUR, 500), u(0, BASE, 100.0), version(BASE + MIN, 250),
                u(1, BASE + 2 * MIN, 100.0), version(BASE + 3 * HOUR, 1)]
    _, out = run(arrivals, 0, 0, batch=1)
    i = SPEC.feature_names.index("max_amount_to_credit_24h")
    values = [(r.event_timestamp, r.values[i]) for r in out if isinstance(r, FeatureRow)]
    assert values[:2] == [(BASE, 0.2), (BASE + 2 * MIN, 0.4)]  # 100/500, then 100/250
    # the version after the events changes nothing they computed
    assert all(v in (0.2, 0.4, None) for _, v in values)


def test_late_version_within_lateness_corrects_at_the_watermark():
    arrivals = [version(BASE - HOUR, 500), u(0, BASE + MIN, 100.0), u(1, BASE + 10 * MIN, 1.0),
                version(BASE, 100)]  # arrives when the watermark is BASE + 10 min
    _, out = run(arrivals, 0, 20 * MIN, batch=1)
    i = SPEC.feature_names.index("max_amount_to_credit_24h")
    rows = [(r.event_timestamp, r.values[i], r.cause) for r in out if isinstance(r, FeatureRow)]
    assert (BASE + MIN, 0.2, "event") in rows
    assert (BASE + 10 * MIN, 1.0, "correction") in rows  # 100/100 from the watermark on


def test_too_late_version_is_reported_and_joins_only_later_events():
    arrivals = [version(BASE - HOUR, 500), u(0, BASE + MIN, 100.0), u(1, BASE + 50 * MIN, 1.0),
                version(BASE, 100), u(2, BASE + 51 * MIN, 50.0)]
    eng, out = run(arrivals, 0, 20 * MIN, batch=1)
    late = [r for r in out if isinstance(r, Late)]
    assert len(late) == 1 and isinstance(late[0].event, TableVersion)
    assert late[0].reason.startswith("late_version:")
    i = SPEC.feature_names.index("max_amount_to_credit_24h")
    final = [r.values[i] for r in out if isinstance(r, FeatureRow)][-1]
    assert final == 0.5  # 50/100 (the later event joined it); 100/500 was not rewritten
    assert eng.counts["late_versions"] == 1


def test_only_needed_versions_are_kept():
    arrivals = [version(BASE + k * MIN, 300 + k) for k in range(50)] + [u(0, BASE + 3 * HOUR)]
    eng, _ = run(arrivals, 0, 10 * MIN, batch=3)
    kept = eng.joins.versions["user_profile"].by_key["u"]
    # the latest before the horizon (3 h - 10 min) and everything after it: just one here
    assert len(kept) == 1 and kept[0][1]["credit_score"] == 349
    assert len(pickle.dumps(eng.snapshot())) < 20_000
