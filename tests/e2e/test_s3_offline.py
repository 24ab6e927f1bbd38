"""S3 offline store end to end: replay into a repo whose parquet-folder offline store is rooted
at s3://BUCKET/PREFIX on a standalone moto server, then point-in-time reads from S3 against
the brute-force reference.

Configured as a deployment would be: the root and the endpoint in feature_store.yaml (the
endpoint through an environment variable, expanded by Feast), credentials and region from
the standard AWS environment variables (ambient credentials: the pyarrow S3 client reads
them as the AWS SDK does).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from feast_bytewax.config import ReplayConfig
from feast_bytewax.timeutil import from_us, to_us
from tests import reference as ref
from tests.e2e.repos import OFFLINE_TYPE, copy_repo
from tests.services import MOTO_CREDENTIALS

pytestmark = pytest.mark.e2e

SHARDS, DELAY_S, LATENESS_S = 4, 5.0, 300.0
BUCKET, PREFIX = "feast-bytewax-e2e", "lake/v1"
FOLDER = "data/offline/user_features"  # the FileSource path, re-rooted under the prefix
SERVICE = "user_fraud_features"

YAML = f"""\
project: feast_bytewax
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online.db
offline_store:
  type: {OFFLINE_TYPE}
  root: s3://{BUCKET}/{PREFIX}
  s3_endpoint_override: ${{FEAST_S3_ENDPOINT}}
entity_key_serialization_version: 3
"""


def close(a, b) -> bool:
    return ref.same_value(a, b)


@pytest.fixture(scope="module")
def replayed_to_s3(tmp_path_factory, moto_server):
    from feast_bytewax.dataflow.replay import run_replay
    from feast_bytewax.dataflow.repo import apply_repo
    from feast_bytewax.datagen.generate import write_events

    moto_server.s3().create_bucket(Bucket=BUCKET)
    repo = copy_repo(tmp_path_factory.mktemp("s3") / "repo", YAML)
    events_path = tmp_path_factory.mktemp("events") / "events.parquet"
    start = (datetime.now(UTC) - timedelta(hours=8)).replace(second=0, microsecond=0)
    write_events(events_path, 4000, 50, seed=23, start=start, duration=timedelta(hours=6),
                 late_fraction=0.03)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {**MOTO_CREDENTIALS, "FEAST_S3_ENDPOINT": moto_server.endpoint}.items():
            mp.setenv(name, value)
        apply_repo(repo)
        result = run_replay(ReplayConfig(repo=repo, shards=SHARDS, watermark_delay=DELAY_S,
                                         allowed_lateness=LATENESS_S, flush_rows=500,
                                         events=str(events_path)))
    assert result.stats.balanced(), result.stats.summary()
    frame = pd.read_parquet(events_path)  # file order = arrival order (one worker)
    frame["event_timestamp"] = [to_us(t.to_pydatetime()) for t in frame["event_timestamp"]]
    return {"repo": repo, "events": frame.to_dict("records"), "stats": result.stats,
            "moto": moto_server}


def test_part_files_land_on_s3_not_on_disk(replayed_to_s3):
    s3 = replayed_to_s3["moto"].s3()
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    assert keys, "nothing written to S3"
    parts = [k for k in keys if k.startswith(f"{PREFIX}/{FOLDER}/part-") and k.endswith(".parquet")]
    markers = [k for k in keys if k.startswith(f"{PREFIX}/{FOLDER}/_commits/")]
    assert sorted(parts + markers) == keys, keys
    assert len(parts) > 1  # one part per flush (flush_rows=500)
    assert len(markers) >= 1  # the replay's commit (stage markers at epoch ends, if any)
    assert not (replayed_to_s3["repo"] / "data" / "offline").exists()
    endpoint = replayed_to_s3["moto"].endpoint
    fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing",
                           secret_key="testing", region="us-east-1")
    table = pads.dataset(f"{BUCKET}/{PREFIX}/{FOLDER}", filesystem=fs, format="parquet").to_table()
    stats = replayed_to_s3["stats"].as_dict()
    assert table.num_rows == stats["rows_offline"] == stats["rows"]


def test_historical_features_from_s3_equal_reference(replayed_to_s3, monkeypatch):
    from feast import FeatureStore

    from feast_bytewax.training import training_frame

    for name, value in {**MOTO_CREDENTIALS,
                        "FEAST_S3_ENDPOINT": replayed_to_s3["moto"].endpoint}.items():
        monkeypatch.setenv(name, value)
    events = replayed_to_s3["events"]
    spec = ref.shipped_spec()
    visible, _ = ref.arrival_model(events, int(DELAY_S * 1e6), int(LATENESS_S * 1e6))
    rnd = random.Random(3)
    users = sorted({e["user_id"] for e in events})
    t_lo = min(e["event_timestamp"] for e in events)
    t_hi = max(e["event_timestamp"] for e in events)
    points = [(rnd.choice(users), rnd.randrange(t_lo, t_hi)) for _ in range(120)]
    for e in rnd.sample(events, 40):  # at events, just before them, and at pane exits
        t = e["event_timestamp"]
        points += [(e["user_id"], t), (e["user_id"], t - 1),
                   (e["user_id"], min(t_hi, t // 60_000_000 * 60_000_000 + 30 * 60_000_000))]
    points.append(("never_seen", t_hi))
    entity_df = pd.DataFrame({"user_id": [u for u, _ in points],
                              "event_timestamp": [from_us(t) for _, t in points]})
    store = FeatureStore(repo_path=str(replayed_to_s3["repo"]))
    assert store.config.offline_store.s3_endpoint_override == replayed_to_s3["moto"].endpoint
    frame = training_frame(store, entity_df, store.get_feature_service(SERVICE))
    assert len(frame) == len(points)
    mismatches = []
    for (u, t), row in zip(points, frame.itertuples(index=False), strict=True):
        want = ref.value_at(spec, events, u, t, visible)
        got = tuple(None if pd.isna(getattr(row, n)) else getattr(row, n)
                    for n in spec.feature_names)
        if not all(close(g, w) for g, w in zip(got, want, strict=True)):
            mismatches.append((u, from_us(t), got, want))
    assert not mismatches, mismatches[:5]
    counts = frame["purchase_count_30m"]
    assert (counts > 0).sum() > 20 and (counts == 0).sum() > 10
