"""`feast-bytewax run --online-rows provisional` on librdkafka's mock cluster (4 partitions,
2 workers): the offline rows are still exactly the reference's, the online values were
written by the provisional engine (no delay; the exact one, with a delay longer than the
stream, releases nothing before the input ends) and end equal to the exact ones, and the
run reports how often the two differed."""

from __future__ import annotations

import pytest
from feast import FeatureStore

from feast_bytewax.config import LiveConfig
from feast_bytewax.dataflow.live import run_live
from tests import reference as ref
from tests.conftest import make_feast_repo
from tests.e2e.checks import NAMES, SPEC, as_json, as_ref, check_rows, close, stream

pytestmark = pytest.mark.e2e

SERVICE = "user_fraud_features"


def online(repo, users: list[str]) -> dict[str, tuple[tuple, int]]:
    """user -> (feature vector in SPEC order, its online event timestamp in us)."""
    store = FeatureStore(repo_path=str(repo))
    resp = store.get_online_features(features=store.get_feature_service(SERVICE),
                                     entity_rows=[{"user_id": u} for u in users])
    got = resp.to_dict()
    return {u: tuple(got[n][i] for n in NAMES) for i, u in enumerate(got["user_id"])}


def test_provisional_online_rows_exact_offline_rows(kafka_mock, tmp_path, caplog):
    repo = make_feast_repo(tmp_path / "repo")
    topic = kafka_mock.new_topic("events")
    events = stream(3000, 60, seed=31, late_fraction=0.0, jitter_s=1.0)
    where = kafka_mock.produce(topic, [(e["user_id"].encode(), as_json(e), None)
                                       for e in events])
    assert len({p for p, _ in where}) == 4
    caplog.set_level("INFO")
    cfg = LiveConfig(source=f"kafka://{kafka_mock.bootstrap}/{topic}", repo=repo, shards=4,
                     watermark_delay=7200.0, allowed_lateness=0.0, batch_size=100,
                     workers=2, max_events=len(events), idle_exit=30.0,
                     flush_interval=0.05, online_rows="provisional")
    result = run_live(cfg)
    stats = result.stats
    assert stats.balanced(), stats.summary()
    assert stats.consumed == stats.processed == len(events)
    good = [as_ref(e) for e in events]
    # offline: the exact engine's rows, untouched by the provisional ones
    assert check_rows(repo, good) == stats.rows
    # online: each user's value equals the reference's as of the newest event (the exact
    # engine's last row): the provisional value converged
    users = sorted({e["user_id"] for e in good})
    end = max(e["event_timestamp"] for e in good)
    got = online(repo, users)
    diff = []
    for u in users:
        want = ref.value_at(SPEC, good, u, end)
        if not all(close(a, b) for a, b in zip(got[u], want, strict=True)):
            diff.append((u, got[u], want))
    assert not diff, diff[:3]
    # ...and was compared with the exact one (the rows not waiting for the delay: see
    # tests/flows/test_provisional.py)
    lines = [r.getMessage() for r in caplog.records if "online vs exact:" in r.getMessage()]
    assert lines and all("intervals compared" in m for m in lines), lines
