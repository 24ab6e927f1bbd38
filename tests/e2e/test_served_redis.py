"""Served end to end: events -> the dataflow -> Redis (through Feast, with the shipped
feature_store.redis.yaml) -> the real `feast serve` over HTTP, against the brute-force
reference. Two ingestion paths, each with its own repo, Redis db and server:

- replay (`runner.run_replay`, a parquet file): late events and corrections, many small
  flushes, per-shard watermarks as in `reference.arrival_model`;
- live (`live.run_live`, librdkafka's mock Kafka cluster, 4 partitions, wall clock): a
  watermark delay longer than the stream, so no event is late whatever the interleaving of
  partitions and the reference needs no arrival model.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import requests

from feast_bytewax.config import LiveConfig, ReplayConfig
from feast_bytewax.timeutil import to_us
from tests import reference as ref
from tests.e2e.repos import ROOT, copy_repo
from tests.services import running_feast_serve

pytestmark = pytest.mark.e2e

SHARDS, DELAY_S, LATENESS_S = 4, 5.0, 300.0
SERVICE = "user_fraud_features"
EPOCH_ISO = "1970-01-01T00:00:00Z"


def close(a, b) -> bool:
    return ref.same_value(a, b)


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_server):
    """Replay generated events into a repo on Redis, start `feast serve` on it."""
    from feast_bytewax.dataflow.replay import run_replay
    from feast_bytewax.dataflow.repo import apply_repo
    from feast_bytewax.datagen.generate import write_events

    env = redis_db(redis_server, 1)
    repo = copy_repo(tmp_path_factory.mktemp("served") / "repo",
                     (ROOT / "feature_store.redis.yaml").read_text())
    # Recent events (the flow rejects events ahead of the wall clock), whole minutes.
    start = (datetime.now(UTC) - timedelta(hours=8)).replace(second=0, microsecond=0)
    events_path = repo / "data" / "events.parquet"
    events_path.parent.mkdir(parents=True)
    write_events(events_path, 5000, 60, seed=17, start=start, duration=timedelta(hours=6),
                 late_fraction=0.03)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEAST_REDIS", env["FEAST_REDIS"])  # the yaml reads it
        apply_repo(repo)
        # small flushes: many online writes per key, each newer than the stored one
        result = run_replay(ReplayConfig(repo=repo, shards=SHARDS, watermark_delay=DELAY_S,
                                         allowed_lateness=LATENESS_S, flush_rows=250,
                                         events=str(events_path)))
    stats = result.stats
    assert stats.balanced(), stats.summary()
    assert stats.late > 0 and stats.corrections > 0, stats.summary()
    assert stats.as_dict()["rows_online"] > 2 * len(users_of(events_path)), stats.summary()
    frame = pd.read_parquet(events_path)  # file order = arrival order (one worker)
    frame["event_timestamp"] = [to_us(t.to_pydatetime()) for t in frame["event_timestamp"]]
    events = frame.to_dict("records")
    with running_feast_serve(repo, env) as server:
        yield {"url": server.url, "events": events, "stats": stats, "repo": repo,
               "server": server}


def redis_db(redis_server, db: int) -> dict[str, str]:
    """Empty Redis db `db` of the session's server; the env that points the yaml at it."""
    import redis

    with redis.Redis(host=redis_server.host, port=redis_server.port, db=db) as client:
        client.flushdb()
    return {"FEAST_REDIS": f"{redis_server.connection_string},db={db}"}


def users_of(events_path) -> set[str]:
    return set(pd.read_parquet(events_path, columns=["user_id"])["user_id"])


def get_online(url: str, users: list[str]) -> dict:
    resp = requests.post(f"{url}/get-online-features",
                         json={"feature_service": SERVICE, "entities": {"user_id": users}},
                         timeout=30)
    assert resp.status_code == 200, resp.text[:2000]
    return resp.json()


def by_user(body: dict, users: list[str]) -> dict[str, dict[str, tuple]]:
    """{user: {feature: (value, status, event timestamp ISO)}}, columns named by
    metadata.feature_names (the response's order, not the request's)."""
    names = body["metadata"]["feature_names"]
    assert names[0] == "user_id"
    out: dict[str, dict[str, tuple]] = {}
    for i, user in enumerate(users):
        assert body["results"][0]["values"][i] == user
        out[user] = {
            name: (col["values"][i], col["statuses"][i], col["event_timestamps"][i])
            for name, col in zip(names[1:], body["results"][1:], strict=True)
        }
    return out


def iso_to_us(text: str) -> int:
    return to_us(datetime.fromisoformat(text.replace("Z", "+00:00")))


def test_served_features_equal_the_reference_as_of_their_timestamp(served):
    events = served["events"]
    spec = ref.shipped_spec()
    visible, late = ref.arrival_model(events, int(DELAY_S * 1e6), int(LATENESS_S * 1e6))
    assert served["stats"].late == len(late)
    users = sorted({e["user_id"] for e in events})
    got = by_user(get_online(served["url"], users), users)
    end = max(e["event_timestamp"] for e in events)
    expected_rows = ref.expected_rows(spec, events, end, visible)
    mismatches, checked, non_empty = [], 0, 0
    names = {f.name for f in spec.features}  # the service also serves the profile table
    for user in users:
        stamps = {iso_to_us(got[user][n][2]) for n in names}
        assert len(stamps) == 1, (user, got[user])  # one row per key writes all the views
        (t,) = stamps
        want = ref.value_at(spec, events, user, t, visible)
        for feature, w in zip(spec.features, want, strict=True):
            value, status, _ = got[user][feature.name]
            assert status == "PRESENT", (user, feature.name, status)
            checked += 1
            non_empty += value not in (None, 0)
            if not close(value, w):
                mismatches.append((user, feature.name, t, value, w))
        # ...and the served row is the user's latest: the reference's last change point
        if user in expected_rows:
            assert t == expected_rows[user][-1][0], (user, t, expected_rows[user][-1])
    assert not mismatches, mismatches[:5]
    assert checked == len(spec.features) * len(users) and non_empty > len(users)


def test_never_seen_user_is_null_with_epoch_timestamp(served):
    """Feast's Redis store answers a key it has never stored with null values, status
    PRESENT and a 1970-01-01 timestamp (not NOT_FOUND): clients must treat the epoch
    timestamp (or null) as "no data", since the empty-window value of a count is 0."""
    users = ["never_seen_user", served["events"][0]["user_id"]]
    got = by_user(get_online(served["url"], users), users)
    for feature, (value, status, ts) in got["never_seen_user"].items():
        assert value is None, feature
        assert status == "PRESENT"
        assert ts == EPOCH_ISO
    # ...and the seen user's computed features are stamped (its profile was never pushed)
    computed = {f.name for f in ref.shipped_spec().features}
    assert all(ts != EPOCH_ISO for n, (_, _, ts) in got[users[1]].items() if n in computed)


def test_request_order_does_not_matter(served):
    """Features requested by name in any order come back in the response's own order."""
    users = sorted({e["user_id"] for e in served["events"]})[:5]
    features = ["user_session_features:distinct_categories_session",
                "user_purchase_features:purchase_count_30m",
                "user_login_features:failed_logins_10m"]
    resp = requests.post(f"{served['url']}/get-online-features",
                         json={"features": features, "entities": {"user_id": users}},
                         timeout=30)
    assert resp.status_code == 200, resp.text[:2000]
    body = resp.json()
    via_service = by_user(get_online(served["url"], users), users)
    via_names = by_user(body, users)
    for user in users:
        for name, cell in via_names[user].items():
            assert cell == via_service[user][name]


# ---------------------------------------------------------------------------------------
# Live: Kafka (mock cluster) -> run_live -> Redis -> feast serve
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_live(tmp_path_factory, redis_server, kafka_mock):
    import json

    from feast_bytewax.dataflow.live import run_live
    from feast_bytewax.dataflow.repo import apply_repo
    from feast_bytewax.datagen.generate import generate_events

    env = redis_db(redis_server, 2)
    repo = copy_repo(tmp_path_factory.mktemp("served_live") / "repo",
                     (ROOT / "feature_store.redis.yaml").read_text())
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=45)
    stream = list(generate_events(2500, 50, start=start, duration=timedelta(minutes=40),
                                  seed=29, late_fraction=0.0, jitter_s=1.0))
    topic = kafka_mock.new_topic("served")
    kafka_mock.produce(topic, [
        (e["user_id"].encode(),
         json.dumps({**e, "event_timestamp": e["event_timestamp"].isoformat()}).encode(), None)
        for e in stream
    ])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEAST_REDIS", env["FEAST_REDIS"])
        apply_repo(repo)
        result = run_live(LiveConfig(
            source=f"kafka://{kafka_mock.bootstrap}/{topic}", repo=repo, shards=SHARDS,
            watermark_delay=7200.0, allowed_lateness=0.0, batch_size=100, flush_rows=200,
            max_events=len(stream), idle_exit=30.0,
        ))
    stats = result.stats
    assert stats.consumed == stats.processed == len(stream), result.summary()
    assert stats.as_dict()["rows_online"] > 0
    events = [{**e, "event_timestamp": to_us(e["event_timestamp"])} for e in stream]
    with running_feast_serve(repo, env) as server:
        yield {"url": server.url, "events": events}


def test_live_kafka_features_served_equal_the_reference(served_live):
    events = served_live["events"]
    spec = ref.shipped_spec()
    users = sorted({e["user_id"] for e in events})
    got = by_user(get_online(served_live["url"], users), users)
    end = max(e["event_timestamp"] for e in events)
    mismatches = []
    names = {f.name for f in spec.features}  # the service also serves the profile table
    for user in users:
        stamps = {iso_to_us(got[user][n][2]) for n in names}
        assert len(stamps) == 1, (user, got[user])
        (t,) = stamps
        want = ref.value_at(spec, events, user, t)  # delay > stream: every event on time
        # ...and it is the user's current value: nothing changes between t and the end
        assert want == ref.value_at(spec, events, user, max(t, end)), (user, t, end)
        for feature, w in zip(spec.features, want, strict=True):
            value, status, _ = got[user][feature.name]
            assert status == "PRESENT"
            if not close(value, w):
                mismatches.append((user, feature.name, t, value, w))
    assert not mismatches, mismatches[:5]
