"""Backfill with the same code: the live Kafka flow writes the same rows as the replay of
its messages. (A folder of parts against one file, across workers and processes:
tests/e2e/test_partitions.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_feast_repo

pytestmark = pytest.mark.e2e

OFFLINE = Path("data/offline/user_features")


def offline_frame(repo: Path) -> pd.DataFrame:
    df = pq.read_table(repo / OFFLINE).to_pandas()
    df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]")
    return df.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)


def test_live_kafka_run_equals_replay_of_its_messages(kafka_mock, tmp_path):
    """Four Kafka partitions (keyed by user) through `run_live`, and the same messages, in
    produce order, replayed from a parquet file: the same offline rows up to the newest
    event time. The watermark delay exceeds the stream's span, so no event is late in either
    run whatever the interleaving of partitions (and the wall clock cannot differ)."""
    from feast_bytewax.config import LiveConfig, ReplayConfig
    from feast_bytewax.dataflow.live import run_live
    from feast_bytewax.dataflow.replay import run_replay
    from feast_bytewax.datagen.generate import generate_events
    from tests.e2e.test_kafka_live_e2e import as_json

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=45)
    events = list(generate_events(1500, 30, start=start, duration=timedelta(minutes=40),
                                  seed=9, late_fraction=0.03))
    knobs = dict(shards=4, watermark_delay=3600.0, allowed_lateness=0.0, batch_size=100)

    live_repo = make_feast_repo(tmp_path / "live")
    topic = kafka_mock.new_topic("backfill")
    kafka_mock.produce(topic, [(e["user_id"].encode(), as_json(e), None) for e in events])
    result = run_live(LiveConfig(
        source=f"kafka://{kafka_mock.bootstrap}/{topic}", repo=live_repo, **knobs,
        max_events=len(events), idle_exit=30.0))
    assert result.stats.consumed == len(events) and result.stats.late == 0

    replay_repo = make_feast_repo(tmp_path / "replay")
    path = replay_repo / "data/events.parquet"
    pd.DataFrame(events).to_parquet(path, index=False)
    replayed = run_replay(ReplayConfig(repo=replay_repo, **knobs, events=str(path)))
    assert replayed.stats.late == 0

    end = pd.Timestamp(max(e["event_timestamp"] for e in events)).tz_convert("UTC")
    live = offline_frame(live_repo)
    live = live[live["event_timestamp"] <= end].reset_index(drop=True)
    rep = offline_frame(replay_repo)
    assert len(rep) > 500
    pd.testing.assert_frame_equal(live, rep)
