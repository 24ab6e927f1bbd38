"""Synthetic reference data for stream-table joins: user profile versions and category risk.

The events (`feast_bytewax.datagen.columns`) say what users do; these tables say who they are
(shared/spec/events.md, "Profiles"). A join must pick the profile version valid at each
event's time (the latest ``updated_at`` <= event time), so the profiles are drawn to exercise
exactly the cases a naive "newest version" join gets wrong:

- **Before the stream**: most users' first version is ``start`` minus up to 30 days, so it is
  valid for all their events.
- **Late first version**: ~10% of users (``late_first_fraction``) sign up during the stream:
  their first version lies inside ``(start, end)``, so their early events have no valid
  profile at all (a point-in-time join yields nulls there; newest-wins would leak the future).
- **Updates in the stream**: a share of users (``update_fraction``) gets 1-3 versions inside
  the window: the credit score drifts, the segment may move ``new -> regular -> vip``.
- **After the end**: some users (``after_end_fraction``) get a version after ``end``, valid
  for no event; it must never show up in a join of this stream.
- **Users without events**: with ``users`` given as a count, ~1% extra ids
  (``extra_user_fraction``) follow the event ids; they never occur in the events.

``account_age_days`` is consistent with time (each user has a sign-up instant; the age is the
whole days from it to ``updated_at``), so it only grows from one version to the next. A user
never has two versions at the same ``updated_at``: a tie would make "the latest <= t"
ambiguous. ``credit_score`` is in [300, 850]; ``low_score_fraction`` of the users start low.

`generate_category_risk` is a tiny static table (one row per category, with two categories
the events never use) for a plain lookup join. Everything is deterministic for a ``seed`` and
draws from its own seeded streams, so the events of the same seed are unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feast_bytewax.datagen.columns import CATEGORIES, DEFAULT_START
from feast_bytewax.timeutil import td_us, to_us

__all__ = [
    "EXTRA_CATEGORIES",
    "PROFILE_SCHEMA",
    "RISK_SCHEMA",
    "SEGMENTS",
    "generate_category_risk",
    "generate_profiles",
    "profile_counts",
    "user_ids",
    "write_category_risk",
    "write_profiles",
]

SEGMENTS = ("new", "regular", "vip")
# Categories in the risk table that no event uses: a lookup join must cope with unused rows.
EXTRA_CATEGORIES = ("gift_cards", "crypto")
_TS = pa.timestamp("us", tz="UTC")
PROFILE_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("account_age_days", pa.int32()),
        ("credit_score", pa.int32()),
        ("segment", pa.string()),
        ("updated_at", _TS),
    ]
)
RISK_SCHEMA = pa.schema(
    [("category", pa.string()), ("risk", pa.float64()), ("event_timestamp", _TS)]
)

# Entropy tags mixed with the seed: the profile and risk draws never share a stream with the
# events (`generate_columns` spawns from SeedSequence(seed) alone).
_PROFILE_TAG = 0x70726F66
_RISK_TAG = 0x7269736B
_US = 1_000_000
_DAY_US = 86_400 * _US
_BEFORE_US = 30 * _DAY_US  # first versions: up to this long before the stream starts
_AFTER_US = 7 * _DAY_US  # versions after the end: up to this long after it
_NEW_DAYS = 30  # younger accounts are in the "new" segment
_SCORE_MIN, _SCORE_MAX = 300, 850


def user_ids(n_users: int) -> list[str]:
    """The ids the event generator gives its ``n_users`` users (``u000000`` ...), in order.

    Same rule as `generate_columns` (zero padded to at least 6 digits), so profiles and events
    of one ``--users`` count join on every id.
    """
    width = max(6, len(str(n_users - 1)))
    return [f"u{i:0{width}d}" for i in range(n_users)]


def _with_extras(n_users: int, fraction: float) -> list[str]:
    """Event ids plus ~`fraction` more, numbered on with the same padding (never in events)."""
    width = max(6, len(str(n_users - 1)))
    extra = round(n_users * fraction)
    return user_ids(n_users) + [f"u{i:0{width}d}" for i in range(n_users, n_users + extra)]


def _uniform_us(rng: np.random.Generator, lo: np.ndarray | int, span: np.ndarray | int,
                size: int) -> np.ndarray:
    """Integer microseconds in ``(lo, lo + span]`` (``lo + 1`` when span < 1)."""
    span = np.maximum(np.asarray(span, dtype=np.int64), 1)
    return lo + 1 + np.floor(rng.random(size) * span).astype(np.int64)


def _untie(user: np.ndarray, t: np.ndarray) -> None:
    """Make each user's times strictly increasing, in place (rows sorted by user, time).

    Times are drawn at microsecond resolution, so ties are rare; each pass moves a tied
    version 1 us later, keeping the order and every version inside its phase in practice.
    """
    while True:
        same = (user[1:] == user[:-1]) & (t[1:] <= t[:-1])
        if not same.any():
            return
        idx = np.flatnonzero(same) + 1
        t[idx] = t[idx - 1] + 1


def generate_profiles(
    users: int | Sequence[str],
    start: datetime | None = None,
    duration: timedelta = timedelta(hours=24),
    seed: int = 7,
    *,
    late_first_fraction: float = 0.10,
    update_fraction: float = 0.30,
    after_end_fraction: float = 0.10,
    extra_user_fraction: float = 0.01,
    low_score_fraction: float = 0.08,
    vip_fraction: float = 0.10,
) -> pa.Table:
    """Profile versions (`PROFILE_SCHEMA`) for the users of a stream ``[start, start+duration)``.

    ``users``: the event generator's user count (its ids, plus ``extra_user_fraction`` ids
    with no events), or explicit ids. Rows are in ``updated_at`` order (then ``user_id``), as
    a changelog topic would deliver them. See the module docstring for the shape.
    """
    fractions = (late_first_fraction, update_fraction, after_end_fraction, extra_user_fraction,
                 low_score_fraction, vip_fraction)
    if not all(0 <= f <= 1 for f in fractions):
        raise ValueError("every fraction must be in [0, 1]")
    if duration <= timedelta(0):
        raise ValueError("duration must be positive")
    if isinstance(users, int):
        if users < 1:
            raise ValueError("need users >= 1")
        ids = _with_extras(users, extra_user_fraction)
    else:
        ids = list(users)
        if len(set(ids)) != len(ids):
            raise ValueError("user ids must be unique")
    n = len(ids)
    start_us = to_us(DEFAULT_START if start is None else start)
    end_us = start_us + td_us(duration)

    ss = np.random.SeedSequence([seed, _PROFILE_TAG])
    r_first, r_upd, r_after, r_age, r_score, r_seg = (np.random.default_rng(s) for s in ss.spawn(6))

    # first version: before the stream, or (late signups) inside it
    late_first = r_first.random(n) < late_first_fraction
    before = start_us - _uniform_us(r_first, 0, _BEFORE_US, n)  # in [start - 30 d, start)
    inside = _uniform_us(r_first, start_us, end_us - start_us - 1, n)  # in (start, end)
    t_first = np.where(late_first, inside, before)

    # updates inside the stream, after the user's first version
    k_upd = np.where(r_upd.random(n) < update_fraction,
                     r_upd.choice([1, 2, 3], size=n, p=[0.6, 0.3, 0.1]), 0)
    upd_user = np.repeat(np.arange(n), k_upd)
    lo = np.maximum(t_first, start_us)[upd_user]
    t_upd = _uniform_us(r_upd, lo, end_us - 1 - lo, len(upd_user))

    # versions after the end: valid for no event of this stream
    after_user = np.flatnonzero(r_after.random(n) < after_end_fraction)
    t_after = _uniform_us(r_after, end_us, _AFTER_US, len(after_user))

    user = np.concatenate([np.arange(n), upd_user, after_user]).astype(np.int64)
    t = np.concatenate([t_first, t_upd, t_after]).astype(np.int64)
    order = np.lexsort((t, user))
    user, t = user[order], t[order]
    _untie(user, t)
    first_row = np.searchsorted(user, np.arange(n))  # every user has >= 1 version
    rank = np.arange(len(user)) - first_row[user]

    # account age: whole days since a sign-up instant; late signups are brand new
    long_age = _NEW_DAYS + np.minimum(r_age.lognormal(np.log(400.0), 0.9, n), 5000.0)
    age0_days = np.where(r_age.random(n) < 0.15, r_age.uniform(0, _NEW_DAYS, n), long_age)
    age0_days = np.where(late_first, r_age.uniform(0, 1, n), age0_days)
    signup = t_first - np.floor(age0_days * _DAY_US).astype(np.int64)
    age = ((t - signup[user]) // _DAY_US).astype(np.int32)

    # credit score: a per-user level, drifting by update
    low = r_score.random(n) < low_score_fraction
    base = np.where(low, r_score.normal(500, 60, n), r_score.normal(700, 55, n))
    drift = np.round(r_score.normal(0, 20, len(user)))
    drift[rank == 0] = 0
    walk = np.cumsum(drift)
    walk -= walk[first_row][user]
    score = np.clip(np.round(base[user] + walk), _SCORE_MIN, _SCORE_MAX).astype(np.int32)

    # segment: new while young, then regular; vip users are promoted at some version
    vip_user = r_seg.random(n) < vip_fraction
    vip_from = r_seg.choice([0, 1, 2], size=n, p=[0.7, 0.2, 0.1])
    seg = np.where(age < _NEW_DAYS, 0, np.where(vip_user[user] & (rank >= vip_from[user]), 2, 1))

    out = np.lexsort((user, t))  # changelog order; ids are ordered as numbered
    return pa.table(
        {
            "user_id": pa.array(ids, pa.string()).take(pa.array(user[out])),
            "account_age_days": pa.array(age[out], pa.int32()),
            "credit_score": pa.array(score[out], pa.int32()),
            "segment": pa.array(list(SEGMENTS), pa.string()).take(pa.array(seg[out])),
            "updated_at": pa.array(t[out], pa.int64()).cast(_TS),
        },
        schema=PROFILE_SCHEMA,
    )


def profile_counts(table: pa.Table, start: datetime | None = None,
                   duration: timedelta = timedelta(hours=24)) -> dict[str, int]:
    """Versions by phase relative to the stream: what the CLI reports and the tests check.

    :returns: ``{"versions", "users", "before_start", "during", "after_end",
        "users_without_version_at_start"}`` (``during``: ``start <= updated_at < end``).
    """
    start_us = to_us(DEFAULT_START if start is None else start)
    end_us = start_us + td_us(duration)
    t = table.column("updated_at").cast(pa.int64()).to_numpy()
    uid = table.column("user_id")
    n_users = pc.count_distinct(uid).as_py()
    valid_at_start = pc.count_distinct(uid.filter(pa.array(t <= start_us))).as_py()
    return {
        "versions": len(t),
        "users": n_users,
        "before_start": int((t < start_us).sum()),
        "during": int(((t >= start_us) & (t < end_us)).sum()),
        "after_end": int((t >= end_us).sum()),
        "users_without_version_at_start": n_users - valid_at_start,
    }


def generate_category_risk(seed: int = 7, as_of: datetime | None = None,
                           high_fraction: float = 0.30) -> pa.Table:
    """Risk per category (`RISK_SCHEMA`): every event category plus `EXTRA_CATEGORIES`.

    ``round(high_fraction * len(CATEGORIES))`` of the event categories get risk in [0.8, 1.0],
    the rest below 0.8, so a "risky category" feature fires for a real share of purchases.
    ``event_timestamp`` is one fixed instant (``as_of``, default a day before `DEFAULT_START`),
    before the events, so a point-in-time join finds every row.
    """
    if not 0 <= high_fraction <= 1:
        raise ValueError("high_fraction must be in [0, 1]")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _RISK_TAG]))
    n = len(CATEGORIES)
    high = np.zeros(n, dtype=bool)
    high[rng.permutation(n)[: round(high_fraction * n)]] = True
    risk = np.where(high, rng.uniform(0.8, 1.0, n), 0.8 * rng.beta(2.0, 5.0, n))
    extra = rng.uniform(0.0, 1.0, len(EXTRA_CATEGORIES))
    risk = np.round(np.concatenate([risk, extra]), 4)
    risk[:n] = np.where(high, np.maximum(risk[:n], 0.8), np.minimum(risk[:n], 0.7999))
    ts = to_us((DEFAULT_START - timedelta(days=1)) if as_of is None else as_of)
    cats = [*CATEGORIES, *EXTRA_CATEGORIES]
    return pa.table(
        {
            "category": pa.array(cats, pa.string()),
            "risk": pa.array(risk, pa.float64()),
            "event_timestamp": pa.array(np.full(len(cats), ts, np.int64), pa.int64()).cast(_TS),
        },
        schema=RISK_SCHEMA,
    )


def _write_atomic(path: str | Path, table: pa.Table) -> Path:
    """Parquet via a temporary sibling and `os.replace`: a reader (or a crash) never sees a
    half-written file, and a rerun replaces the old one whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_profiles(path: str | Path, table: pa.Table) -> Path:
    """Write a `generate_profiles` table as one parquet file, atomically; return the path."""
    return _write_atomic(path, table)


def write_category_risk(path: str | Path, table: pa.Table) -> Path:
    """Write a `generate_category_risk` table as one parquet file, atomically."""
    return _write_atomic(path, table)
