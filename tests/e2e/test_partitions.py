"""Event time across partitions (issue 8): results do not depend on how the input is split,
nor on workers or processes, with the default knobs, when each partition is in order within
the watermark delay; an outlier clock and duplicated events do not change the features.

Finding 1 of the issue: a 40k-event stream split by user into 4 uneven parquet parts lost
34,380 events as late with the defaults (parts are read at the same row rate, not by event
time). Every check here is against an independent oracle: the DuckDB recomputation of the
skew report (SQL generated from the definitions), or the brute-force reference.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.recovery import init_db_dir

from feast_bytewax.config import LiveConfig, ReplayConfig
from feast_bytewax.dataflow.live import run_live
from feast_bytewax.dataflow.replay import run_replay
from feast_bytewax.dataflow.repo import open_store
from feast_bytewax.dataflow.step import NO_SNAPSHOT
from feast_bytewax.datagen.generate import write_events
from feast_bytewax.skew.report import SkewOptions, compute_report
from tests.conftest import make_feast_repo
from tests.e2e.checks import as_json, as_ref, check_rows, free_port, offline_frame, stream

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def split_events(tmp_path_factory):
    """~12k events, Zipf users, 6 h, jitter well inside the 5 s default delay, no late
    ones; as one file and as a folder of 4 parts split by user (very uneven sizes)."""
    base = tmp_path_factory.mktemp("split")
    one = base / "events.parquet"
    start = (datetime.now(UTC) - timedelta(hours=8)).replace(microsecond=0)
    write_events(one, 12_000, 300, seed=41, start=start, duration=timedelta(hours=6),
                 late_fraction=0.0, jitter_s=0.4)
    table = pq.read_table(one)
    users = table.column("user_id").to_pylist()
    folder = base / "events"
    folder.mkdir()
    sizes = []
    for p in range(4):
        rows = [i for i, u in enumerate(users) if int(u[1:]) % 4 == p]
        pq.write_table(table.take(rows), folder / f"part-{p}.parquet")
        sizes.append(len(rows))
    assert max(sizes) > 2 * min(sizes), sizes  # uneven, as a Zipf stream gives
    return one, folder


def replay(repo: Path, events: Path, **knobs):
    result = run_replay(ReplayConfig(repo=repo, events=str(events), **knobs))
    assert result.stats.balanced(), result.stats.summary()
    return result


def skew_mismatches(repo: Path, events: Path) -> dict:
    report, _ = compute_report(repo, events, SkewOptions(), open_store(repo))
    return report["offline"][0]


def test_folder_of_uneven_parts_equals_one_file_with_the_defaults(split_events, tmp_path):
    one, folder = split_events
    a = replay(make_feast_repo(tmp_path / "one"), one)
    b_repo = make_feast_repo(tmp_path / "folder")
    b = replay(b_repo, folder)
    c_repo = make_feast_repo(tmp_path / "threads")
    c = replay(c_repo, folder, workers=2)
    for r in (a, b, c):
        assert r.stats.late == 0 and r.stats.corrections == 0, r.stats.summary()
    frame = offline_frame(tmp_path / "one")
    pd.testing.assert_frame_equal(frame, offline_frame(b_repo))
    pd.testing.assert_frame_equal(frame, offline_frame(c_repo))
    section = skew_mismatches(b_repo, folder)  # and equal to the DuckDB oracle
    assert section["mismatched_points"] == 0 and section["missing_rows"] == 0, section
    assert section["extra_rows"] == 0 and section["duplicate_rows"] == 0, section


def test_folder_replay_on_two_processes_equals_one_worker(split_events, tmp_path):
    _, folder = split_events
    single = make_feast_repo(tmp_path / "single")
    replay(single, folder)
    cluster = make_feast_repo(tmp_path / "cluster")
    ports = [free_port(), free_port()]
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
    env = {**os.environ, "FEAST_BYTEWAX_EVENTS": str(folder), "FEAST_BYTEWAX_REPO": str(cluster)}
    procs = [subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.replay", "-s", "30",
                               "-i", str(i), "-a", addresses],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    pd.testing.assert_frame_equal(offline_frame(single), offline_frame(cluster))
    dead = cluster / "data/dead_letters.jsonl"
    assert not dead.exists() or dead.read_text() == ""


def test_bytewax_runners_recovery_directory_reaches_the_flow(split_events, tmp_path):
    """`python -m bytewax.run dataflows.replay -r DIR`: the flow learns of the runner's
    recovery directory (`dataflow.runtime.with_runner_recovery`), so its shards store real
    state snapshots (without recovery they return an empty one), and the rows are those of
    `feast-bytewax replay`."""
    _, folder = split_events
    single = make_feast_repo(tmp_path / "single")
    replay(single, folder)
    repo = make_feast_repo(tmp_path / "runner")
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    env = {**os.environ, "FEAST_BYTEWAX_EVENTS": str(folder), "FEAST_BYTEWAX_REPO": str(repo)}
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.replay", "-r",
                           str(recovery), "-s", "1", "-b", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(offline_frame(single), offline_frame(repo))
    blobs = []
    for part in recovery.glob("*.sqlite3"):
        with sqlite3.connect(part) as db:
            blobs += [pickle.loads(b) for (b,) in db.execute(
                "SELECT ser_change FROM snaps WHERE step_id LIKE '%features_user_id' "
                "AND ser_change IS NOT NULL")]
    assert blobs and all(b != NO_SNAPSHOT for b in blobs), len(blobs)


def test_kafka_partitions_of_uneven_size_are_exact_on_one_and_two_workers(kafka_mock, tmp_path):
    events = stream(3000, 60, seed=43, late_fraction=0.0, jitter_s=0.4)
    topic = kafka_mock.new_topic("uneven")
    # keyed by user: Zipf makes the partitions uneven
    where = kafka_mock.produce(topic, [(e["user_id"].encode(), as_json(e), None) for e in events])
    per_part = pd.Series([p for p, _ in where]).value_counts()
    assert len(per_part) == 4 and per_part.max() > 1.5 * per_part.min()
    repos = []
    for workers in (1, 2):
        repo = make_feast_repo(tmp_path / f"w{workers}")
        result = run_live(LiveConfig(source=f"kafka://{kafka_mock.bootstrap}/{topic}",
                                     repo=repo, workers=workers, stop_at_end=True))
        assert result.stats.late == 0 and result.stats.consumed == len(events), \
            result.summary()
        check_rows(repo, [as_ref(e) for e in events])
        repos.append(repo)
    end = max(as_ref(e)["event_timestamp"] for e in events)
    a, b = (f[f["event_timestamp"] <= end].reset_index(drop=True)
            for f in (offline_frame(r) for r in repos))
    pd.testing.assert_frame_equal(a, b)


def test_an_outlier_clock_does_not_make_valid_events_late(tmp_path):
    """Finding 4: 3 events stamped now+200 s in a replay of old data pushed watermarks to
    today and 567 later valid events went late."""
    repo = make_feast_repo(tmp_path / "repo")
    path = tmp_path / "events.parquet"
    start = (datetime.now(UTC) - timedelta(days=30)).replace(microsecond=0)
    write_events(path, 3000, 40, seed=47, start=start, duration=timedelta(hours=4),
                 late_fraction=0.0, jitter_s=0.4)
    df = pd.read_parquet(path)
    bad = df.iloc[[100, 200, 300]].copy()
    bad["event_id"] = bad["event_id"] + 10_000_000
    bad["event_timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=200)
    mixed = pd.concat([df.iloc[:400], bad, df.iloc[400:]], ignore_index=True)
    pq.write_table(pa.Table.from_pandas(mixed, preserve_index=False), path)
    result = replay(repo, path)
    assert result.stats.late == 0 and result.stats.rejected == 3, result.stats.summary()
    lines = (repo / "data/dead_letters.jsonl").read_text().splitlines()
    dead = [json.loads(line) for line in lines]
    assert [d["code"] for d in dead] == ["outlier_timestamp"] * 3
    assert sorted(json.loads(d["payload"])["event_id"] for d in dead) == sorted(bad["event_id"])
    clean = tmp_path / "clean.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), clean)
    section = skew_mismatches(repo, clean)
    assert section["mismatched_points"] == 0 and section["extra_rows"] == 0, section


def test_duplicated_events_are_counted_and_change_nothing(tmp_path):
    """Finding 5: 500 duplicated events changed 2,010 rows and 16 users' online values."""
    path = tmp_path / "events.parquet"
    start = (datetime.now(UTC) - timedelta(hours=5)).replace(microsecond=0)
    write_events(path, 4000, 50, seed=53, start=start, duration=timedelta(hours=4),
                 late_fraction=0.0, jitter_s=0.4)
    df = pd.read_parquet(path)
    dup = df.sample(500, random_state=1)
    # the copies arrive a little later (inside the lateness horizon), as a retrying producer
    where = sorted(min(len(df), i + 50) for i in dup.index)
    parts, last = [], 0
    for w, (_, row) in zip(where, dup.sort_index().iterrows(), strict=True):
        parts += [df.iloc[last:w], row.to_frame().T]
        last = w
    parts.append(df.iloc[last:])
    with_dups = pd.concat(parts, ignore_index=True).astype(df.dtypes.to_dict())
    dup_path = tmp_path / "with_dups.parquet"
    pq.write_table(pa.Table.from_pandas(with_dups, preserve_index=False), dup_path)
    clean = replay(make_feast_repo(tmp_path / "clean"), path)
    dupped = replay(make_feast_repo(tmp_path / "dupped"), dup_path)
    assert dupped.stats.duplicates == 500 and dupped.stats.consumed == len(df) + 500
    assert dupped.stats.processed == clean.stats.processed
    pd.testing.assert_frame_equal(offline_frame(tmp_path / "clean"),
                                  offline_frame(tmp_path / "dupped"))
