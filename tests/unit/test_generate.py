"""Synthetic event generator: determinism, realistic shapes, file formats."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feast_bytewax.datagen.generate import (
    BAD_KINDS,
    CATEGORIES,
    DEFAULT_START,
    BadLine,
    generate_columns,
    generate_events,
    write_events,
)
from feast_bytewax.ingest.validate import parse_json
from feast_bytewax.records import Event, Rejected, reason_code
from feast_bytewax.timeutil import to_us, utc_now_us

START = datetime(2026, 10, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000


def cols_equal(a, b) -> bool:
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("event_id", "user_idx", "type_idx", "amount", "category_idx", "ts_us", "late")
    )


def test_deterministic_per_seed():
    a = generate_columns(5000, 200, START, timedelta(hours=2), seed=3)
    b = generate_columns(5000, 200, START, timedelta(hours=2), seed=3)
    c = generate_columns(5000, 200, START, timedelta(hours=2), seed=4)
    assert cols_equal(a, b)
    assert not np.array_equal(a.ts_us, c.ts_us)
    assert not np.array_equal(a.user_idx, c.user_idx)
    ev_a = list(generate_events(300, 20, START, timedelta(hours=1), seed=9))
    ev_b = list(generate_events(300, 20, START, timedelta(hours=1), seed=9))
    assert ev_a == ev_b


def test_files_are_byte_identical_per_seed(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        write_events(tmp_path / name, 2000, 50, seed=11, bad_fraction=0.02)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_bad_fraction_does_not_change_good_events():
    a = generate_columns(3000, 100, START, timedelta(hours=1), seed=5)
    b = generate_columns(3000, 100, START, timedelta(hours=1), seed=5, bad_fraction=0.1)
    assert cols_equal(a, b)
    assert (b.bad_kind >= 0).sum() > 100


def test_counts_and_time_range():
    dur = timedelta(hours=3)
    c = generate_columns(20_000, 500, START, dur, seed=1)
    assert len(c) == 20_000
    assert sorted(c.event_id.tolist()) == list(range(20_000))
    assert c.ts_us.min() >= to_us(START)
    assert c.ts_us.max() < to_us(START + dur)
    # event ids follow event time
    by_id = np.argsort(c.event_id)
    assert (np.diff(c.ts_us[by_id]) >= 0).all()
    # rows are in arrival order
    assert (np.diff(c.arrival_us) >= 0).all()
    assert (c.arrival_us >= c.ts_us).all()


def test_zipf_skew():
    n_users, s = 1000, 1.1
    c = generate_columns(100_000, n_users, START, timedelta(hours=6), seed=2, zipf_s=s)
    counts = np.sort(np.bincount(c.user_idx, minlength=n_users))[::-1]
    expected_top = 1.0 / (np.arange(1, n_users + 1) ** -s).sum()  # ~0.17
    top = counts[0] / len(c)
    # sessions (not events) are drawn per user, so allow session-size noise
    assert expected_top * 0.7 < top < expected_top * 1.3
    assert counts[:10].sum() / len(c) > 0.35  # top 1% of users: over a third of the events
    assert (counts > 0).sum() < n_users  # a long tail of users never seen
    # the hot user is a seeded permutation, not simply user 0
    hot = {
        int(
            np.argmax(
                np.bincount(
                    generate_columns(5000, n_users, START, timedelta(hours=1), seed=k).user_idx
                )
            )
        )
        for k in range(5)
    }
    assert len(hot) > 1


def test_event_mix_amounts_and_categories():
    c = generate_columns(50_000, 300, START, timedelta(hours=6), seed=8)
    types = np.array(c.event_types)[c.type_idx]
    share = {t: float((types == t).mean()) for t in c.event_types}
    for t, p in {"view": 0.70, "purchase": 0.15, "login_ok": 0.10, "login_failed": 0.05}.items():
        assert abs(share[t] - p) < 0.01, (t, share[t])
    purchase = types == "purchase"
    assert (c.amount[~purchase] == 0).all()
    amts = c.amount[purchase]
    assert (amts > 0).all()
    assert np.allclose(amts, np.round(amts, 2))
    # log-normal: right-skewed, mean well above median
    assert amts.mean() > 1.3 * np.median(amts)
    login = np.isin(types, ["login_ok", "login_failed"])
    assert (c.category_idx[login] == -1).all()
    assert (c.category_idx[~login] >= 0).all()
    assert set(np.unique(c.category_idx[~login])) <= set(range(len(CATEGORIES)))
    # per-user preference: a user's top category covers most of their non-login events
    fav_share = []
    for u in np.unique(c.user_idx):
        m = (c.user_idx == u) & ~login
        if m.sum() >= 50:
            fav_share.append(np.bincount(c.category_idx[m]).max() / m.sum())
    assert np.mean(fav_share) > 0.55


def test_sessions_are_bursty():
    c = generate_columns(50_000, 300, START, timedelta(hours=24), seed=4)
    cvs = []
    for u in np.unique(c.user_idx):
        ts = np.sort(c.ts_us[c.user_idx == u])
        if 30 <= len(ts) <= 2000:
            gaps = np.diff(ts).astype(float)
            cvs.append(gaps.std() / gaps.mean())
    # a Poisson process has CV 1; bursts of short gaps between long idle spells give CV >> 1
    assert np.median(cvs) > 1.5


def test_jitter_and_late_fraction():
    c = generate_columns(
        60_000,
        500,
        START,
        timedelta(hours=2),
        seed=6,
        late_fraction=0.03,
        jitter_s=2.0,
        late_delay_s=(60, 600),
    )
    assert abs(c.late.mean() - 0.03) < 0.005
    prev_max = np.concatenate([[c.ts_us[0]], np.maximum.accumulate(c.ts_us)[:-1]])
    behind = prev_max - c.ts_us  # how far behind the newest event already seen
    assert 0.2 < c.out_of_order().mean() < 0.95  # jitter: lots of small disorder
    late_measured = (behind > 30 * 1_000_000).mean()  # minutes late, not seconds
    assert abs(late_measured - 0.03) < 0.006
    # non-late rows are only seconds out of order
    assert np.quantile(behind[~c.late], 0.999) < 20 * 1_000_000
    assert behind[c.late].max() <= 630 * 1_000_000  # max delay plus a few seconds of jitter


def test_no_jitter_no_late_means_event_time_order():
    c = generate_columns(
        5000, 50, START, timedelta(hours=1), seed=6, late_fraction=0.0, jitter_s=0.0
    )
    assert not c.out_of_order().any()
    assert not c.late.any()


def test_parquet_schema_and_content(tmp_path):
    p = tmp_path / "ev.parquet"
    st = write_events(p, 3000, 100, seed=5, start=START, duration=timedelta(hours=1))
    t = pq.read_table(p)
    assert t.schema.field("event_id").type == pa.int64()
    assert t.schema.field("user_id").type == pa.string()
    assert t.schema.field("event_type").type == pa.string()
    assert t.schema.field("amount").type == pa.float64()
    assert t.schema.field("category").type == pa.string()
    assert t.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert t.num_rows == 3000 == st["rows"]
    df = t.to_pandas()
    assert str(df["event_timestamp"].dt.tz) == "UTC"
    assert df["event_id"].is_unique
    assert st["bad_rows"] == 0
    assert st["late_rows"] > 0
    assert st["min_event_us"] == int(t.column("event_timestamp").cast(pa.int64()).to_numpy().min())
    assert datetime.fromisoformat(st["min_event_timestamp"]) >= START
    assert datetime.fromisoformat(st["max_event_timestamp"]) < START + timedelta(hours=1)
    # same rows, same order as the generator
    c = generate_columns(3000, 100, START, timedelta(hours=1), seed=5)
    assert df["event_id"].tolist() == c.event_id.tolist()
    ts = t.column("event_timestamp").cast(pa.int64()).to_numpy()
    assert np.array_equal(ts, c.ts_us)


def test_parquet_folder_partitions_by_user(tmp_path):
    st = write_events(tmp_path / "ev", 4000, 100, seed=5, start=START, parts=3)
    files = sorted((tmp_path / "ev").glob("part-*.parquet"))
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(3)]
    tables = [pq.read_table(f) for f in files]
    assert sum(t.num_rows for t in tables) == 4000 == st["rows"]
    users = [set(t.column("user_id").to_pylist()) for t in tables]
    assert not (users[0] & users[1]) and not (users[1] & users[2])
    for t in tables:  # arrival order kept inside a part: event ids mostly increasing
        ids = t.column("event_id").to_numpy()
        assert (np.diff(ids) > 0).mean() > 0.5


def test_jsonl_roundtrip_through_validator(tmp_path):
    p = tmp_path / "ev.jsonl"
    st = write_events(p, 3000, 100, seed=5, start=START, duration=timedelta(hours=1))
    c = generate_columns(3000, 100, START, timedelta(hours=1), seed=5)
    lines = p.read_text().splitlines()
    assert len(lines) == 3000 == st["rows"]
    now = utc_now_us()
    evs = [parse_json(line, f"ev.jsonl:{i + 1}", now, HOUR_US) for i, line in enumerate(lines)]
    assert all(isinstance(e, Event) for e in evs)
    assert [e.event_timestamp for e in evs] == c.ts_us.tolist()
    assert [e.event_id for e in evs] == c.event_id.tolist()
    # several timestamp spellings, as real producers do
    suffixes = Counter(json.loads(line)["event_timestamp"][26:] for line in lines)
    assert suffixes["Z"] > 1000 and suffixes["+00:00"] > 0
    assert len(suffixes) >= 3


def test_bad_rows_hit_every_reason_code(tmp_path):
    p = tmp_path / "bad.jsonl"
    st = write_events(p, 6000, 100, seed=5, start=START, bad_fraction=0.05)
    lines = p.read_text().splitlines()
    assert len(lines) == 6000
    now = utc_now_us()
    out = [parse_json(line, "o", now, HOUR_US) for line in lines]
    rejected = [r for r in out if isinstance(r, Rejected)]
    assert len(rejected) == st["bad_rows"]
    assert 0.04 < st["bad_rows"] / 6000 < 0.06
    assert {reason_code(r.reason) for r in rejected} == set(BAD_KINDS)
    # generate_events yields the same bad rows as BadLine with the code they must produce
    evs = list(generate_events(6000, 100, START, seed=5, bad_fraction=0.05))
    bad = [e for e in evs if isinstance(e, BadLine)]
    assert [str(b) for b in bad] == [r.payload for r in rejected]
    for b in bad:
        assert reason_code(parse_json(b, "o", now, HOUR_US).reason) == b.code


def test_generate_events_dicts():
    evs = list(generate_events(500, 20, START, timedelta(hours=1), seed=2))
    assert len(evs) == 500
    e = evs[0]
    assert set(e) == {"event_id", "user_id", "event_type", "amount", "category", "event_timestamp"}
    assert e["event_timestamp"].tzinfo is not None
    assert type(e["event_id"]) is int and type(e["amount"]) is float


def test_parquet_refuses_bad_fraction(tmp_path):
    with pytest.raises(ValueError, match="JSON lines"):
        write_events(tmp_path / "x.parquet", 10, 2, bad_fraction=0.1)


def test_default_start_is_fixed_and_in_the_past():
    a = generate_columns(100, 5, seed=1)
    assert a.ts_us.min() >= to_us(DEFAULT_START)
    assert to_us(DEFAULT_START) < utc_now_us()


def test_speed_smoke(tmp_path):
    """1M events take ~1-2 s on these machines; 200k must stay well under that scale."""
    t = time.perf_counter()
    write_events(tmp_path / "s.parquet", 200_000, 5000, seed=1)
    assert time.perf_counter() - t < 5.0
