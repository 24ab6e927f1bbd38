"""`feast-bytewax skew` on a real replay: clean data reports nothing, injected skew is found.

One replay (a few thousand generated events with late ones, so corrections happen) feeds
every test; each tamper works on a copy of the repo. Injected skew: a dropped offline part
file, a user's rows dropped, one value changed, a wrong window in the definition the batch
side reads, a tampered logged (served) value.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_feast_repo

pytestmark = pytest.mark.e2e

OFFLINE = Path("data/offline/user_features")
LOGGING_YAML = """
provider: feast_bytewax.stores.feature_logging.LoggingProvider
feast_bytewax_logging:
  flush_interval_s: 0.2
"""


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> Path:
    """A repo after replaying ~4k events (60 users, 6 h, 3% late) in small flushes."""
    from feast_bytewax.config import ReplayConfig
    from feast_bytewax.dataflow.replay import run_replay
    from feast_bytewax.datagen.generate import write_events

    repo = make_feast_repo(tmp_path_factory.mktemp("skew") / "repo")
    start = (datetime.now(UTC) - timedelta(hours=8)).replace(microsecond=0)
    write_events(repo / "data/events.parquet", 4000, 60, seed=11, start=start,
                 duration=timedelta(hours=6), late_fraction=0.03)
    result = run_replay(ReplayConfig(repo=repo, flush_rows=400,
                                     events=str(repo / "data/events.parquet")))
    assert result.stats.balanced()
    assert result.stats.corrections > 0
    return repo


def copy_of(repo: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(repo, dst)
    return dst


def report_for(repo: Path, spec=None, **opts):
    from feast_bytewax.dataflow.repo import open_store
    from feast_bytewax.skew.report import SkewOptions, compute_report

    report, plots = compute_report(repo, repo / "data/events.parquet", SkewOptions(**opts),
                                   open_store(repo), spec=spec)
    return report, plots


def run_cli(repo: Path, *extra: str) -> tuple[int, dict]:
    from feast_bytewax.cli.main import main

    out = repo / "data/skew"
    code = main(["skew", "--repo", str(repo), "--events", str(repo / "data/events.parquet"),
                 "--out", str(out), *extra])
    return code, json.loads((out / "skew_report.json").read_text())


def parts(repo: Path) -> list[Path]:
    return sorted((repo / OFFLINE).glob("*.parquet"))


# --- clean -------------------------------------------------------------------------------


def test_clean_replay_reports_zero_mismatches(replayed):
    code, report = run_cli(replayed)
    assert code == 0
    (off,) = report["offline"]
    assert off["rows"] > 1000
    assert off["mismatched_points"] == 0
    assert off["missing_rows"] == 0 and off["extra_rows"] == 0
    assert off["duplicate_rows"] == 0 and off["rows_after_horizon"] == 0
    assert off["missing_keys"]["count"] == 0 and off["extra_keys"]["count"] == 0
    assert off["unverified_points"] == 0
    assert all(f["mismatched"] == 0 for f in off["features"].values())
    # the lateness model was exercised: corrections, shadows, and points where the stream's
    # value differs from the all-on-time value
    ev = report["event_log"]
    assert ev["corrections"] > 0 and ev["shadow_points"] > 0
    assert off["lateness"]["points_differing_from_ideal"] > 0
    assert report["threshold"]["passed"] is True
    html = (replayed / "data/skew/skew_report.html").read_text()
    assert html.count("<svg") == 5 and "PASS" in html


def test_ideal_truth_attributes_differences_to_lateness(replayed):
    report, _ = report_for(replayed, truth="ideal")
    (off,) = report["offline"]
    assert off["mismatched_points"] == 0
    assert off["lateness"]["explained_by_lateness"] > 0


def test_ignoring_lateness_would_report_skew(replayed):
    """With a visibility model that does not match the run (a huge watermark delay: no
    event is ever a correction) the recomputation disagrees: the model is what makes a
    clean run clean."""
    report, _ = report_for(replayed, watermark_delay_us=10 ** 12)
    assert report["event_log"]["corrections"] == 0
    assert report["offline"][0]["mismatched_points"] > 0


# --- injected skew -----------------------------------------------------------------------


def test_deleted_part_file_is_detected(replayed, tmp_path):
    repo = copy_of(replayed, tmp_path)
    files = parts(repo)
    assert len(files) >= 3
    gone = pq.read_table(files[1]).num_rows
    files[1].unlink()
    code, report = run_cli(repo)
    assert code == 1
    (off,) = report["offline"]
    assert off["rows"] == sum(pq.read_metadata(f).num_rows for f in parts(repo))
    assert off["missing_rows"] > 0
    assert off["by_class"]["missing_row"] > 0
    assert off["mismatched_points"] >= min(gone, 1)
    assert report["threshold"]["passed"] is False


def test_dropped_user_rows_are_detected(replayed, tmp_path):
    repo = copy_of(replayed, tmp_path)
    df = pd.read_parquet(repo / OFFLINE)
    victim = df["user_id"].value_counts().index[2]
    for f in parts(repo):
        t = pq.read_table(f).to_pandas()
        pq.write_table(pq.read_table(f).filter(
            pd.Series(t["user_id"] != victim).to_numpy()), f)
    report, _ = report_for(repo)
    (off,) = report["offline"]
    assert off["missing_keys"]["examples"] == [victim]
    assert off["worst_keys"][0]["key"] == victim
    assert {w["key"] for w in off["worst_keys"]} == {victim}
    assert off["missing_rows"] > 0


def test_one_tampered_value_is_detected(replayed, tmp_path):
    repo = copy_of(replayed, tmp_path)
    f = parts(repo)[0]
    t = pq.read_table(f)
    df = t.to_pandas()
    i = int(df["purchase_count_30m"].to_numpy().argmax())
    df.loc[i, "purchase_count_30m"] += 5
    pq.write_table(pa.Table.from_pandas(df, schema=t.schema, preserve_index=False), f)
    report, plots = report_for(repo)
    (off,) = report["offline"]
    feats = off["features"]
    assert feats["purchase_count_30m"]["mismatched"] >= 1
    assert feats["purchase_count_30m"]["max_abs_error"] == 5
    assert all(feats[n]["mismatched"] == 0 for n in feats if n != "purchase_count_30m")
    assert off["by_class"]["wrong_value"] == 1
    assert off["worst_keys"][0]["key"] == df.loc[i, "user_id"]
    ex = off["examples"][0]
    assert ex["key"] == df.loc[i, "user_id"] and ex["class"] == "wrong_value"
    assert any(plots["purchase_count_30m"]["mismatch"])


def test_wrong_window_in_the_definition_is_detected(replayed):
    """The batch side reads a definition whose 30 min window became 20 min (as if the stream
    had run another version of feast_repo/): that feature, and only it, disagrees."""
    from feast_bytewax.dataflow.repo import open_store
    from feast_bytewax.features.spec import load_spec

    spec = load_spec(open_store(replayed))
    wrong = replace(spec, features=tuple(
        replace(f, window_us=20 * 60 * 1_000_000) if f.name == "purchase_count_30m" else f
        for f in spec.features))
    report, _ = report_for(replayed, spec=wrong)
    feats = report["offline"][0]["features"]
    assert feats["purchase_count_30m"]["mismatch_rate"] > 0.01
    assert all(feats[n]["mismatched"] == 0 for n in feats if n != "purchase_count_30m")


def test_threshold_allows_a_tolerated_rate(replayed, tmp_path):
    repo = copy_of(replayed, tmp_path)
    parts(repo)[1].unlink()
    code, report = run_cli(repo, "--max-mismatch-rate", "0.99")
    assert code == 0
    assert 0 < report["threshold"]["observed_mismatch_rate"] <= 0.99


# --- served vectors (feature logs) -------------------------------------------------------


def _serve_everyone(repo: Path) -> int:
    from feast import FeatureStore

    text = (repo / "feature_store.yaml").read_text()
    text = text.replace("provider: local\n", "")
    (repo / "feature_store.yaml").write_text(text + LOGGING_YAML)
    store = FeatureStore(repo_path=str(repo))
    service = store.get_feature_service("user_fraud_features")
    users = sorted(pd.read_parquet(repo / "data/events.parquet")["user_id"].unique())
    for i in range(0, len(users), 5):
        store.get_online_features(features=service,
                                  entity_rows=[{"user_id": u} for u in users[i:i + 5]])
    store.get_online_features(features=service, entity_rows=[{"user_id": "never_seen"}])
    provider = store._get_provider()
    provider.flush_feature_logs()
    assert provider.feature_log.stats["rows_written"] == len(users) + 1
    return len(users) + 1


def test_served_vectors_are_checked_and_a_tampered_one_is_found(replayed, tmp_path):
    repo = copy_of(replayed, tmp_path)
    served = _serve_everyone(repo)
    report, _ = report_for(repo)
    logged = report["logged"]
    assert logged["vectors"] == served
    assert logged["mismatched_vectors"] == 0
    assert logged["not_found_values"] == 5  # never_seen: five NOT_FOUND values, truth empty
    assert logged["missing_online"] == 0
    # tamper one served value in the log files
    col = "user_session_features__distinct_categories_session"
    f = max((repo / "data/feature_logs/user_fraud_features").glob("*.parquet"),
            key=lambda p: pq.read_table(p).column(col).to_pandas().fillna(0).max())
    t = pq.read_table(f)
    df = t.to_pandas()
    row = int(df[col].fillna(0).to_numpy().argmax())
    df.loc[row, col] = df.loc[row, col] + 2
    pq.write_table(pa.Table.from_pandas(df, schema=t.schema, preserve_index=False), f)
    from feast_bytewax.cli.main import main

    code = main(["skew", "--repo", str(repo), "--events", str(repo / "data/events.parquet"),
                 "--out", str(repo / "data/skew2")])
    assert code == 1
    logged = json.loads((repo / "data/skew2/skew_report.json").read_text())["logged"]
    assert logged["mismatched_vectors"] == 1
    assert logged["features"]["distinct_categories_session"]["max_abs_error"] == 2
    assert logged["examples"][0]["key"] == df.loc[row, "user_id"]
