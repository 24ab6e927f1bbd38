"""Point-in-time training recipe: replay events into Feast, then build a training frame from
labelled events with `training.training_frame(store, entity_df, feature service)`; every
row must equal the reference value as of its own time.

The reference is tests/reference.value_at with the stream's visibility (arrival_model over
the file order with the engine's per-shard watermarks: `routing.shard_of(user, shards)` as
the group): a late-but-allowed event counts from the watermark on, a too-late one never.
The entity frame mixes labelled events (at their event time), rows before a user's first
event, users never seen, and duplicate (user, time) rows; the output keeps one row per input
row, in input order, with the label column intact.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from tests import reference as ref

pytestmark = pytest.mark.e2e

SERVICE = "user_fraud_features"
MIN_US = 60_000_000


def _events_in_file_order(path) -> list[dict]:
    df = pd.read_parquet(path)
    ts = (df["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    out = []
    for rec, t in zip(df.to_dict("records"), ts.tolist(), strict=True):
        rec["event_timestamp"] = int(t)
        out.append(rec)
    return out


def _same(got, want) -> bool:
    if want is None:
        return got is None or got is pd.NA or (isinstance(got, float) and math.isnan(got))
    if got is None or got is pd.NA:
        return False
    if isinstance(want, float):
        return math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9)
    return int(got) == want


def test_training_frame_matches_reference_as_of_each_row(feast_repo_dir):
    from feast_bytewax.config import ReplayConfig
    from feast_bytewax.dataflow.replay import run_replay
    from feast_bytewax.dataflow.repo import open_store
    from feast_bytewax.datagen.generate import write_events
    from feast_bytewax.features.spec import load_spec
    from feast_bytewax.timeutil import from_us
    from feast_bytewax.training import training_frame

    events_path = feast_repo_dir / "data/events.parquet"
    start = (datetime.now(UTC) - timedelta(hours=8)).replace(microsecond=0)
    write_events(events_path, 3000, 40, seed=23, start=start, duration=timedelta(hours=6),
                 late_fraction=0.04)
    cfg = ReplayConfig(repo=feast_repo_dir, events=str(events_path))
    result = run_replay(cfg)
    assert result.stats.corrections > 0

    store = open_store(feast_repo_dir)
    spec = load_spec(store)
    events = _events_in_file_order(events_path)
    visible, late = ref.arrival_model(
        events, round(cfg.watermark_delay * 1e6), round(cfg.allowed_lateness * 1e6))
    horizon = max(e["event_timestamp"] for e in events)

    rnd = random.Random(4)
    labelled = rnd.sample(events, 150)
    rows = [(e["user_id"], e["event_timestamp"]) for e in labelled]
    # between events, and at pane boundaries (where a row may be a decay)
    for e in rnd.sample(events, 60):
        t = min(e["event_timestamp"] + rnd.randrange(1, 40 * MIN_US), horizon)
        rows.append((e["user_id"], t))
        rows.append((e["user_id"], min((t // MIN_US + 1) * MIN_US, horizon)))
    first = {}
    for e in events:
        u = e["user_id"]
        first[u] = min(first.get(u, e["event_timestamp"]), e["event_timestamp"])
    for u in rnd.sample(sorted(first), 8):  # before the user's first event
        rows.append((u, first[u] - rnd.randrange(1, 3600) * 1_000_000))
    for i in range(4):  # users never seen
        rows.append((f"never_seen_{i}", start.timestamp() * 1e6 + i * 3600e6))
    rows += rnd.sample(rows, 20)  # duplicate (user, time) rows
    rnd.shuffle(rows)
    entity_df = pd.DataFrame({
        "user_id": [u for u, _ in rows],
        "event_timestamp": [from_us(int(t)) for _, t in rows],
        "label": list(range(len(rows))),
    })

    frame = training_frame(store, entity_df, store.get_feature_service(SERVICE))

    assert len(frame) == len(entity_df)
    assert frame["label"].tolist() == entity_df["label"].tolist()
    assert frame["user_id"].tolist() == entity_df["user_id"].tolist()
    bad = []
    for i, (u, t) in enumerate(rows):
        want = ref.value_at(spec, events, u, int(t), visible)
        for f, w in zip(spec.feature_names, want, strict=True):
            got = frame.at[i, f]
            if not _same(got, w):
                bad.append((u, from_us(int(t)).isoformat(), f, got, w))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:5]}"
    # never-seen users and rows before a first event have the empty vector: counts 0
    empty = dict(zip(spec.feature_names, ref.empty_vector(spec), strict=True))
    never = frame[frame["user_id"].str.startswith("never_seen")]
    assert len(never) >= 4
    for f, v in empty.items():
        assert all(_same(x, v) for x in never[f]), f
    # the late events really mattered somewhere (the visibility model is exercised)
    assert any(visible[i] != e["event_timestamp"] for i, e in enumerate(events)
               if visible.get(i) is not None) or late


def test_compaction_keeps_the_training_frame(feast_repo_dir):
    """Several parts (two replays), a range replayed again over a full replay (rows
    replaced), then `feast-bytewax compact --grace 0` twice: far fewer files, and the
    training frame equal to the one before and to the reference."""
    from click.testing import CliRunner

    from feast_bytewax.cli.main import cli
    from feast_bytewax.config import ReplayConfig
    from feast_bytewax.dataflow.replay import run_replay
    from feast_bytewax.dataflow.repo import open_store
    from feast_bytewax.datagen.generate import write_events
    from feast_bytewax.features.spec import load_spec
    from feast_bytewax.timeutil import from_us
    from feast_bytewax.training import training_frame

    events_path = feast_repo_dir / "data/events.parquet"
    start = (datetime.now(UTC) - timedelta(hours=8)).replace(microsecond=0)
    write_events(events_path, 2000, 30, seed=29, start=start, duration=timedelta(hours=6),
                 late_fraction=0.0)
    cfg = ReplayConfig(repo=feast_repo_dir, events=str(events_path), flush_rows=50)
    run_replay(cfg)
    run_replay(ReplayConfig(repo=feast_repo_dir, events=str(events_path), flush_rows=50,
                            start=start + timedelta(hours=2), end=start + timedelta(hours=4)))
    folder = feast_repo_dir / "data/offline/user_features"
    files_before = len(list(folder.glob("*.parquet")))
    store = open_store(feast_repo_dir)
    spec = load_spec(store)
    events = _events_in_file_order(events_path)
    visible, _ = ref.arrival_model(
        events, round(cfg.watermark_delay * 1e6), round(cfg.allowed_lateness * 1e6))
    rnd = random.Random(7)
    horizon = max(e["event_timestamp"] for e in events)  # a finite input ends there
    rows = [(e["user_id"], min(e["event_timestamp"] + rnd.randrange(0, 20 * MIN_US), horizon))
            for e in rnd.sample(events, 300)]
    entity_df = pd.DataFrame({"user_id": [u for u, _ in rows],
                              "event_timestamp": [from_us(int(t)) for _, t in rows]})
    service = store.get_feature_service(SERVICE)
    before = training_frame(store, entity_df, service)

    for _ in range(2):  # the second one deletes what the first absorbed
        res = CliRunner().invoke(cli, ["compact", "--repo", str(feast_repo_dir),
                                       "--grace", "0"])
        assert res.exit_code == 0, res.output
        after = training_frame(open_store(feast_repo_dir), entity_df, service)
        pd.testing.assert_frame_equal(after[before.columns], before, check_dtype=False)
    files_after = len(list(folder.glob("*.parquet")))
    assert files_before >= 4 and files_after == 1, (files_before, files_after)
    bad = []
    for i, (u, t) in enumerate(rows):
        want = ref.value_at(spec, events, u, int(t), visible)
        for f, w in zip(spec.feature_names, want, strict=True):
            if not _same(before.at[i, f], w):
                bad.append((u, f, from_us(int(t)).isoformat(), before.at[i, f], w))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:5]}"
