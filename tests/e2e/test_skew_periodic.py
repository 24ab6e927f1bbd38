"""`feast-bytewax skew --since ... --until ... --metrics-file F`: the periodic check of a
recent window, on a real replay.

One replay (a few thousand generated events over 6 h, with late ones) feeds every test; a
window of one hour in its middle is checked. Clean: PASS, exit 0, the gauges in F. Rows
corrupted inside the window: FAIL, exit 1, the mismatch rate in F. Rows corrupted outside
it only (after it, or before it but superseded before it starts): still PASS. The window's
values need the events of the longest window (24 h) before it: read from the window's start
only, the recomputation disagrees.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_feast_repo
from tests.e2e.test_skew import _serve_everyone

pytestmark = pytest.mark.e2e

OFFLINE = Path("data/offline/user_features")
FEATURE = "max_amount_24h"


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> tuple[Path, datetime]:
    """A repo after replaying ~4k events (60 users, 6 h from `start`, 3% late)."""
    from feast_bytewax.config import ReplayConfig
    from feast_bytewax.dataflow.replay import run_replay
    from feast_bytewax.datagen.generate import write_events

    repo = make_feast_repo(tmp_path_factory.mktemp("skew_periodic") / "repo")
    start = (datetime.now(UTC) - timedelta(hours=8)).replace(microsecond=0)
    write_events(repo / "data/events.parquet", 4000, 60, seed=13, start=start,
                 duration=timedelta(hours=6), late_fraction=0.03)
    result = run_replay(ReplayConfig(repo=repo, flush_rows=400,
                                     events=str(repo / "data/events.parquet")))
    assert result.stats.balanced() and result.stats.corrections > 0
    return repo, start


def window(start: datetime) -> tuple[datetime, datetime]:
    return start + timedelta(hours=3), start + timedelta(hours=4)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def run_cli(repo: Path, since: datetime, until: datetime, *extra: str) -> tuple[int, dict, dict]:
    """Exit code, the JSON report, and the metrics file's samples."""
    from feast_bytewax.cli.main import main

    out, prom = repo / "data/skew", repo / "data/metrics/skew.prom"
    code = main(["skew", "--repo", str(repo), "--events", str(repo / "data/events.parquet"),
                 "--out", str(out), "--since", iso(since), "--until", iso(until),
                 "--metrics-file", str(prom), *extra])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(prom.read_text())
               for s in fam.samples}
    return code, json.loads((out / "skew_report.json").read_text()), samples


def offline_rate(samples: dict) -> float:
    (rate,) = [v for (n, labels), v in samples.items()
               if n == "feast_bytewax_skew_mismatch_rate" and ("check", "offline") in labels]
    return rate


def copy_of(repo: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    shutil.copytree(repo, dst)
    return dst


def rows(repo: Path) -> pd.DataFrame:
    df = pd.read_parquet(repo / OFFLINE)
    df["__ts"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return df


def tamper(repo: Path, pick) -> int:
    """Add 7 to FEATURE in the rows `pick(frame) -> bool mask` selects, in every part."""
    n = 0
    for f in sorted((repo / OFFLINE).glob("*.parquet")):
        t = pq.read_table(f)
        df = t.to_pandas()
        m = np.asarray(pick(df.assign(__ts=pd.to_datetime(df["event_timestamp"], utc=True))))
        if m.any():
            df.loc[m, FEATURE] = df.loc[m, FEATURE] + 7
            pq.write_table(pa.Table.from_pandas(df, schema=t.schema, preserve_index=False), f)
            n += int(m.sum())
    return n


def test_clean_window_passes_and_writes_the_gauges(replayed):
    repo, start = replayed
    since, until = window(start)
    code, report, samples = run_cli(repo, since, until)
    assert code == 0
    (off,) = report["offline"]
    r = rows(repo)
    inside = int(((r["__ts"] >= since) & (r["__ts"] < until)).sum())
    # only the window's rows are checked, with the events of the 24 h before it
    assert off["rows"] == inside and 100 < inside < len(r) / 2
    assert off["points_compared"] > inside
    assert off["mismatched_points"] == 0 and off["duplicate_rows"] == 0
    assert report["window"] == {"since": iso(since), "until": iso(until),
                                "events_read_from": iso(since - timedelta(hours=24))}
    assert report["threshold"]["passed"] is True
    assert offline_rate(samples) == 0.0
    assert samples[("feast_bytewax_skew_passed", ())] == 1
    assert samples[("feast_bytewax_skew_rows_checked",
                    (("check", "offline"), ("source", off["source"])))] == inside
    assert samples[("feast_bytewax_skew_window_start_timestamp_seconds", ())] == \
        since.timestamp()
    assert samples[("feast_bytewax_skew_window_end_timestamp_seconds", ())] == \
        until.timestamp()
    assert abs(samples[("feast_bytewax_skew_last_run_timestamp_seconds", ())]
               - datetime.now(UTC).timestamp()) < 120


def test_rows_corrupted_inside_the_window_fail_with_the_rate_in_the_metrics(replayed,
                                                                             tmp_path):
    repo = copy_of(replayed[0], tmp_path)
    since, until = window(replayed[1])
    mid = since + timedelta(minutes=30)
    assert tamper(repo, lambda df: (df["__ts"] >= mid) & (df["__ts"] < until)
                  & (df[FEATURE] > 0)) > 5
    code, report, samples = run_cli(repo, since, until)
    assert code == 1
    (off,) = report["offline"]
    assert off["features"][FEATURE]["mismatched"] > 5
    assert off["features"][FEATURE]["max_abs_error"] == pytest.approx(7)
    assert 0 < offline_rate(samples) == pytest.approx(off["mismatch_rate"])
    assert samples[("feast_bytewax_skew_passed", ())] == 0
    assert samples[("feast_bytewax_skew_feature_mismatch_rate",
                    (("check", "offline"), ("feature", FEATURE),
                     ("view", "user_purchase_features")))] > 0
    # the same store, a window before the damage: PASS
    code, _, samples = run_cli(repo, since, mid)
    assert code == 0 and offline_rate(samples) == 0.0


def test_rows_corrupted_outside_the_window_only_still_pass(replayed, tmp_path):
    repo = copy_of(replayed[0], tmp_path)
    since, until = window(replayed[1])
    r = rows(repo).sort_values("__ts", kind="stable")
    # before the window, every row but each key's last one (that one is the store's value
    # at the window's start, see the next test); and every row from the window's end on
    last_before = set(r.loc[r["__ts"] < since].groupby("user_id").tail(1)
                      .apply(lambda x: (x["user_id"], x["__ts"]), axis=1))
    n = tamper(repo, lambda df: ((df["__ts"] < since) & ~pd.Series(
        list(zip(df["user_id"], df["__ts"], strict=True))).isin(last_before).to_numpy())
        | (df["__ts"] >= until))
    assert n > 100
    code, report, samples = run_cli(repo, since, until)
    assert code == 0, report["offline"][0]["examples"]
    assert offline_rate(samples) == 0.0
    # the full check sees the damage
    from feast_bytewax.cli.main import main

    assert main(["skew", "--repo", str(repo), "--events", str(repo / "data/events.parquet"),
                 "--out", str(repo / "data/skew_all")]) == 1


def test_the_row_carried_into_the_window_is_judged(replayed, tmp_path):
    """A key's last row before the window is its stored value at the window's start: a wrong
    one is a mismatch of the window (until the key's next row)."""
    repo = copy_of(replayed[0], tmp_path)
    since, until = window(replayed[1])
    r = rows(repo)
    before = r.loc[(r["__ts"] < since) & (r[FEATURE] > 0)].sort_values("__ts")
    victim = before.iloc[-1]
    assert tamper(repo, lambda df: (df["user_id"] == victim["user_id"])
                  & (df["__ts"] == victim["__ts"])) == 1
    code, report, _ = run_cli(repo, since, until)
    assert code == 1
    (off,) = report["offline"]
    assert off["worst_keys"][0]["key"] == victim["user_id"]
    assert off["by_class"]["wrong_value"] == 0  # no row in the window is wrong: carried


def test_the_lookback_is_what_makes_the_window_exact(replayed, monkeypatch):
    """Read from the window's start only, the 24 h features miss their earlier events and
    the sessions open at its start are cut. With the lookback gone but the session rule
    kept, the read still moves back (users here browse every few minutes: their sessions
    chain back to the stream's start) and the window is exact again."""
    from feast_bytewax.dataflow.repo import open_store
    from feast_bytewax.skew import window as window_module
    from feast_bytewax.skew.report import SkewOptions, compute_report
    from feast_bytewax.timeutil import to_us

    repo, start = replayed
    since, until = window(start)
    opts = SkewOptions(window_start_us=to_us(since), window_end_us=to_us(until))
    monkeypatch.setattr(window_module, "read_start", lambda ws, spec: ws)
    report, _ = compute_report(repo, repo / "data/events.parquet", opts, open_store(repo))
    assert report["offline"][0]["mismatched_points"] == 0
    read_from = datetime.fromisoformat(report["window"]["events_read_from"])
    assert read_from <= start
    monkeypatch.setattr(window_module, "session_cut", lambda *a: False)
    report, _ = compute_report(repo, repo / "data/events.parquet", opts, open_store(repo))
    assert report["window"]["events_read_from"] == iso(since)
    feats = report["offline"][0]["features"]
    assert feats[FEATURE]["mismatched"] > 0
    assert feats["distinct_categories_session"]["mismatched"] > 0


def test_served_vectors_in_the_window_are_checked(replayed, tmp_path):
    """Logged vectors count when their value's timestamp is in the window (a NOT_FOUND one:
    when it was served): a window over the stream's last hour up to now holds the users
    whose newest row is in it, and the unknown user served now; a tampered one fails it."""
    repo = copy_of(replayed[0], tmp_path)
    served = _serve_everyone(repo)
    since = replayed[1] + timedelta(hours=5)
    until = datetime.now(UTC) + timedelta(minutes=1)
    code, report, samples = run_cli(repo, since, until)
    logged = report["logged"]
    newest = rows(repo).groupby("user_id")["__ts"].max()
    assert logged["vectors"] == int((newest >= since).sum()) + 1 < served
    assert logged["not_found_values"] == 5  # the unknown user's five features
    assert code == 0 and logged["mismatched_vectors"] == 0
    lg = (("check", "logged"), ("source", "user_fraud_features"))
    assert samples[("feast_bytewax_skew_rows_checked", lg)] == logged["vectors"]
    assert samples[("feast_bytewax_skew_mismatch_rate", lg)] == 0.0
    # a window before every served value's timestamp checks none of them
    _, report, samples = run_cli(repo, replayed[1], replayed[1] + timedelta(hours=1))
    assert report["logged"]["vectors"] == 0
    assert not [k for k in samples if ("check", "logged") in k[1]]
    # one served value tampered: FAIL, the logged rate in the metrics
    col = "user_purchase_features__max_amount_24h"
    f = max((repo / "data/feature_logs/user_fraud_features").glob("*.parquet"),
            key=lambda p: pq.read_metadata(p).num_rows)
    t = pq.read_table(f)
    df = t.to_pandas()
    ts = pd.to_datetime(df[f"{col}__timestamp"], utc=True)
    row = int(np.flatnonzero((ts >= since).to_numpy() & df[col].notna().to_numpy())[0])
    df.loc[row, col] = df.loc[row, col] + 7
    pq.write_table(pa.Table.from_pandas(df, schema=t.schema, preserve_index=False), f)
    code, report, samples = run_cli(repo, since, until)
    assert code == 1 and report["logged"]["mismatched_vectors"] == 1
    assert samples[("feast_bytewax_skew_mismatch_rate", lg)] == \
        pytest.approx(1 / report["logged"]["vectors"])
