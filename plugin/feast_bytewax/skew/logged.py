"""Skew detection (b): the feature vectors actually served (Feast's logged-features
format), compared with the batch truth. See `feast_bytewax.skew.report`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.skew.compare import (
    feature_stats,
    iso,
    json_value,
    numeric,
    to_us_array,
    values_equal,
)
from feast_bytewax.skew.events import SkewOptions, sampled_keys
from feast_bytewax.stores.feature_logging import read_logged_features
from feast_bytewax.timeutil import US_PER_S

STATUS_PRESENT, STATUS_NULL, STATUS_NOT_FOUND = 1, 2, 3


def read_logs(store: Any, service: Any) -> pd.DataFrame | None:
    """The feature service's logged vectors via Feast's own reader, or None (no logging
    config, or no logs yet)."""
    if service is None or service.logging_config is None:
        return None

    df = read_logged_features(store, service)
    return df if df is not None and len(df) else None


def logged_points(spec: EngineSpec, service: Any, logs: pd.DataFrame,
                  horizon: int | None, opts: SkewOptions) -> pd.DataFrame:
    """One row per (logged vector, feature): key, feature, value, status, event time (the
    comparison point) and serve time, in epoch us."""
    from feast.feature_logging import LOG_TIMESTAMP_FIELD, REQUEST_ID_FIELD

    key = spec.join_key
    names = set(spec.feature_names)
    serve = pd.Series(to_us_array(logs[LOG_TIMESTAMP_FIELD]))
    parts = []
    h = horizon if horizon is not None else 0
    for proj in service.feature_view_projections:
        for feat in proj.features:
            if feat.name not in names:
                continue
            col = f"{proj.name_to_use()}__{feat.name}"
            if col not in logs.columns:
                continue
            ts = pd.to_datetime(logs[f"{col}__timestamp"], utc=True)
            ts_us = to_us_array(ts)
            status = logs[f"{col}__status"].fillna(STATUS_NOT_FOUND).astype(int).to_numpy()
            absent = (status == STATUS_NOT_FOUND) | (ts_us <= 0) | ts.isna().to_numpy()
            point = np.where(absent, np.minimum(serve.to_numpy(), h), ts_us)
            # Online stores may keep whole seconds (Feast's SQLite store does): a value
            # stamped T may come from any row in [T, T + 1 s), in practice the last one
            whole = ~absent & (point % US_PER_S == 0)
            alt = np.where(whole, point + US_PER_S - 1, point)
            parts.append(pd.DataFrame({
                "row": np.arange(len(logs)), key: logs[key].astype(str).to_numpy(),
                "feature": feat.name, "value": numeric(logs[col]), "status": status,
                "absent": absent, "ts": point, "alt_ts": alt, "serve_ts": serve.to_numpy(),
                "request_id": logs[REQUEST_ID_FIELD].astype(str).to_numpy(),
            }))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    keep = sampled_keys(out[key], opts.sample_keys)
    if opts.windowed:  # values stamped in the window (NOT_FOUND ones: served in it)
        t = np.where(out["absent"].to_numpy(), out["serve_ts"].to_numpy(), out["ts"].to_numpy())
        keep &= (t >= opts.window_start_us) & (t < opts.window_end_us)
    return out.loc[keep].reset_index(drop=True)


def compare_logged(spec: EngineSpec, lp: pd.DataFrame, truth_at: Any, empties: dict,
                   opts: SkewOptions) -> dict:
    key = spec.join_key
    pts = pd.concat([lp[[key, "ts"]], lp[[key, "alt_ts"]].rename(columns={"alt_ts": "ts"})],
                    ignore_index=True).drop_duplicates().reset_index(drop=True)
    tr = truth_at(pts)
    cols = {"stream": tr["stream"], "ideal": tr["ideal"], "unverified": tr["unverified"]}
    pts = pts.assign(__i=np.arange(len(pts)))
    lp = lp.merge(pts, on=[key, "ts"], how="left")
    lp = lp.merge(pts.rename(columns={"ts": "alt_ts", "__i": "__j"}), on=[key, "alt_ts"],
                  how="left")
    idx = lp["__i"].to_numpy()
    idx_alt = lp["__j"].to_numpy()
    names = [n for n in spec.feature_names if n in set(lp["feature"])]
    store_v, target, mism, compared = {}, {}, {}, {}
    any_row = np.zeros(int(lp["row"].max()) + 1 if len(lp) else 0, bool)
    not_found = not_found_bad = 0
    for n in names:
        sel = (lp["feature"] == n).to_numpy()
        sub = lp.loc[sel]
        i = idx[sel]
        frame = cols["stream" if opts.truth == "stream" else "ideal"]
        t = numeric(frame[n].to_numpy()[i])
        t_alt = numeric(frame[n].to_numpy()[idx_alt[sel]])
        v = sub["value"].to_numpy().copy()
        absent = sub["absent"].to_numpy()
        e = empties[n]
        ev_ = np.nan if e is None or (isinstance(e, float) and math.isnan(e)) else float(e)
        # a value served as NOT_FOUND is judged as the empty vector: fine iff the truth is
        # empty there too (the serving client must apply the same fill as training_frame)
        v[absent] = ev_
        comp = ~cols["unverified"][n].to_numpy()[i] if opts.truth == "stream" \
            else np.ones(len(i), bool)
        ok_alt = values_equal(v, t_alt, opts.rtol, opts.atol)
        t = np.where(ok_alt & ~values_equal(v, t, opts.rtol, opts.atol), t_alt, t)
        bad = ~values_equal(v, t, opts.rtol, opts.atol) & comp
        not_found += int(absent.sum())
        not_found_bad += int((absent & bad).sum())
        store_v[n], target[n], mism[n], compared[n] = v, t, bad, comp
        any_row[sub["row"].to_numpy()[bad]] = True
    n_rows = int(lp["row"].nunique()) if len(lp) else 0
    present = ~lp["absent"].to_numpy()
    stale = (lp["serve_ts"].to_numpy()[present] - lp["ts"].to_numpy()[present]) / US_PER_S
    examples = []
    for n in names:
        sel = np.flatnonzero((lp["feature"] == n).to_numpy())
        for j, b in zip(sel, mism[n], strict=True):
            if b and len(examples) < opts.examples:
                examples.append({"key": str(lp[key].iat[j]), "feature": n,
                                 "value_time": iso(lp["ts"].iat[j]),
                                 "served_at": iso(lp["serve_ts"].iat[j]),
                                 "request_id": lp["request_id"].iat[j],
                                 "served": json_value(lp["value"].iat[j]),
                                 "truth": json_value(target[n][list(sel).index(j)])})
    by_key = {}
    if any_row.any():
        rows_bad = lp.loc[lp["row"].isin(np.flatnonzero(any_row))].drop_duplicates("row")
        by_key = rows_bad[key].value_counts().head(opts.top_keys).to_dict()
    return {
        "vectors": n_rows,
        "mismatched_vectors": int(any_row.sum()),
        "mismatch_rate": float(any_row.sum() / n_rows) if n_rows else 0.0,
        "not_found_values": not_found,
        "missing_online": not_found_bad,
        "staleness_s": {
            "p50": float(np.percentile(stale, 50)) if len(stale) else None,
            "p99": float(np.percentile(stale, 99)) if len(stale) else None,
            "max": float(stale.max()) if len(stale) else None,
        },
        "features": feature_stats(names, store_v, target, mism, compared),
        "worst_keys": [{"key": str(k), "mismatched_vectors": int(v)} for k, v in by_key.items()],
        "examples": examples,
    }
