"""A second entity end to end (issue 7, defect 1): a view keyed on `merchant_id`, declared
only in `feast_repo/` (the entity, the view, and the column in the KafkaSource schema), runs
in the same replay as the user features, into Feast, and reads back through
`get_historical_features` equal to the brute-force reference. Undeclared columns and
unknown functions fail at `apply`, before anything is registered."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from feast_bytewax.config import ReplayConfig
from feast_bytewax.dataflow.replay import run_replay
from feast_bytewax.dataflow.repo import apply_repo, open_store
from feast_bytewax.errors import SpecError
from feast_bytewax.features.spec import load_flow_spec
from feast_bytewax.timeutil import to_us
from feast_bytewax.training import training_frame
from tests import reference as ref
from tests.e2e.repos import copy_repo

MERCHANT_DEFS = '''

# --- added by tests/e2e/test_entities.py: a second entity --------------------------------
from feast import Entity, FileSource, PushSource, ValueType  # noqa: E402

merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
merchant_push = PushSource(
    name="merchant_push",
    batch_source=FileSource(name="merchant_batch", path="data/offline/merchant_features",
                            timestamp_field="event_timestamp"))
merchant_sales = StreamFeatureView(
    name="merchant_sales", source=merchant_push, entities=[merchant], ttl=timedelta(0),
    online=True, offline=True, timestamp_field="event_timestamp",
    tags={"feast_bytewax.filter": "event_type=purchase"},
    schema=[Field(name="merchant_revenue_1h", dtype=Float64),
            Field(name="merchant_orders_30m", dtype=Int64)],
    aggregations=[
        Aggregation(column="amount", function="sum", time_window=timedelta(hours=1),
                    slide_interval=MINUTE, name="merchant_revenue_1h"),
        Aggregation(column="event_id", function="count", time_window=timedelta(minutes=30),
                    slide_interval=MINUTE, name="merchant_orders_30m"),
    ],
)
'''


def merchant_repo(directory: Path) -> Path:
    repo = copy_repo(directory)
    sources = repo / "feast_repo/sources.py"
    sources.write_text(sources.read_text().replace(
        'category STRING, event_timestamp TIMESTAMP"',
        'category STRING, event_timestamp TIMESTAMP, "\n                     "merchant_id STRING"'))
    features = repo / "feast_repo/features.py"
    features.write_text(features.read_text() + MERCHANT_DEFS)
    return repo


def events(seed: int, n: int, start: datetime) -> list[dict]:
    """In event-time order with jitter inside the watermark delay; purchases carry a
    merchant (a few do not), other events none."""
    rnd = random.Random(seed)
    t0 = to_us(start)
    out = []
    for i in range(n):
        t = t0 + i * 4_000_000 + rnd.randrange(0, 2_000_000)
        et = rnd.choice(["view", "purchase", "purchase", "login_failed"])
        merchant = (rnd.choice(["m1", "m2", "m3", None]) if et == "purchase" else None)
        out.append({"event_id": i, "user_id": f"u{rnd.randrange(12)}", "event_type": et,
                    "amount": float(rnd.randrange(1, 90)) if et == "purchase" else 0.0,
                    "category": rnd.choice(["books", "toys"]), "event_timestamp": t,
                    "merchant_id": merchant})
    return out


def frame(evs: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(evs)
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], unit="us", utc=True)
    return df


def test_second_entity_end_to_end_into_feast_and_back(tmp_path):
    repo = merchant_repo(tmp_path / "repo")
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    evs = events(3, 1500, start)
    path = repo / "data/events.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame(evs).to_parquet(path, index=False)
    spec = apply_repo(repo)
    assert [e.join_key for e in spec.entities] == ["merchant_id", "user_id"]

    result = run_replay(ReplayConfig(repo=repo, events=str(path)))
    stats = result.stats
    assert stats.balanced(), stats.summary()
    unkeyed = sum(1 for e in evs if e["merchant_id"] is None)
    assert stats.entities["merchant_id"]["unkeyed"] == unkeyed
    assert stats.entities["user_id"]["processed"] == len(evs)
    assert stats.entities["merchant_id"]["processed"] == len(evs) - unkeyed

    store = open_store(repo)
    merchant = load_flow_spec(store).entity("merchant_id")
    rnd = random.Random(9)
    lo, hi = evs[0]["event_timestamp"], evs[-1]["event_timestamp"]
    points = [(rnd.choice(["m1", "m2", "m3"]), rnd.randrange(lo, hi)) for _ in range(150)]
    entity_df = pd.DataFrame({
        "merchant_id": [k for k, _ in points],
        "event_timestamp": pd.to_datetime([t for _, t in points], unit="us", utc=True),
    })
    got = training_frame(store, entity_df, ["merchant_sales:merchant_revenue_1h",
                                            "merchant_sales:merchant_orders_30m"])
    for (key, t), row in zip(points, got.itertuples(index=False), strict=True):
        want = ref.value_at(merchant, evs, key, t)
        assert ref.same_value(row.merchant_revenue_1h, want[0]), (key, t, row, want)
        assert ref.same_value(row.merchant_orders_30m, want[1]), (key, t, row, want)
    # the user features of the same run are exact too
    user = load_flow_spec(store).entity("user_id")
    upoints = [(f"u{rnd.randrange(12)}", rnd.randrange(lo, hi)) for _ in range(60)]
    udf = pd.DataFrame({"user_id": [k for k, _ in upoints],
                        "event_timestamp": pd.to_datetime([t for _, t in upoints], unit="us",
                                                          utc=True)})
    ugot = training_frame(store, udf, store.get_feature_service("user_fraud_features"))
    for (key, t), row in zip(upoints, ugot.itertuples(index=False), strict=True):
        want = ref.value_at(user, evs, key, t)
        for name, w in zip(user.feature_names, want, strict=True):
            assert ref.same_value(getattr(row, name), w), (name, key, t)


def test_undeclared_column_and_unknown_function_fail_at_apply(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    features = repo / "feast_repo/features.py"
    shutil.copy(features, tmp_path / "features.orig")
    features.write_text(features.read_text().replace('function="max"', 'function="maximum"'))
    with pytest.raises(SpecError, match=r"unknown aggregation function 'maximum'; valid: "
                                        r"\[.*'max'.*\]"):
        apply_repo(repo)
    assert not (repo / "data/registry.db").exists()  # nothing was registered
    mean_of = 'column="{}",\n            function="mean"'
    features.write_text((tmp_path / "features.orig").read_text().replace(
        mean_of.format("amount"), mean_of.format("tip")))
    with pytest.raises(SpecError, match=r"'avg_amount_1h': Aggregation.column 'tip' is not an "
                                        r"event column; KafkaSource 'user_events'"):
        apply_repo(repo)
