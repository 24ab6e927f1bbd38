"""Skew detection (a): the rows the dataflow wrote to the offline store, compared with
the batch truth at the union of breakpoints. See `feast_bytewax.skew.report`."""

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
    worst_keys,
)
from feast_bytewax.skew.events import EventLog, SkewOptions, sampled_keys
from feast_bytewax.stores.parquet_folder import read_source_frame, resolve_source_uri


def offline_sources(store: Any, spec: EngineSpec) -> list[tuple[Any, list[str]]]:
    """(FileSource, features written there) for each batch source of the spec's views."""
    views = {v.name: v for v in store.list_stream_feature_views()}
    by_source: dict[str, tuple[Any, list[str]]] = {}
    for f in spec.features:
        src = views[f.view].batch_source
        by_source.setdefault(src.name, (src, []))[1].append(f.name)
    return list(by_source.values())


def read_offline(store: Any, spec: EngineSpec, source: Any, names: list[str],
                 opts: SkewOptions, since: int | None = None
                 ) -> tuple[pd.DataFrame, str, pd.DataFrame | None]:
    """The batch source's visible rows: join key, `ts` (int us), features (float64/NaN), in
    commit order, superseded copies of an identity included (they are reported as
    duplicates); with a range (--start/--end), the rows in it, else the rows from `since`
    (the log's first event: earlier rows, e.g. of an older run, are not the log's to check).
    With a window (--since), the rows in it and its carry-in: each key's last row before
    it (the newest copy). A live run writes a row only when a value changes, so the store's
    value at the window's start is that row; it is read, never compared (it is the previous
    window's)."""

    df = read_source_frame(store.config, source, keys=[spec.join_key], dedup=False)
    uri = resolve_source_uri(store.config, source)
    ts_col = source.timestamp_field or "event_timestamp"
    key = spec.join_key
    out = pd.DataFrame({key: df[key].astype(str).to_numpy() if len(df) else [],
                        "ts": to_us_array(df[ts_col])
                        if len(df) else np.zeros(0, np.int64)})
    for n in names:
        out[n] = numeric(df[n]) if n in df.columns else np.full(len(df), np.nan)
    keep = sampled_keys(out[key], opts.sample_keys)
    ts = out["ts"].to_numpy()
    carry = None
    if opts.windowed:
        lo, hi = opts.window_start_us, opts.window_end_us
        before = out.loc[keep & (ts < lo)]
        before = before.iloc[::-1].drop_duplicates([key, "ts"]).iloc[::-1]  # newest copy
        carry = before.sort_values("ts", kind="stable").groupby(key, sort=False).tail(1) \
            .reset_index(drop=True)
    else:
        lo = opts.start_us if opts.start_us is not None else since
        hi = opts.end_us
    if lo is not None:
        keep &= ts >= lo
    if hi is not None:
        keep &= ts < hi
    return out.loc[keep].reset_index(drop=True), uri, carry


def compare_offline(spec: EngineSpec, names: list[str], off: pd.DataFrame,
                    cand: pd.DataFrame, truth_at: Any, empties: dict, log: EventLog,
                    opts: SkewOptions, carry: pd.DataFrame | None = None
                    ) -> tuple[dict, pd.DataFrame]:
    """Compare the offline step functions with the batch truth at the union of breakpoints.
    `carry`: rows before a window, which set the store's value at its start (read only).
    Returns the report section and the per-point frame (for plots)."""
    key = spec.join_key
    horizon = log.horizon if log.horizon is not None else -1
    off = off.reset_index(drop=True)
    off["__order"] = np.arange(len(off))
    dup_mask = off.duplicated([key, "ts"], keep="last")
    conflicting = 0
    if dup_mask.any():
        dkeys = off.loc[off.duplicated([key, "ts"], keep=False)]
        filled = dkeys[names].fillna(-1.2345e300)
        conflicting = int((filled.groupby([dkeys[key], dkeys["ts"]]).nunique() > 1)
                          .any(axis=1).sum())
    rows = off.loc[~dup_mask].sort_values([key, "ts"]).reset_index(drop=True)
    pts = pd.concat([cand[[key, "ts"]], rows[[key, "ts"]]], ignore_index=True)
    pts = pts.drop_duplicates().sort_values([key, "ts"]).reset_index(drop=True)
    tr = truth_at(pts)
    stream_t = {n: numeric(tr["stream"][n]) for n in names}
    ideal_t = {n: numeric(tr["ideal"][n]) for n in names}
    unver = {n: tr["unverified"][n].to_numpy() for n in names}
    # the store's step function at each point (asof join, empty before the first row)
    left = pts.sort_values("ts", kind="stable").reset_index()
    right = rows[[key, "ts", *names]]
    if carry is not None and len(carry):
        right = pd.concat([carry[[key, "ts", *names]], right], ignore_index=True)
    right = right.rename(columns={"ts": "__row_ts"})
    right = right.sort_values("__row_ts", kind="stable")
    left["__t"] = left["ts"]
    merged = pd.merge_asof(left, right, left_on="__t", right_on="__row_ts", by=key,
                           direction="backward").set_index("index").sort_index()
    no_row = merged["__row_ts"].isna().to_numpy()
    store_v = {}
    for n in names:
        v = numeric(merged[n])
        e = empties[n]
        v[no_row] = np.nan if e is None or (isinstance(e, float) and math.isnan(e)) else float(e)
        store_v[n] = v
    has_row = (merged["__row_ts"].to_numpy() == pts["ts"].to_numpy())
    keys = pts[key].to_numpy()
    ts = pts["ts"].to_numpy()
    first_of_key = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    # does the stream truth change at each point? (vs the previous point, or the empty vector)
    changed = np.zeros(len(pts), dtype=bool)
    for n in names:
        cur = stream_t[n]
        prev = np.r_[np.nan, cur[:-1]] if len(cur) else cur
        e = empties[n]
        ev_ = np.nan if e is None or (isinstance(e, float) and math.isnan(e)) else float(e)
        prev = np.where(first_of_key, ev_, prev)
        changed |= ~values_equal(cur, prev, opts.rtol, opts.atol)
    target = stream_t if opts.truth == "stream" else ideal_t
    mism, expl, compared, late_pts = {}, {}, {}, {}
    for n in names:
        comp = ~unver[n] if opts.truth == "stream" else np.ones(len(pts), bool)
        bad = ~values_equal(store_v[n], target[n], opts.rtol, opts.atol) & comp
        ok_stream = values_equal(store_v[n], stream_t[n], opts.rtol, opts.atol)
        explained = bad & ok_stream & (opts.truth == "ideal")
        mism[n] = bad & ~explained
        expl[n] = explained
        compared[n] = comp
        late_pts[n] = ~values_equal(stream_t[n], ideal_t[n], opts.rtol, opts.atol) & ~unver[n]
    any_m = np.zeros(len(pts), bool)
    for n in names:
        any_m |= mism[n]
    nxt = np.r_[ts[1:], 0] if len(ts) else ts
    last_of_key = np.r_[keys[1:] != keys[:-1], True] if len(keys) else np.zeros(0, bool)
    weight = np.where(last_of_key, np.maximum(horizon - ts, 0), nxt - ts).astype("float64")
    weight[ts > horizon] = 0.0
    row_keys = set(rows[key].unique())
    stored_keys = row_keys | (set(carry[key].unique()) if carry is not None else set())
    event_keys = set(log.events[key].astype(str).unique())
    key_any_nonempty = pd.Series(changed).groupby(keys).any() if len(keys) else pd.Series()
    missing_keys = sorted(k for k, v in key_any_nonempty.items()
                          if v and k not in stored_keys)
    extra_keys = sorted(row_keys - event_keys)
    cls = np.where(has_row, "wrong_value", np.where(changed, "missing_row", "carried"))
    examples = []
    for i in np.flatnonzero(any_m)[: opts.examples]:
        examples.append({
            "key": str(keys[i]), "time": iso(ts[i]), "class": str(cls[i]),
            "features": {n: {"store": json_value(store_v[n][i]), "truth": json_value(target[n][i])}
                         for n in names if mism[n][i]},
        })
    n_pts = len(pts)
    section = {
        "rows": len(off),
        "keys": len(row_keys),
        "duplicate_rows": int(dup_mask.sum()),
        "conflicting_duplicates": conflicting,
        "rows_after_horizon": int((rows["ts"] > horizon).sum()),
        "points_compared": n_pts,
        "mismatched_points": int(any_m.sum()),
        "mismatch_rate": float(any_m.sum() / n_pts) if n_pts else 0.0,
        "mismatch_time_fraction": float(weight[any_m].sum() / weight.sum())
        if weight.sum() else 0.0,
        "by_class": {c: int((any_m & (cls == c)).sum())
                     for c in ("wrong_value", "missing_row", "carried")},
        "missing_rows": int((any_m & changed & ~has_row).sum()),
        "extra_rows": int((has_row & ~changed).sum()),
        "redundant_rows": int((has_row & ~changed & ~any_m).sum()),
        "wrong_value_rows": int((any_m & has_row).sum()),
        "missing_keys": {"count": len(missing_keys), "examples": missing_keys[:10]},
        "extra_keys": {"count": len(extra_keys), "examples": extra_keys[:10]},
        "unverified_points": int(np.any([unver[n] for n in names], axis=0).sum())
        if n_pts else 0,
        "lateness": {
            "points_differing_from_ideal": int(np.any([late_pts[n] for n in names],
                                                      axis=0).sum()) if n_pts else 0,
            "explained_by_lateness": int(np.any([expl[n] for n in names], axis=0).sum())
            if n_pts else 0,
            "by_feature": {n: int(late_pts[n].sum()) for n in names},
        },
        "features": feature_stats(names, store_v, target, mism, compared),
        "worst_keys": worst_keys(keys, ts, any_m, mism, opts.top_keys),
        "examples": examples,
    }
    frame = pd.DataFrame({key: keys, "ts": ts, "has_row": has_row})
    for n in names:
        frame[f"{n}__store"] = store_v[n]
        frame[f"{n}__truth"] = target[n]
        frame[f"{n}__mismatch"] = mism[n]
    return section, frame
