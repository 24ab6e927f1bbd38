"""Life-cycle safety (issue 9): reruns, a new feature, dead letters and bad configurations, as
a user meets them, through the real commands. Crashes and restarts: test_crash.py.

Each check is against an oracle that shares no code with the stream: the DuckDB
recomputation of the skew report, the brute-force reference, or a run that did not rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from feast_bytewax.config import ReplayConfig
from feast_bytewax.dataflow.replay import run_replay
from feast_bytewax.dataflow.repo import apply_repo, open_store
from feast_bytewax.datagen.generate import write_events
from feast_bytewax.skew.report import SkewOptions, compute_report
from feast_bytewax.stores.parquet_folder import read_source_frame
from tests.conftest import make_feast_repo
from tests.e2e.checks import offline_frame
from tests.e2e.repos import copy_repo

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feast_bytewax.cli.main", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def stored_rows(repo: Path) -> pd.DataFrame:
    """Every visible row, superseded copies of an identity included."""
    store = open_store(repo)
    return read_source_frame(store.config, store.get_data_source("user_features_batch"),
                             keys=["user_id"], dedup=False)


def events(path: Path, n: int = 4000, seed: int = 61, **kw) -> Path:
    start = (datetime.now(UTC) - timedelta(hours=7)).replace(microsecond=0)
    write_events(path, n, 60, seed=seed, start=start, duration=timedelta(hours=6), **kw)
    return path


def test_replaying_the_same_file_twice_stores_every_row_once(tmp_path):
    """Finding 1: a second replay appended a second copy of every row."""
    repo = make_feast_repo(tmp_path / "repo")
    path = events(tmp_path / "events.parquet")
    run_replay(ReplayConfig(repo=repo, events=str(path)))
    once = offline_frame(repo)
    run_replay(ReplayConfig(repo=repo, events=str(path)))
    pd.testing.assert_frame_equal(offline_frame(repo), once)
    assert not stored_rows(repo).duplicated(["user_id", "event_timestamp"]).any()
    report, _ = compute_report(repo, path, SkewOptions(), open_store(repo))
    section = report["offline"][0]
    assert section["duplicate_rows"] == 0 and section["mismatched_points"] == 0, section


def test_demo_twice_then_skew_passes_with_no_duplicate(tmp_path):
    """Finding 1: `demo` twice regenerated the events but kept the old rows: skew FAIL."""
    repo = copy_repo(tmp_path / "repo")
    for _ in range(2):
        run = cli("demo", "--repo", str(repo), "--count", "3000", "--users", "80")
        assert run.returncode == 0, run.stderr[-3000:]
    skew = cli("skew", "--repo", str(repo), "--events", str(repo / "data/events.parquet"),
               "--out", str(repo / "data/skew"))
    assert skew.returncode == 0, skew.stdout + skew.stderr[-2000:]
    assert "PASS" in skew.stdout and "duplicates 0" in skew.stdout, skew.stdout
    assert not stored_rows(repo).duplicated(["user_id", "event_timestamp"]).any()


def test_bytewax_runner_replay_twice_stores_every_row_once(tmp_path):
    repo = make_feast_repo(tmp_path / "repo")
    path = events(tmp_path / "events.parquet", n=2000)
    env = {**os.environ, "FEAST_BYTEWAX_EVENTS": str(path), "FEAST_BYTEWAX_REPO": str(repo)}
    frames = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.replay", "-s",
                               "30"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        frames.append(offline_frame(repo))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert not stored_rows(repo).duplicated(["user_id", "event_timestamp"]).any()


SIXTH = '''
        Aggregation(
            column="amount",
            function="sum",
            time_window=timedelta(hours=2),
            slide_interval=MINUTE,
            name="sum_amount_2h",
        ),
'''


def test_adding_a_feature_is_an_edit_to_feast_repo_only(tmp_path):
    """Finding 3: add `sum_amount_2h`, apply, replay: `ValueError: batch columns do not match
    the existing parts' columns`, then a Rust abort."""
    repo = copy_repo(tmp_path / "repo")
    path = events(repo / "data/events.parquet")
    apply_repo(repo)
    run_replay(ReplayConfig(repo=repo, events=str(path)))
    features = repo / "feast_repo/features.py"
    text = features.read_text()
    text = text.replace('        Field(name="max_amount_24h", dtype=Float64),\n',
                        '        Field(name="max_amount_24h", dtype=Float64),\n'
                        '        Field(name="sum_amount_2h", dtype=Float64),\n')
    text = text.replace('            name="max_amount_24h",\n        ),\n',
                        '            name="max_amount_24h",\n        ),\n' + SIXTH, 1)
    features.write_text(text)
    apply_repo(repo)
    store = open_store(repo)
    entity_df = pd.DataFrame({"user_id": ["u000001"], "event_timestamp": [datetime.now(UTC)]})
    old = store.get_historical_features(
        entity_df, ["user_purchase_features:sum_amount_2h"]).to_df()
    assert old["sum_amount_2h"].isna().all()  # parts written before the feature: null
    result = run_replay(ReplayConfig(repo=repo, events=str(path)))
    assert result.stats.balanced(), result.stats.summary()
    report, _ = compute_report(repo, path, SkewOptions(), open_store(repo))
    section = report["offline"][0]
    assert "sum_amount_2h" in section["features"]
    assert section["mismatched_points"] == 0 and section["duplicate_rows"] == 0, section


def test_dead_letters_accumulate_and_keep_payloads_that_can_be_fed_back(tmp_path):
    """Finding 4: dead letters were overwritten on every run, and late entries lost their
    payload and stored times validation rejects."""
    repo = make_feast_repo(tmp_path / "repo")
    path = events(tmp_path / "events.jsonl", n=1500, bad_fraction=0.02, late_fraction=0.05)
    knobs = {"allowed_lateness": 30.0}
    first = run_replay(ReplayConfig(repo=repo, events=str(path), **knobs)).stats
    dead = repo / "data/dead_letters.jsonl"
    n1 = len(dead.read_text().splitlines())
    assert n1 == first.rejected + first.late > 0
    run_replay(ReplayConfig(repo=repo, events=str(path), **knobs))
    assert len(dead.read_text().splitlines()) == 2 * n1  # appended, not overwritten
    out = tmp_path / "redriven.jsonl"
    run = cli("redrive", "--repo", str(repo), "--out", str(out), "--kind", "late")
    assert run.returncode == 0, run.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 2 * first.late
    check = make_feast_repo(tmp_path / "check")
    again = run_replay(ReplayConfig(repo=check, events=str(out),
                                    dead_letters=tmp_path / "again.jsonl")).stats
    assert again.rejected == 0 and again.duplicates == first.late  # valid events, twice each
    with pytest.raises(Exception, match="dead-letter file this replay appends to"):
        run_replay(ReplayConfig(repo=repo, events=str(dead)))


@pytest.mark.parametrize(("args", "env", "expect"), [
    (["replay", "--events", "/no/such/file.parquet"], {}, "--events /no/such/file.parquet"),
    (["replay", "--repo", "/no/such/repo", "--events", "x.parquet"], {}, "no such directory"),
    (["replay", "--shards", "0", "--events", "x.parquet"], {}, "--shards / FEAST_BYTEWAX_SHARDS"),
    (["run", "--source", "kafka://127.0.0.1:1/ev"], {}, "cannot list partitions"),
    (["apply", "--repo", "/no/such/repo"], {}, "no such directory"),
])
def test_bad_configuration_is_one_line_not_a_panic(tmp_path, args, env, expect):
    """Finding 5: FEAST_REDIS unset, a missing events file (87 lines), --repo that does not
    exist, --shards 0, an unreachable broker (675 lines) ended in panics and SIGABRT."""
    repo = make_feast_repo(tmp_path / "repo")
    args = [a if a != "x.parquet" else str(tmp_path / "x.parquet") for a in args]
    if "--repo" not in args:
        args = [args[0], "--repo", str(repo), *args[1:]]
    run = cli(*args, env=env, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode not in (0, -6, 134) and run.returncode > 0, out
    assert expect in out, out
    assert "Traceback" not in out and "panicked" not in out, out
    assert len(run.stderr.strip().splitlines()) <= 3, run.stderr


@pytest.mark.parametrize(("old", "new", "expect"), [
    ('Field(name="purchase_count_30m", dtype=Int64)',
     'Field(name="purchase_count_30m", dtype=String)', "declare it Int64 or Float64"),
    ('Field(name="purchase_count_30m", dtype=Int64),',
     'Field(name="purchase_count_30m", dtype=Int64), Field(name="orphan", dtype=Float64),',
     "fields ['orphan'] have no Aggregation"),
])
def test_a_bad_definition_stops_the_demo_before_it_touches_the_data(tmp_path, old, new, expect):
    """A Field typed against its aggregation's result passed `apply` and poisoned the offline
    folder for good; a Field without an Aggregation passed `apply` and stopped the replay
    mid-run; and `demo` regenerated the data before it checked the definitions."""
    repo = copy_repo(tmp_path / "repo")
    features = repo / "feast_repo" / "features.py"
    text = features.read_text()
    assert old in text
    features.write_text(text.replace(old, new, 1))
    (repo / "data").mkdir()
    sentinel = repo / "data" / "events.parquet"
    sentinel.write_bytes(b"the previous run's events")
    for command in (["apply"], ["demo"]):
        run = cli(*command, "--repo", str(repo), timeout=120)
        out = run.stdout + run.stderr
        assert run.returncode == 1, out
        assert expect in out, out
        assert "Traceback" not in out, out
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert sentinel.read_bytes() == b"the previous run's events"
    assert not (repo / "data" / "registry.db").exists()  # nothing was registered


def test_unset_redis_variable_is_one_line(tmp_path):
    repo = copy_repo(tmp_path / "repo", (ROOT / "feature_store.redis.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "FEAST_REDIS"}
    proc = subprocess.run([sys.executable, "-m", "feast_bytewax.cli.main", "replay", "--repo",
                           str(repo), "--events", str(events(tmp_path / "e.parquet", n=200)),
                           "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "FEAST_REDIS" in proc.stderr and "not set" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr


def test_dead_letter_payload_of_a_late_event_validates(tmp_path):
    repo = make_feast_repo(tmp_path / "repo")
    path = events(tmp_path / "events.parquet", n=1500, late_fraction=0.05)
    stats = run_replay(ReplayConfig(repo=repo, events=str(path), allowed_lateness=30.0)).stats
    late = [json.loads(line) for line in (repo / "data/dead_letters.jsonl").read_text()
            .splitlines() if '"late"' in line]
    assert len(late) == stats.late > 0
    assert all(rec["payload"]["event_timestamp"].endswith("+00:00") for rec in late)
