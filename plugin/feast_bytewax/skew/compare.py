"""Skew detection, comparison helpers shared by the offline and logged comparisons:
value coercion, tolerant equality, per-feature stats and worst keys."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from feast_bytewax.timeutil import from_us


def numeric(s: pd.Series | np.ndarray) -> np.ndarray:
    """Values as float64 with NaN for null (ints and nullable ints included)."""
    return pd.to_numeric(pd.Series(s), errors="coerce").astype("float64").to_numpy()


def to_us_array(values: Any) -> np.ndarray:
    """Timestamps (any unit, aware or UTC-naive) -> epoch microseconds; NaT -> 0."""
    ts = pd.to_datetime(pd.Series(values), utc=True)
    us = (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    return us.fillna(0).astype("int64").to_numpy()


def values_equal(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    both_null = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= atol + rtol * np.abs(b)
    return both_null | np.nan_to_num(close, nan=0).astype(bool)


def iso(us: Any) -> str | None:
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return None
    return from_us(int(us)).isoformat().replace("+00:00", "Z")


def json_value(x: Any) -> Any:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, float) and x.is_integer() and abs(x) < 2**53:
        return x
    return float(x) if isinstance(x, float | np.floating) else x


def feature_stats(names: list[str], store: dict[str, np.ndarray], target: dict[str, np.ndarray],
                   mism: dict[str, np.ndarray], compared: dict[str, np.ndarray]) -> dict:
    out = {}
    for n in names:
        m = mism[n]
        a, b = store[n][m], target[n][m]
        both = ~np.isnan(a) & ~np.isnan(b)
        err = np.abs(a[both] - b[both])
        rel = err / np.maximum(np.maximum(np.abs(a[both]), np.abs(b[both])), 1e-300)
        c = int(compared[n].sum())
        out[n] = {
            "compared": c,
            "mismatched": int(m.sum()),
            "mismatch_rate": (int(m.sum()) / c) if c else 0.0,
            "max_abs_error": float(err.max()) if len(err) else 0.0,
            "max_rel_error": float(rel.max()) if len(rel) else 0.0,
            "null_mismatches": int((~both).sum()),
        }
    return out


def worst_keys(keys: np.ndarray, ts: np.ndarray, mism_any: np.ndarray,
                mism: dict[str, np.ndarray], n: int) -> list[dict]:
    if not mism_any.any():
        return []
    df = pd.DataFrame({"k": keys[mism_any], "ts": ts[mism_any]})
    for f, m in mism.items():
        df[f] = m[mism_any]
    agg = df.groupby("k").agg(mismatched=("ts", "size"), first=("ts", "min"))
    agg = agg.sort_values(["mismatched", "first"], ascending=[False, True]).head(n)
    feats = df.groupby("k")[list(mism)].sum()
    return [{
        "key": str(k), "mismatched_points": int(r["mismatched"]),
        "first_mismatch": iso(r["first"]),
        "features": [f for f in mism if feats.loc[k, f] > 0],
    } for k, r in agg.iterrows()]
