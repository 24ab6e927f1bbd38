"""The numpy core of the event generator: every column of a synthetic stream at once.

`generate_columns` draws users, sessions, event times, types, amounts, categories, arrival
delays and bad-row kinds as numpy columns (`EventColumns`, rows in arrival order); the shapes
are described in `feast_bytewax.datagen.generate`, which renders the columns as dicts, JSON lines
(with malformed lines) or parquet and re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from feast_bytewax.timeutil import td_us, to_us

__all__ = [
    "BAD_KINDS",
    "CATEGORIES",
    "DEFAULT_START",
    "EVENT_MIX",
    "EventColumns",
    "generate_columns",
]

DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)
EVENT_MIX = {"view": 0.70, "purchase": 0.15, "login_ok": 0.10, "login_failed": 0.05}
CATEGORIES = (
    "electronics", "books", "clothing", "home", "toys", "sports",
    "beauty", "grocery", "garden", "automotive", "music", "games",
)  # fmt: skip
LOGIN_TYPES = ("login_ok", "login_failed")
# Validator reason code each bad-row kind must produce.
BAD_KINDS = (
    "bad_json",
    "not_object",
    "missing_field",
    "bad_type",
    "empty_field",
    "unknown_event_type",
    "negative_amount",
    "non_finite_amount",
    "naive_timestamp",
    "bad_timestamp",
    "future_timestamp",
)
# Timestamp spellings for JSON: (suffix, offset seconds); index 0 is 'Z'.
TZ_STYLES = (
    ("Z", 0),
    ("+00:00", 0),
    ("+05:30", 19800),
    ("-07:00", -25200),
    ("+09:00", 32400),
    ("-03:00", -10800),
    ("+01:00", 3600),
)
_TZ_STYLE_P = (0.80, 0.08, 0.04, 0.03, 0.02, 0.02, 0.01)
_US = 1_000_000
_DAY_US = 86_400 * _US


@dataclass
class EventColumns:
    """Generated events as numpy columns, rows in arrival order."""

    event_id: np.ndarray  # int64
    user_idx: np.ndarray  # int64 index into user_ids
    type_idx: np.ndarray  # int8 index into event_types
    amount: np.ndarray  # float64
    category_idx: np.ndarray  # int16 index into categories, -1 for ""
    ts_us: np.ndarray  # int64 event time, epoch us UTC
    arrival_us: np.ndarray  # int64 arrival time, epoch us UTC
    late: np.ndarray  # bool: drawn as a late arrival
    bad_kind: np.ndarray  # int8 index into BAD_KINDS, -1 for a good row
    tz_style: np.ndarray  # int8 index into TZ_STYLES (per user)
    user_ids: np.ndarray  # str, one per user
    event_types: tuple[str, ...]
    categories: tuple[str, ...]
    bad_seed: int

    def __len__(self) -> int:
        return len(self.event_id)

    def out_of_order(self) -> np.ndarray:
        """Rows whose event time is older than some row that arrived before them."""
        prev_max = np.maximum.accumulate(self.ts_us)
        out = np.zeros(len(self), dtype=bool)
        out[1:] = self.ts_us[1:] < prev_max[:-1]
        return out


def _zipf_probs(n: int, s: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    return w / w.sum()


def _diurnal_fractions(
    rng: np.random.Generator, size: int, start_us: int, duration_us: int, amplitude: float
) -> np.ndarray:
    """Fractions in [0, 1) of `duration_us`, with a daily rate cycle peaking 15:00 UTC."""
    if amplitude <= 0 or duration_us <= 0:
        return rng.random(size)
    grid = np.linspace(0.0, 1.0, 2049)
    tod_h = ((start_us + grid * duration_us) % _DAY_US) / 3_600_000_000
    rate = 1.0 + amplitude * np.cos(2 * np.pi * (tod_h - 15.0) / 24.0)
    cdf = np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2)])
    cdf /= cdf[-1]
    return np.interp(rng.random(size), cdf, grid)


def generate_columns(
    n_events: int,
    n_users: int,
    start: datetime | None = None,
    duration: timedelta = timedelta(hours=24),
    seed: int = 7,
    late_fraction: float = 0.01,
    jitter_s: float = 2.0,
    late_delay_s: tuple[float, float] = (60.0, 600.0),
    bad_fraction: float = 0.0,
    *,
    zipf_s: float = 1.1,
    event_mix: dict[str, float] | None = None,
    mean_session_events: float = 8.0,
    mean_gap_s: float = 20.0,
    favourite_p: float = 0.6,
    diurnal_amplitude: float = 0.5,
) -> EventColumns:
    """Vectorised generator core: the events as numpy columns in arrival order."""
    if n_events < 0 or n_users < 1:
        raise ValueError("need n_events >= 0 and n_users >= 1")
    if not 0 <= late_fraction <= 1 or not 0 <= bad_fraction <= 1:
        raise ValueError("late_fraction and bad_fraction must be in [0, 1]")
    start = DEFAULT_START if start is None else start
    start_us = to_us(start)
    duration_us = td_us(duration)
    mix = dict(EVENT_MIX if event_mix is None else event_mix)
    event_types = tuple(mix)
    p_types = np.array([mix[t] for t in event_types], dtype=np.float64)
    p_types /= p_types.sum()

    ss = np.random.SeedSequence(seed)
    (r_users, r_sess, r_time, r_types, r_amt, r_cat, r_arr, r_bad, r_tz) = (
        np.random.default_rng(s) for s in ss.spawn(9)
    )
    n = int(n_events)

    # users: zipf ranks mapped through a seeded permutation
    width = max(6, len(str(n_users - 1)))
    user_ids = np.array([f"u{i:0{width}d}" for i in range(n_users)], dtype=object)
    rank_to_user = r_users.permutation(n_users)
    user_p = _zipf_probs(n_users, zipf_s)
    user_fav = r_cat.choice(len(CATEGORIES), size=n_users, p=_zipf_probs(len(CATEGORIES), 0.8))
    user_tz = r_tz.choice(len(TZ_STYLES), size=n_users, p=_TZ_STYLE_P).astype(np.int8)

    # sessions: geometric lengths until n events
    p_len = 1.0 / max(mean_session_events, 1.0)
    lengths = r_sess.geometric(p_len, size=int(n / mean_session_events * 1.2) + 16)
    while lengths.sum() < n:
        lengths = np.concatenate([lengths, r_sess.geometric(p_len, size=len(lengths) + 16)])
    ends = np.cumsum(lengths)
    n_sess = int(np.searchsorted(ends, n)) + 1 if n else 0
    lengths = lengths[:n_sess].copy()
    if n_sess:
        lengths[-1] -= int(ends[n_sess - 1] - n)
    sess_first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    sess_of = np.repeat(np.arange(n_sess), lengths)
    sess_user = rank_to_user[r_sess.choice(n_users, size=n_sess, p=user_p)]

    # times: exponential gaps inside a session, session start diurnal inside the range
    gaps = np.round(r_time.exponential(mean_gap_s * _US, size=n)).astype(np.int64)
    if n:
        gaps[sess_first] = 0
    csum = np.cumsum(gaps)
    offset = csum - (csum[sess_first] if n else csum)[sess_of]
    sess_dur = offset[sess_first + lengths - 1] if n else np.zeros(0, np.int64)
    room = np.maximum(duration_us - 1 - sess_dur, 0)
    frac = _diurnal_fractions(r_time, n_sess, start_us, duration_us, diurnal_amplitude)
    sess_start = start_us + (frac * room).astype(np.int64)
    ts_us = sess_start[sess_of] + offset

    user_idx = sess_user[sess_of].astype(np.int64)
    type_idx = r_types.choice(len(event_types), size=n, p=p_types).astype(np.int8)
    is_purchase = type_idx == event_types.index("purchase") if "purchase" in mix else None
    amount = np.zeros(n, dtype=np.float64)
    if is_purchase is not None:
        k = int(is_purchase.sum())
        amount[is_purchase] = np.maximum(np.round(r_amt.lognormal(3.0, 1.0, size=k), 2), 0.01)
    fav = r_cat.random(n) < favourite_p
    other = r_cat.choice(len(CATEGORIES), size=n, p=_zipf_probs(len(CATEGORIES), 0.8))
    category_idx = np.where(fav, user_fav[user_idx], other).astype(np.int16)
    login_codes = [event_types.index(t) for t in LOGIN_TYPES if t in mix]
    if login_codes:
        category_idx[np.isin(type_idx, login_codes)] = -1

    # event ids in event-time order
    by_time = np.argsort(ts_us, kind="stable")
    event_id = np.empty(n, dtype=np.int64)
    event_id[by_time] = np.arange(n, dtype=np.int64)

    # arrival: jitter for all, an extra delay for the late fraction
    delay = r_arr.exponential(jitter_s * _US, size=n) if jitter_s > 0 else np.zeros(n)
    late = r_arr.random(n) < late_fraction
    lo, hi = late_delay_s
    delay[late] += r_arr.uniform(lo * _US, hi * _US, size=int(late.sum()))
    arrival_us = ts_us + np.round(delay).astype(np.int64)
    order = np.argsort(arrival_us, kind="stable")

    bad = r_bad.random(n) < bad_fraction
    bad_kind = np.full(n, -1, dtype=np.int8)
    bad_kind[bad] = r_bad.integers(0, len(BAD_KINDS), size=int(bad.sum()))

    return EventColumns(
        event_id=event_id[order],
        user_idx=user_idx[order],
        type_idx=type_idx[order],
        amount=amount[order],
        category_idx=category_idx[order],
        ts_us=ts_us[order],
        arrival_us=arrival_us[order],
        late=late[order],
        bad_kind=bad_kind,  # drawn per arrival position
        tz_style=user_tz[user_idx[order]],
        user_ids=user_ids,
        event_types=event_types,
        categories=CATEGORIES,
        bad_seed=int(ss.generate_state(1)[0]),
    )
