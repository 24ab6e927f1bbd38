"""Synthetic profile versions and category risk: schema, determinism, the point-in-time shapes
a stream-table join must handle, and the `generate` command writing them next to the events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from feast_bytewax.cli.main import cli
from feast_bytewax.datagen.generate import CATEGORIES, DEFAULT_START, generate_columns
from feast_bytewax.datagen.profiles import (
    EXTRA_CATEGORIES,
    SEGMENTS,
    generate_category_risk,
    generate_profiles,
    profile_counts,
    user_ids,
    write_category_risk,
    write_profiles,
)
from feast_bytewax.timeutil import td_us, to_us

START = datetime(2026, 10, 1, tzinfo=UTC)
DUR = timedelta(hours=6)
TS = pa.timestamp("us", tz="UTC")


def arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(user ids as objects, updated_at as epoch us), sorted by user then time."""
    uid = np.asarray(table.column("user_id").to_pylist(), dtype=object)
    t = table.column("updated_at").cast(pa.int64()).to_numpy()
    order = np.lexsort((t, uid))
    return uid[order], t[order]


def test_schema_is_exact():
    tb = generate_profiles(300, START, DUR, seed=1)
    assert tb.schema == pa.schema([
        ("user_id", pa.string()), ("account_age_days", pa.int32()),
        ("credit_score", pa.int32()), ("segment", pa.string()), ("updated_at", TS),
    ])
    risk = generate_category_risk(1)
    assert risk.schema == pa.schema([("category", pa.string()), ("risk", pa.float64()),
                                     ("event_timestamp", TS)])


def test_deterministic_per_seed():
    a = generate_profiles(500, START, DUR, seed=3)
    assert a.equals(generate_profiles(500, START, DUR, seed=3))
    assert not a.equals(generate_profiles(500, START, DUR, seed=4))
    assert generate_category_risk(3).equals(generate_category_risk(3))
    assert not generate_category_risk(3).equals(generate_category_risk(4))


def test_rows_are_in_changelog_order():
    t = generate_profiles(400, START, DUR, seed=2).column("updated_at").cast(pa.int64())
    assert (np.diff(t.to_numpy()) >= 0).all()


def test_no_tied_versions_and_history_moves_forward():
    tb = generate_profiles(3000, START, DUR, seed=5)
    uid = np.asarray(tb.column("user_id").to_pylist(), dtype=object)
    t = tb.column("updated_at").cast(pa.int64()).to_numpy()
    age = tb.column("account_age_days").to_numpy()
    seg = np.array([SEGMENTS.index(s) for s in tb.column("segment").to_pylist()])
    order = np.lexsort((t, uid))
    uid, t, age, seg = uid[order], t[order], age[order], seg[order]
    same = uid[1:] == uid[:-1]
    assert same.any()  # some users have several versions
    assert (np.diff(t)[same] > 0).all()  # strictly later: no (user_id, updated_at) twice
    assert (np.diff(age)[same] >= 0).all()  # age grows with updated_at
    assert (np.diff(seg)[same] >= 0).all()  # new -> regular -> vip, never back


def test_ids_are_the_event_generators_plus_a_few_without_events():
    n = 1000
    cols = generate_columns(2000, n, START, DUR, seed=7)
    assert user_ids(n) == cols.user_ids.tolist()
    ids = set(generate_profiles(n, START, DUR, seed=7).column("user_id").to_pylist())
    assert set(cols.user_ids.tolist()) <= ids  # every event user has a history
    extra = ids - set(cols.user_ids.tolist())
    assert len(extra) == 10 and all(len(u) == 7 and u.startswith("u") for u in extra)
    assert user_ids(1_000_001)[-1] == "u1000000"
    given = ["alice", "bob", "carol"]
    tb = generate_profiles(given, START, DUR, seed=7, late_first_fraction=0)
    assert set(tb.column("user_id").to_pylist()) == set(given)
    with pytest.raises(ValueError):
        generate_profiles(["a", "a"], START, DUR)


def test_phases_relative_to_the_stream():
    n = 5000
    tb = generate_profiles(n, START, DUR, seed=11)
    c = profile_counts(tb, START, DUR)
    assert c["users"] == n + 50
    assert c["before_start"] + c["during"] + c["after_end"] == c["versions"] == tb.num_rows
    # ~10% first appear during the stream: no valid profile for their early events
    assert 0.07 < c["users_without_version_at_start"] / c["users"] < 0.13
    assert c["during"] > 0.3 * n  # late signups and updates inside the window
    assert 0.05 * n < c["after_end"] < 0.15 * n
    t = tb.column("updated_at").cast(pa.int64()).to_numpy()
    start_us, end_us = to_us(START), to_us(START + DUR)
    assert t.min() >= start_us - td_us(timedelta(days=30))
    assert t.max() <= end_us + td_us(timedelta(days=7))
    assert not (t == start_us).any()  # "before" means strictly before


def test_value_ranges():
    tb = generate_profiles(5000, START, DUR, seed=13)
    score = tb.column("credit_score").to_numpy()
    assert score.min() >= 300 and score.max() <= 850
    assert (score < 580).mean() > 0.03  # some users with low scores
    age = tb.column("account_age_days").to_numpy()
    assert age.min() >= 0 and (age < 30).any() and (age > 365).any()
    segs = tb.column("segment").to_pylist()
    assert set(segs) == set(SEGMENTS)
    ages_of_new = age[np.array(segs) == "new"]
    assert (ages_of_new < 30).all()


def test_point_in_time_join_differs_from_newest_wins():
    """The shapes must matter: an as-of join finds nulls and older versions."""
    n = 300
    cols = generate_columns(20_000, n, START, DUR, seed=7)
    uid, t = arrays(generate_profiles(n, START, DUR, seed=7))
    key = np.searchsorted(uid, cols.user_ids[cols.user_idx])
    # per event: index of the latest version with updated_at <= event time, per user
    first = np.searchsorted(uid, cols.user_ids)
    last = np.searchsorted(uid, cols.user_ids, side="right") - 1
    no_profile = newer_exists = 0
    for row in range(len(cols)):
        u = cols.user_idx[row]
        lo, hi = first[u], last[u]
        j = lo + np.searchsorted(t[lo:hi + 1], cols.ts_us[row], side="right") - 1
        no_profile += j < lo
        newer_exists += lo <= j < hi
    assert (uid[key] == cols.user_ids[cols.user_idx]).all()
    assert no_profile > 0 and newer_exists > 0


def test_category_risk_covers_every_category():
    tb = generate_category_risk(7)
    cats = tb.column("category").to_pylist()
    assert cats == [*CATEGORIES, *EXTRA_CATEGORIES] and len(set(cats)) == len(cats)
    assert len(EXTRA_CATEGORIES) == 2 and not set(EXTRA_CATEGORIES) & set(CATEGORIES)
    risk = tb.column("risk").to_numpy()
    assert ((risk >= 0) & (risk <= 1)).all()
    assert (risk[: len(CATEGORIES)] >= 0.8).sum() == round(0.3 * len(CATEGORIES))
    ts = set(tb.column("event_timestamp").to_pylist())
    assert ts == {DEFAULT_START - timedelta(days=1)}
    as_of = START - timedelta(hours=1)
    assert set(generate_category_risk(7, as_of=as_of).column("event_timestamp").to_pylist()) \
        == {as_of}


def test_writers_are_atomic_and_replace(tmp_path):
    p = tmp_path / "sub" / "profiles.parquet"
    a = generate_profiles(100, START, DUR, seed=1)
    assert write_profiles(p, a) == p
    b = generate_profiles(100, START, DUR, seed=2)
    write_profiles(p, b)
    assert pq.read_table(p).equals(b)
    r = write_category_risk(tmp_path / "risk.parquet", generate_category_risk(1))
    assert pq.read_table(r).equals(generate_category_risk(1))
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["profiles.parquet", "risk.parquet",
                                                           "sub"]


def test_cli_writes_both_next_to_the_events(tmp_path):
    out = tmp_path / "data" / "events.parquet"
    args = ["generate", "--out", str(out), "--count", "2000", "--users", "80", "--seed", "5",
            "--start", "2026-10-01T00:00:00Z", "--hours", "6"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and "events" in lines[0]
    assert "profile versions" in lines[1] and "category risks" in lines[2]
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "category_risk.parquet", "events.parquet", "profiles.parquet"]
    prof = pq.read_table(out.parent / "profiles.parquet")
    assert prof.equals(generate_profiles(80, START, DUR, seed=5))
    risk = pq.read_table(out.parent / "category_risk.parquet")
    assert risk.equals(generate_category_risk(5, as_of=START - timedelta(days=1)))
    assert set(pq.read_table(out).column("user_id").to_pylist()) <= set(
        prof.column("user_id").to_pylist())


def test_cli_profile_paths_are_options(tmp_path):
    out = tmp_path / "ev.jsonl"
    prof, risk = tmp_path / "ref" / "p.parquet", tmp_path / "ref" / "r.parquet"
    result = CliRunner().invoke(cli, ["generate", "--out", str(out), "--count", "300",
                                      "--users", "20", "--profiles", str(prof),
                                      "--category-risk", str(risk)])
    assert result.exit_code == 0, result.output
    assert str(prof) in result.output and str(risk) in result.output
    assert pq.read_table(prof).equals(generate_profiles(20, DEFAULT_START, timedelta(hours=24)))
    assert pq.read_table(risk).num_rows == len(CATEGORIES) + 2
    assert not (tmp_path / "profiles.parquet").exists()
    help_text = " ".join(CliRunner().invoke(cli, ["generate", "--help"]).output.split())
    assert "--profiles PATH" in help_text and "--category-risk PATH" in help_text
    assert "FEAST_BYTEWAX_CATEGORY_RISK" in help_text
