"""Provisional online rows (`engine.provisional`) next to the exact engine, on random
disordered streams (Hypothesis):

- the exact rows are those of an exact engine alone (the provisional one changes nothing);
- the provisional engine is an engine with no delay and a longer lateness, so its rows
  equal the brute-force reference's for that arrival model, row for row;
- per key its row timestamps strictly increase (Feast's online "newer wins" never hides
  one), and its last vector per key equals the exact one's (the online value converges);
- across a snapshot and a restore (the provisional engine rebuilt from the exact one) the
  online value, folded as Feast's online store folds writes, still ends at the exact one;
- `dataflow.divergence` measures the time the two differed, against a direct computation.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from feast_bytewax.dataflow.divergence import Divergence
from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.provisional import ProvisionalRows, provisional_config
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.engine.watermark import ACTIVE
from feast_bytewax.records import PROVISIONAL, Event, FeatureRow, Mark
from tests import reference as ref
from tests.flows.test_engine_reference import SPEC, rows_by_key, run_engine, streams, to_event

# no shrinking: these streams shrink for minutes; a failure prints its seed to replay
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])


def run_pair(arrived, delay, lateness, batch=7, parts=1):
    """Feed both engines as `dataflow.step.ShardLogic` does; (exact rows, provisional rows)."""
    exact = ShardEngine(SPEC, EngineConfig(watermark_delay=delay, allowed_lateness=lateness,
                                           partitions=parts))
    lead = ProvisionalRows(exact)
    evs = [to_event(e) for e in arrived]
    if parts > 1:  # event i is in partition i % parts; frontier = that partition's newest
        newest: dict[int, int] = {}
        for i, ev in enumerate(evs):
            p = i % parts
            newest[p] = max(newest.get(p, ev.event_timestamp), ev.event_timestamp)
            ev.part, ev.frontier = p, newest[p]
    ex, pr = [], []
    for i in range(0, len(evs), batch):
        ex += exact.ingest(evs[i:i + batch])
        pr += lead.ingest(evs[i:i + batch])
    ex += exact.finish()
    pr += lead.finish()
    return ex, pr


def last_vectors(rows) -> dict[str, tuple]:
    return {k: v[-1][1] for k, v in rows_by_key(rows).items()}


def increasing(rows) -> bool:
    return all([t for t, _ in r] == sorted({t for t, _ in r}) for r in rows_by_key(rows).values())


@SETTINGS
@given(streams())
def test_exact_rows_unchanged_and_leading_rows_match_reference(case):
    arrived, delay, lateness = case
    ex, pr = run_pair(arrived, delay, lateness)
    _, alone = run_engine(SPEC, arrived, delay, lateness)
    assert ex == alone
    assert all(type(r) is FeatureRow and r.cause == PROVISIONAL for r in pr)
    cfg = provisional_config(EngineConfig(watermark_delay=delay, allowed_lateness=lateness))
    visible, late_idx = ref.arrival_model(arrived, 0, cfg.allowed_lateness)
    kept = [e for i, e in enumerate(arrived) if i not in late_idx]
    expected = ref.expected_rows(SPEC, arrived, max(e["event_timestamp"] for e in kept),
                                 visible)
    assert rows_by_key(pr) == expected
    assert increasing(pr)


@SETTINGS
@given(streams(), st.sampled_from([1, 2, 3]))
def test_online_value_converges_to_the_exact_one(case, parts):
    arrived, delay, lateness = case
    ex, pr = run_pair(arrived, delay, lateness, parts=parts)
    assert increasing(pr)
    if any(type(r) is not FeatureRow for r in ex):
        return  # an event too late for the exact engine is in the online value only
    exact_last, lead_last = last_vectors(ex), last_vectors(pr)
    empty = ShardEngine(SPEC, EngineConfig()).cs.empty_vector  # a key without rows
    for key in set(exact_last) | set(lead_last):
        assert lead_last.get(key, empty) == exact_last.get(key, empty), key


def fold_online(rows) -> dict[str, tuple[int, tuple]]:
    """What Feast's online store keeps: per key, a write not newer than the stored is dropped."""
    out: dict[str, tuple[int, tuple]] = {}
    for r in rows:
        cur = out.get(r.key)
        if cur is None or r.event_timestamp > cur[0]:
            out[r.key] = (r.event_timestamp, r.values)
    return out


@SETTINGS
@given(streams(max_events=80), st.integers(1, 79))
def test_restore_rebuilds_the_leading_engine_from_the_exact_snapshot(case, cut):
    arrived, delay, lateness = case
    cut = min(cut, len(arrived))
    evs = [to_event(e) for e in arrived]
    cfg = EngineConfig(watermark_delay=delay, allowed_lateness=lateness)
    exact = ShardEngine(SPEC, cfg)
    lead = ProvisionalRows(exact)
    ex, pr = exact.ingest(evs[:cut]), lead.ingest(evs[:cut])
    blob = exact.snapshot()
    # the crash: what came after the snapshot is lost and read again after the restore
    exact = ShardEngine(SPEC, cfg, blob)
    lead = ProvisionalRows(exact)
    ex += exact.ingest(evs[cut:]) + exact.finish()
    pr += lead.ingest(evs[cut:]) + lead.finish()
    online = fold_online(pr)
    for key, vec in last_vectors(ex).items():
        assert online[key][1] == vec, key


def event(i: int, key: str, t: int) -> Event:
    return Event(i, key, "purchase", 1.0, "c", t, "test")


def test_divergence_counts_the_event_time_the_two_differed():
    a, b = (1,), (2,)
    d = Divergence("user_id")
    # provisional: a at 10, b at 20; exact: a at 10 (first: nothing to compare), a at 30
    # (closes [10, 30): provisional was a on [10, 20), b on [20, 30) -> 10 us differ)
    d.observe([FeatureRow("k", 10, a, PROVISIONAL), FeatureRow("k", 20, b, PROVISIONAL),
               FeatureRow("k", 10, a, "event"), FeatureRow("k", 30, b, "event")])
    assert (d.compared, d.divergent, d.divergent_us) == (1, 1, 10)
    assert "k" not in d.keys  # agreeing with nothing pending: forgotten
    # another key whose provisional value was right all along
    d.observe([FeatureRow("j", 10, a, PROVISIONAL), FeatureRow("j", 10, a, "event"),
               FeatureRow("j", 25, b, PROVISIONAL), FeatureRow("j", 25, b, "event")])
    assert (d.compared, d.divergent, d.divergent_us) == (2, 1, 10)


def test_provisional_rows_do_not_wait_for_the_delay():
    """A 5 s delay: the exact engine has released nothing 2 s into the stream; the
    provisional one has written each event's row once a newer event moved past it."""
    exact = ShardEngine(SPEC, EngineConfig(watermark_delay=5_000_000, partitions=2))
    lead = ProvisionalRows(exact)
    t0 = 1_763_000_000_000_000
    evs = [event(i, "k", t0 + i * 1_000_000) for i in range(3)]
    for ev in evs:
        ev.part, ev.frontier = 0, ev.event_timestamp
    marks = [Mark(1, t0 + 2_000_000, ACTIVE)]  # partition 1 is as far
    assert [r for r in exact.ingest(marks + evs) if type(r) is FeatureRow] == []
    rows = lead.ingest(marks + evs)
    assert [r.event_timestamp for r in rows] == [t0, t0 + 1_000_000]  # the newest is held
    assert all(r.cause == PROVISIONAL for r in rows)


@SETTINGS
@given(case=streams(), every=st.integers(1, 4), lag=st.integers(0, 15))
def test_duplicates_change_neither_engine(case, every, lag):
    """Re-sent events (same key and event_id, `lag` arrivals later) change no row of either
    engine: the exact one drops them (`engine.dedup`) and the provisional one, which keeps no
    ids, is fed the exact one's batch without them. (A copy re-sent after its id expired is
    late, a late record and no row.)"""
    arrived, delay, lateness = case
    resent = list(arrived)
    for j, i in enumerate(range(0, len(arrived), every)):
        resent.insert(min(len(resent), i + j + 1 + lag), dict(arrived[i]))
    want = run_pair(arrived, delay, lateness, batch=1)
    got = run_pair(resent, delay, lateness, batch=1)
    rows = [[r for r in out if type(r) is FeatureRow] for out in (*want, *got)]
    assert rows[2] == rows[0]
    assert rows[3] == rows[1]
