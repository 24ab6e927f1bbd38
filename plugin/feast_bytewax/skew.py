"""`feast-bytewax skew`: row-level training-serving skew detection.

Every feature is recomputed *in batch* from the raw event log with
`batch_reference.batch_features` (DuckDB SQL generated from the same Feast definitions, no
code shared with the streaming engine) and compared, feature by feature, with

(a) the rows the dataflow wrote to the offline store (the push source's batch source, read
    with the parquet-folder store's reader), and
(b) the feature vectors actually served, as logged by `feast_bytewax.feature_logging`
    (Feast's logged-features format), when the feature service has a logging config and
    logs exist.

What is compared (shared/spec/features.md). A key's feature vector is a step function of
time. The offline rows of a key define the store's step function S(k, t) = the latest row at
or before t (the empty vector before the first row), exactly what a point-in-time join
returns. The batch truth B(k, t) is the SQL value as of t. Both are constant between their
breakpoints, so they are equal everywhere iff they agree at the union of

- the offline row timestamps, and
- every time at which B may change: an event becoming visible, a pane leaving a sliding
  window (floor(t_e / S) * S + W), a session expiring (t_e + G),

up to the horizon H = the newest valid event time (a finite replay ends there). Those points
are the "compared points"; the mismatch rate is the fraction of them where the two disagree
(per feature, and for the vector). `mismatch_time_fraction` weights each point by the time
until the key's next point. Each mismatched point is classified:

- `wrong_value`: the store has a row at exactly t and its value is wrong;
- `missing_row`: B changes at t (the spec requires a row there) and the store has none, so
  it still holds an older value (a dropped part file or row, a lost flush);
- `carried`: neither; an earlier divergence carried forward.

Row counts: `missing_rows` (change points of B without a row, store wrong there),
`extra_rows` (rows at times where B does not change; `redundant_rows` of those carry the
right value and are harmless to point-in-time joins), `duplicate_rows` (same key and time
twice; `conflicting_duplicates` with different values), `rows_after_horizon`, keys with
rows but no events (`extra_keys`) and keys whose truth is non-empty but have no row at all
(`missing_keys`).

Lateness. The stream applies an event that arrives behind its shard's watermark (newest
event time of the shard - watermark delay) but within the allowed lateness as a correction
stamped at that watermark W: the event counts only from W on. Events further behind are
dropped (dead letters). A recomputation that lets every event count from its own time would
differ from the stream right after late events. So the truth is computed with the stream's
visibility model, derived here from the input order (the same order the replay reads:
files in name order, rows in file order) with per-shard watermarks
(`routing.shard_of(user, shards)`), the watermark delay and the allowed lateness:

- dropped events are removed from the SQL input;
- points inside a correction's shadow [t_e, W) of the same key are recomputed by the same
  SQL over that key's events minus the corrections not yet visible (one virtual key per
  distinct invisible set), so the truth is exact there too.

The "ideal" truth (every event on time, none dropped) is computed as well: points where it
differs from the stream truth are reported as `lateness_points`, the skew that late data
causes between a batch-backfilled training set and the stream. `--truth ideal` compares the
store with the ideal truth instead; mismatches that the visibility model explains are then
counted as `explained_by_lateness`.

The model is exact for a replay of one file, or of a folder whose files partition the keys
by shard. For a folder partitioned otherwise, or a live (Kafka, wall-clock) run, the
stream's arrival order is not reproducible; the report compares the model's count of
dropped events with the run's dead letters and warns when they differ.

Served vectors (b): each logged value is compared with B at the value's own event
timestamp (the online row it came from). A NOT_FOUND value (no online row) is compared
with B at min(serve time, H): a non-empty truth there is a mismatch (`missing_online`).
`staleness_s` is serve time minus the value's event time.

Output: `<out>/skew_report.json` and `<out>/skew_report.html` (inline SVG, one plot per
feature). Exit code 1 when the mismatch rate (offline and logged, the larger) exceeds
`--max-mismatch-rate` (default 0).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feast_bytewax.batch_reference import batch_features
from feast_bytewax.filesystems import is_uri
from feast_bytewax.spec import EngineSpec, FeatureSpec
from feast_bytewax.timeutil import US_PER_S, from_us, utc_now_us

KEY_SEP = "\x1f"
REPORT_JSON = "skew_report.json"
REPORT_HTML = "skew_report.html"
STATUS_PRESENT, STATUS_NULL, STATUS_NOT_FOUND = 1, 2, 3


@dataclass(frozen=True)
class SkewOptions:
    """What `compute_report` needs besides the data. Times in microseconds."""

    shards: int = 32
    watermark_delay_us: int = 5 * US_PER_S
    allowed_lateness_us: int = 600 * US_PER_S
    max_future_us: int = 300 * US_PER_S
    truth: str = "stream"  # or "ideal"
    rtol: float = 1e-9
    atol: float = 1e-9
    sample_keys: float = 1.0
    max_shadow_rows: int = 50_000_000
    top_keys: int = 10
    examples: int = 20
    start_us: int | None = None
    end_us: int | None = None
    s3_endpoint: str | None = None  # for s3:// event logs (default: the environment's)


# ---------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------


@dataclass
class EventLog:
    """Valid events in arrival order (`ts` epoch us) and the stream's visibility model."""

    events: pd.DataFrame  # key, event_timestamp (us), used columns, vis, dropped, corrected
    rejected: int
    horizon: int | None
    files: list[str] = field(default_factory=list)


def _sampled(keys: pd.Series, fraction: float) -> np.ndarray:
    """A stable subset of keys (crc32 of the key), `fraction` of them."""
    if fraction >= 1.0:
        return np.ones(len(keys), dtype=bool)
    cut = int(fraction * 1_000_000)
    uniq = pd.unique(keys)
    keep = {k for k in uniq if zlib.crc32(str(k).encode("utf-8")) % 1_000_000 < cut}
    return keys.isin(keep).to_numpy()


def read_events(path: str | Path, spec: EngineSpec, opts: SkewOptions) -> EventLog:
    """Read the raw log the way the replay does (same files, order, start/end filter and
    validation rules); invalid rows are counted and left out, as the stream does."""
    from feast_bytewax.events import Event
    from feast_bytewax.sources import EventFileSource, list_event_files
    from feast_bytewax.validate import validate_item

    start = from_us(opts.start_us) if opts.start_us is not None else None
    end = from_us(opts.end_us) if opts.end_us is not None else None
    source = EventFileSource(path, batch_size=50_000, start=start, end=end,
                             s3_endpoint_override=opts.s3_endpoint)
    now, max_future = utc_now_us(), opts.max_future_us
    rows: list[tuple] = []
    rejected = 0
    for name in source.list_parts():
        part = source.build_part("skew", name, None)
        try:
            while True:
                try:
                    batch = part.next_batch()
                except StopIteration:
                    break
                for payload, origin in batch:
                    ev = validate_item(payload, origin, now, max_future)
                    if type(ev) is Event:
                        rows.append((ev.event_id, ev.user_id, ev.event_type, ev.amount,
                                     ev.category, ev.event_timestamp))
                    else:
                        rejected += 1
        finally:
            part.close()
    cols = ["event_id", spec.join_key, "event_type", "amount", "category", "event_timestamp"]
    df = pd.DataFrame.from_records(rows, columns=cols)
    if len(df) and df["event_id"].map(type).nunique() > 1:
        df["event_id"] = df["event_id"].astype(str)
    df["event_timestamp"] = df["event_timestamp"].astype("int64")
    horizon = int(df["event_timestamp"].max()) if len(df) else None
    df = visibility_model(df, spec.join_key, opts)
    keep = _sampled(df[spec.join_key], opts.sample_keys)
    df = df.loc[keep].reset_index(drop=True)
    files = list_event_files(path, opts.s3_endpoint)
    return EventLog(df, rejected, horizon, [str(p) for p in files])


def visibility_model(df: pd.DataFrame, key: str, opts: SkewOptions) -> pd.DataFrame:
    """Per-shard watermarks over arrival order (the row order of `df`).

    Watermark seen by event i = newest event time of its shard before i - delay. An event
    at or behind it is a correction visible from the watermark when it is at most the
    allowed lateness behind, else dropped. Adds `vis` (int us), `corrected`, `dropped`.
    """
    from feast_bytewax.routing import shard_of

    out = df.copy()
    ts = out["event_timestamp"]
    if not len(out):
        out["vis"] = ts
        out["corrected"] = np.zeros(0, bool)
        out["dropped"] = np.zeros(0, bool)
        return out
    shard_map = {u: shard_of(str(u), opts.shards) for u in pd.unique(out[key])}
    shard = out[key].map(shard_map)
    newest_before = ts.groupby(shard).cummax().groupby(shard).shift(1)
    wm = newest_before - opts.watermark_delay_us
    behind = (ts <= wm).fillna(False).to_numpy(dtype=bool)
    lag = (wm - ts).to_numpy()
    corrected = behind & (lag <= opts.allowed_lateness_us)
    dropped = behind & ~corrected
    out["vis"] = np.where(corrected, np.nan_to_num(wm.to_numpy(), nan=0), ts).astype("int64")
    out["corrected"] = corrected
    out["dropped"] = dropped
    return out


def counted_mask(f: FeatureSpec, df: pd.DataFrame) -> np.ndarray:
    """Events the feature counts (all its filter clauses hold)."""
    m = np.ones(len(df), dtype=bool)
    for column, allowed in f.where:
        m &= df[column].isin(list(allowed)).to_numpy()
    return m


# ---------------------------------------------------------------------------------------
# Points and truth
# ---------------------------------------------------------------------------------------


def change_candidates(spec: EngineSpec, ev: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """(key, ts) of every time at which a key's batch value may change, up to `horizon`:
    event times, visibility times of corrections, pane exits and session expiries."""
    key = spec.join_key
    t = ev["event_timestamp"].to_numpy()
    parts = [pd.DataFrame({key: ev[key].to_numpy(), "ts": t})]
    corr = ev["corrected"].to_numpy()
    if corr.any():
        parts.append(pd.DataFrame({key: ev[key].to_numpy()[corr],
                                   "ts": ev["vis"].to_numpy()[corr]}))
    for f in spec.features:
        m = counted_mask(f, ev)
        if f.kind == "sliding":
            when = t[m] // f.slide_us * f.slide_us + f.window_us
        else:
            when = t[m] + f.window_us
        parts.append(pd.DataFrame({key: ev[key].to_numpy()[m], "ts": when}))
    pts = pd.concat(parts, ignore_index=True)
    pts = pts[pts["ts"] <= horizon]
    return pts.drop_duplicates().reset_index(drop=True)


def _feature_groups(spec: EngineSpec) -> dict[tuple, list[FeatureSpec]]:
    """Features that count the same events (same filter)."""
    out: dict[tuple, list[FeatureSpec]] = {}
    for f in spec.features:
        out.setdefault(f.where, []).append(f)
    return out


@dataclass
class Truth:
    """Batch values at `points` (aligned by position): stream truth, ideal truth, and which
    (point, feature) cells could not be verified (shadow budget exceeded)."""

    points: pd.DataFrame
    stream: pd.DataFrame
    ideal: pd.DataFrame
    unverified: pd.DataFrame  # bool per feature
    shadow_points: int = 0
    shadow_rows: int = 0
    seconds: float = 0.0


def _event_frame(spec: EngineSpec, ev: pd.DataFrame) -> pd.DataFrame:
    cols = {spec.join_key, "event_timestamp"} | {f.column for f in spec.features} \
        | {c for f in spec.features for c, _ in f.where}
    return ev[[c for c in ev.columns if c in cols]]


def compute_truth(spec: EngineSpec, log: EventLog, points: pd.DataFrame,
                  opts: SkewOptions) -> Truth:
    """Batch SQL values at every point, with the stream's visibility model (see module doc)."""
    t0 = time.perf_counter()
    key = spec.join_key
    ev = log.events
    names = list(spec.feature_names)
    pts = points[[key, "ts"]].reset_index(drop=True)
    all_events = _event_frame(spec, ev)
    kept = _event_frame(spec, ev.loc[~ev["dropped"].to_numpy()])
    stream = batch_features(spec, kept, pts)[names]
    late = bool(ev["dropped"].any() or ev["corrected"].any())
    ideal = batch_features(spec, all_events, pts)[names] if late else stream.copy()
    unverified = pd.DataFrame(False, index=pts.index, columns=names)
    truth = Truth(pts, stream, ideal, unverified)
    if ev["corrected"].any():
        _shadows(spec, ev, truth, opts)
    truth.seconds = time.perf_counter() - t0
    return truth


def _shadows(spec: EngineSpec, ev: pd.DataFrame, truth: Truth, opts: SkewOptions) -> None:
    """Recompute points inside correction shadows [t_e, vis) over the key's events minus the
    corrections not yet visible there: one virtual key per (key, invisible set)."""
    import duckdb

    key = spec.join_key
    pts = truth.points
    kept = ev.loc[~ev["dropped"].to_numpy()].reset_index(drop=True)
    corr_all = kept.loc[kept["corrected"].to_numpy()]
    con = duckdb.connect()
    try:
        con.register("p", pd.DataFrame({"rid": np.arange(len(pts)), "k": pts[key].astype(str),
                                        "ts": pts["ts"].to_numpy()}))
        con.register("c", pd.DataFrame({"cid": corr_all.index.to_numpy(),
                                        "k": corr_all[key].astype(str),
                                        "te": corr_all["event_timestamp"].to_numpy(),
                                        "v": corr_all["vis"].to_numpy()}))
        member = con.sql("SELECT p.rid, c.cid FROM p JOIN c ON p.k = c.k "
                         "AND p.ts >= c.te AND p.ts < c.v").df()
    finally:
        con.close()
    if member.empty:
        return
    by_key_idx = {k: idx.to_numpy() for k, idx in kept.groupby(key, sort=False).groups.items()}
    ts_all = kept["event_timestamp"].to_numpy()
    for _where, feats in _feature_groups(spec).items():
        counts_g = counted_mask(feats[0], kept)
        cids_g = set(corr_all.index[counts_g[corr_all.index]].tolist())
        mem = member[member["cid"].isin(cids_g)]
        if mem.empty:
            continue
        xs = mem.sort_values(["rid", "cid"]).groupby("rid")["cid"].agg(tuple)
        rids = xs.index.to_numpy()
        groups = pd.DataFrame({"rid": rids, "k": pts[key].to_numpy()[rids],
                               "ts": pts["ts"].to_numpy()[rids], "x": xs.to_numpy()})
        sliding_w = max((f.window_us for f in feats if f.kind == "sliding"), default=0)
        gap = max((f.window_us for f in feats if f.kind == "session"), default=0)
        sub = replace(spec, features=tuple(feats))
        total = 0
        plan = []
        per_key: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for gid, ((k, x), grp) in enumerate(groups.groupby(["k", "x"], sort=False)):
            if k not in per_key:  # the key's counted events by time, and session starts
                idx = by_key_idx.get(k, np.zeros(0, np.int64))
                idx = idx[counts_g[idx]]
                order = np.argsort(ts_all[idx], kind="stable")
                idx = idx[order]
                t_k = ts_all[idx]
                starts = np.r_[0, np.flatnonzero(np.diff(t_k) >= gap) + 1] if gap \
                    else np.zeros(1, np.int64)
                per_key[k] = (idx, t_k, starts)
            idx, t_k, starts = per_key[k]
            t_min, t_max = int(grp["ts"].min()), int(grp["ts"].max())
            lo = t_min - sliding_w if sliding_w else t_min
            if gap:
                j = int(np.searchsorted(t_k, t_min, side="right")) - 1
                if j >= 0:  # removing events only splits sessions: start no earlier
                    first = int(starts[np.searchsorted(starts, j, side="right") - 1])
                    lo = min(lo, int(t_k[first]))
            a = int(np.searchsorted(t_k, lo, side="left"))
            b = int(np.searchsorted(t_k, t_max, side="right"))
            sel = idx[a:b]
            sel = sel[~np.isin(sel, np.fromiter(x, dtype=np.int64))]
            total += len(sel)
            plan.append((gid, k, sel, grp))
        truth.shadow_points += len(groups)
        if total > opts.max_shadow_rows:
            for f in feats:
                truth.unverified.loc[rids, f.name] = True
            continue
        truth.shadow_rows += total
        frame_cols = list(_event_frame(spec, kept).columns)
        sels = [sel for _, _, sel, _ in plan]
        take = np.concatenate(sels) if sels else np.zeros(0, np.int64)
        vkeys = [f"{k}{KEY_SEP}{gid}" for gid, k, _, _ in plan]
        vev = kept[frame_cols].iloc[take].reset_index(drop=True)
        vev[key] = np.repeat(np.array(vkeys, dtype=object), [len(x) for x in sels])
        vpts = pd.DataFrame({
            key: np.repeat(np.array(vkeys, dtype=object), [len(g) for _, _, _, g in plan]),
            "ts": np.concatenate([g["ts"].to_numpy() for _, _, _, g in plan]),
            "rid": np.concatenate([g["rid"].to_numpy() for _, _, _, g in plan]),
        })
        got = batch_features(sub, vev, vpts[[key, "ts"]])
        for f in feats:
            truth.stream.loc[vpts["rid"].to_numpy(), f.name] = got[f.name].to_numpy()


def empty_vector(spec: EngineSpec, ev: pd.DataFrame) -> dict[str, Any]:
    """Each feature's value over no events, from the same SQL (a point with no events)."""
    one = pd.DataFrame({spec.join_key: ["\x00no-such-key"], "ts": [0]})
    got = batch_features(spec, _event_frame(spec, ev).iloc[:0], one)
    return {n: got[n].iloc[0] for n in spec.feature_names}


# ---------------------------------------------------------------------------------------
# Comparison helpers
# ---------------------------------------------------------------------------------------


def _num(s: pd.Series | np.ndarray) -> np.ndarray:
    """Values as float64 with NaN for null (ints and nullable ints included)."""
    return pd.to_numeric(pd.Series(s), errors="coerce").astype("float64").to_numpy()


def _to_us(values: Any) -> np.ndarray:
    """Timestamps (any unit, aware or UTC-naive) -> epoch microseconds; NaT -> 0."""
    ts = pd.to_datetime(pd.Series(values), utc=True)
    us = (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    return us.fillna(0).astype("int64").to_numpy()


def _equal(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    both_null = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= atol + rtol * np.abs(b)
    return both_null | np.nan_to_num(close, nan=0).astype(bool)


def _iso(us: Any) -> str | None:
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return None
    return from_us(int(us)).isoformat().replace("+00:00", "Z")


def _val(x: Any) -> Any:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, float) and x.is_integer() and abs(x) < 2**53:
        return x
    return float(x) if isinstance(x, float | np.floating) else x


def _feature_stats(names: list[str], store: dict[str, np.ndarray], target: dict[str, np.ndarray],
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


def _worst_keys(keys: np.ndarray, ts: np.ndarray, mism_any: np.ndarray,
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
        "first_mismatch": _iso(r["first"]),
        "features": [f for f in mism if feats.loc[k, f] > 0],
    } for k, r in agg.iterrows()]


# ---------------------------------------------------------------------------------------
# (a) offline rows
# ---------------------------------------------------------------------------------------


def _offline_sources(store: Any, spec: EngineSpec) -> list[tuple[Any, list[str]]]:
    """(FileSource, features written there) for each batch source of the spec's views."""
    views = {v.name: v for v in store.list_stream_feature_views()}
    by_source: dict[str, tuple[Any, list[str]]] = {}
    for f in spec.features:
        src = views[f.view].batch_source
        by_source.setdefault(src.name, (src, []))[1].append(f.name)
    return list(by_source.values())


def read_offline(store: Any, spec: EngineSpec, source: Any, names: list[str],
                 opts: SkewOptions) -> tuple[pd.DataFrame, str]:
    """The batch source's rows: join key, `ts` (int us), features (float64/NaN); in part
    order (the order they were written)."""
    from feast_bytewax.stores.parquet_folder import read_source_frame, resolve_source_uri

    df = read_source_frame(store.config, source)
    uri = resolve_source_uri(store.config, source)
    ts_col = source.timestamp_field or "event_timestamp"
    key = spec.join_key
    out = pd.DataFrame({key: df[key].astype(str).to_numpy() if len(df) else [],
                        "ts": _to_us(df[ts_col])
                        if len(df) else np.zeros(0, np.int64)})
    for n in names:
        out[n] = _num(df[n]) if n in df.columns else np.full(len(df), np.nan)
    keep = _sampled(out[key], opts.sample_keys)
    return out.loc[keep].reset_index(drop=True), uri


def compare_offline(spec: EngineSpec, names: list[str], off: pd.DataFrame,
                    cand: pd.DataFrame, truth_at: Any, empties: dict, log: EventLog,
                    opts: SkewOptions) -> tuple[dict, pd.DataFrame]:
    """Compare the offline step functions with the batch truth at the union of breakpoints.
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
    stream_t = {n: _num(tr["stream"][n]) for n in names}
    ideal_t = {n: _num(tr["ideal"][n]) for n in names}
    unver = {n: tr["unverified"][n].to_numpy() for n in names}
    # the store's step function at each point (asof join, empty before the first row)
    left = pts.sort_values("ts", kind="stable").reset_index()
    right = rows[[key, "ts", *names]].rename(columns={"ts": "__row_ts"})
    right = right.sort_values("__row_ts", kind="stable")
    left["__t"] = left["ts"]
    merged = pd.merge_asof(left, right, left_on="__t", right_on="__row_ts", by=key,
                           direction="backward").set_index("index").sort_index()
    no_row = merged["__row_ts"].isna().to_numpy()
    store_v = {}
    for n in names:
        v = _num(merged[n])
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
        changed |= ~_equal(cur, prev, opts.rtol, opts.atol)
    target = stream_t if opts.truth == "stream" else ideal_t
    mism, expl, compared, late_pts = {}, {}, {}, {}
    for n in names:
        comp = ~unver[n] if opts.truth == "stream" else np.ones(len(pts), bool)
        bad = ~_equal(store_v[n], target[n], opts.rtol, opts.atol) & comp
        ok_stream = _equal(store_v[n], stream_t[n], opts.rtol, opts.atol)
        explained = bad & ok_stream & (opts.truth == "ideal")
        mism[n] = bad & ~explained
        expl[n] = explained
        compared[n] = comp
        late_pts[n] = ~_equal(stream_t[n], ideal_t[n], opts.rtol, opts.atol) & ~unver[n]
    any_m = np.zeros(len(pts), bool)
    for n in names:
        any_m |= mism[n]
    nxt = np.r_[ts[1:], 0] if len(ts) else ts
    last_of_key = np.r_[keys[1:] != keys[:-1], True] if len(keys) else np.zeros(0, bool)
    weight = np.where(last_of_key, np.maximum(horizon - ts, 0), nxt - ts).astype("float64")
    weight[ts > horizon] = 0.0
    row_keys = set(rows[key].unique())
    event_keys = set(log.events[key].astype(str).unique())
    key_any_nonempty = pd.Series(changed).groupby(keys).any() if len(keys) else pd.Series()
    missing_keys = sorted(k for k, v in key_any_nonempty.items() if v and k not in row_keys)
    extra_keys = sorted(row_keys - event_keys)
    cls = np.where(has_row, "wrong_value", np.where(changed, "missing_row", "carried"))
    examples = []
    for i in np.flatnonzero(any_m)[: opts.examples]:
        examples.append({
            "key": str(keys[i]), "time": _iso(ts[i]), "class": str(cls[i]),
            "features": {n: {"store": _val(store_v[n][i]), "truth": _val(target[n][i])}
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
        "features": _feature_stats(names, store_v, target, mism, compared),
        "worst_keys": _worst_keys(keys, ts, any_m, mism, opts.top_keys),
        "examples": examples,
    }
    frame = pd.DataFrame({key: keys, "ts": ts, "has_row": has_row})
    for n in names:
        frame[f"{n}__store"] = store_v[n]
        frame[f"{n}__truth"] = target[n]
        frame[f"{n}__mismatch"] = mism[n]
    return section, frame


# ---------------------------------------------------------------------------------------
# (b) logged served vectors
# ---------------------------------------------------------------------------------------


def read_logs(store: Any, service: Any) -> pd.DataFrame | None:
    """The feature service's logged vectors via Feast's own reader, or None (no logging
    config, or no logs yet)."""
    if service is None or service.logging_config is None:
        return None
    from feast_bytewax.feature_logging import read_logged_features

    df = read_logged_features(store, service)
    return df if df is not None and len(df) else None


def logged_points(spec: EngineSpec, service: Any, logs: pd.DataFrame,
                  horizon: int | None, opts: SkewOptions) -> pd.DataFrame:
    """One row per (logged vector, feature): key, feature, value, status, event time (the
    comparison point) and serve time, in epoch us."""
    from feast.feature_logging import LOG_TIMESTAMP_FIELD, REQUEST_ID_FIELD

    key = spec.join_key
    names = set(spec.feature_names)
    serve = pd.Series(_to_us(logs[LOG_TIMESTAMP_FIELD]))
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
            ts_us = _to_us(ts)
            status = logs[f"{col}__status"].fillna(STATUS_NOT_FOUND).astype(int).to_numpy()
            absent = (status == STATUS_NOT_FOUND) | (ts_us <= 0) | ts.isna().to_numpy()
            point = np.where(absent, np.minimum(serve.to_numpy(), h), ts_us)
            # Online stores may keep whole seconds (Feast's SQLite store does): a value
            # stamped T may come from any row in [T, T + 1 s), in practice the last one
            whole = ~absent & (point % US_PER_S == 0)
            alt = np.where(whole, point + US_PER_S - 1, point)
            parts.append(pd.DataFrame({
                "row": np.arange(len(logs)), key: logs[key].astype(str).to_numpy(),
                "feature": feat.name, "value": _num(logs[col]), "status": status,
                "absent": absent, "ts": point, "alt_ts": alt, "serve_ts": serve.to_numpy(),
                "request_id": logs[REQUEST_ID_FIELD].astype(str).to_numpy(),
            }))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    return out.loc[_sampled(out[key], opts.sample_keys)].reset_index(drop=True)


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
        t = _num(frame[n].to_numpy()[i])
        t_alt = _num(frame[n].to_numpy()[idx_alt[sel]])
        v = sub["value"].to_numpy().copy()
        absent = sub["absent"].to_numpy()
        e = empties[n]
        ev_ = np.nan if e is None or (isinstance(e, float) and math.isnan(e)) else float(e)
        # a value served as NOT_FOUND is judged as the empty vector: fine iff the truth is
        # empty there too (the serving client must apply the same fill as training_frame)
        v[absent] = ev_
        comp = ~cols["unverified"][n].to_numpy()[i] if opts.truth == "stream" \
            else np.ones(len(i), bool)
        ok_alt = _equal(v, t_alt, opts.rtol, opts.atol)
        t = np.where(ok_alt & ~_equal(v, t, opts.rtol, opts.atol), t_alt, t)
        bad = ~_equal(v, t, opts.rtol, opts.atol) & comp
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
                                 "value_time": _iso(lp["ts"].iat[j]),
                                 "served_at": _iso(lp["serve_ts"].iat[j]),
                                 "request_id": lp["request_id"].iat[j],
                                 "served": _val(lp["value"].iat[j]),
                                 "truth": _val(target[n][list(sel).index(j)])})
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
        "features": _feature_stats(names, store_v, target, mism, compared),
        "worst_keys": [{"key": str(k), "mismatched_vectors": int(v)} for k, v in by_key.items()],
        "examples": examples,
    }


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------


def _truth_lookup(spec: EngineSpec, log: EventLog, opts: SkewOptions, all_points: pd.DataFrame):
    """Compute the truth once for every point any comparison needs; return a lookup."""
    key = spec.join_key
    pts = all_points[[key, "ts"]].drop_duplicates().reset_index(drop=True)
    truth = compute_truth(spec, log, pts, opts)
    index = pd.MultiIndex.from_frame(pts[[key, "ts"]])

    def at(points: pd.DataFrame) -> dict[str, pd.DataFrame]:
        pos = index.get_indexer(pd.MultiIndex.from_frame(points[[key, "ts"]]))
        if (pos < 0).any():
            raise KeyError("truth requested at a point that was not computed")
        return {"stream": truth.stream.iloc[pos].reset_index(drop=True),
                "ideal": truth.ideal.iloc[pos].reset_index(drop=True),
                "unverified": truth.unverified.iloc[pos].reset_index(drop=True)}

    return at, truth


def _dead_letter_late(repo: Path) -> int | None:
    """Late (dropped) events the run recorded, if its dead-letter file(s) are there."""
    from feast_bytewax.config import FlowConfig

    path = FlowConfig().dead_letter_path
    path = path if path.is_absolute() else repo / path
    files = [path] if path.exists() else sorted(path.parent.glob(f"{path.stem}.p*{path.suffix}"))
    if not files:
        return None
    n = 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            n += sum(1 for line in fh if '"kind": "late"' in line)
    return n


def compute_report(repo: str | Path, events: str | Path, opts: SkewOptions,
                   store: Any = None, spec: EngineSpec | None = None,
                   service_name: str | None = None) -> tuple[dict, dict]:
    """Everything `main` writes: (report dict, plot data per feature)."""
    from feast_bytewax.runner import open_store
    from feast_bytewax.spec import load_spec

    t0 = time.perf_counter()
    repo = Path(repo).resolve()
    store = store if store is not None else open_store(repo)
    spec = spec if spec is not None else load_spec(store)
    key = spec.join_key
    log = read_events(events, spec, opts)
    ev = log.events
    horizon = log.horizon if log.horizon is not None else 0
    cand = change_candidates(spec, ev, horizon) if len(ev) else pd.DataFrame(
        {key: pd.Series([], dtype=object), "ts": pd.Series([], dtype="int64")})
    cand[key] = cand[key].astype(str)
    sources = _offline_sources(store, spec)
    offline_frames = []
    for source, names in sources:
        off, uri = read_offline(store, spec, source, names, opts)
        offline_frames.append((source, names, off, uri))
    service = _service(store, spec, service_name)
    logs = read_logs(store, service)
    lp = logged_points(spec, service, logs, log.horizon, opts) if logs is not None else None
    all_pts = [cand[[key, "ts"]]] + [o[[key, "ts"]] for _, _, o, _ in offline_frames]
    if lp is not None and len(lp):
        all_pts.append(lp[[key, "ts"]])
        all_pts.append(lp[[key, "alt_ts"]].rename(columns={"alt_ts": "ts"}))
    truth_at, truth = _truth_lookup(spec, log, opts, pd.concat(all_pts, ignore_index=True))
    empties = empty_vector(spec, ev)
    offline, frames = [], []
    for source, names, off, uri in offline_frames:
        section, frame = compare_offline(spec, names, off, cand, truth_at, empties, log, opts)
        offline.append({"source": source.name, "uri": uri, "features_checked": names,
                        **section})
        frames.append(frame)
    logged = compare_logged(spec, lp, truth_at, empties, opts) \
        if lp is not None and len(lp) else None
    dl_late = _dead_letter_late(repo)
    model_dropped = int(ev["dropped"].sum())
    warnings_ = []
    if dl_late is not None and dl_late != model_dropped and opts.sample_keys >= 1.0:
        warnings_.append(
            f"the visibility model drops {model_dropped} late events but the run's dead "
            f"letters record {dl_late}: the arrival order of the run differs from the file "
            "order (folder not partitioned by shard, live run, or other flow settings); "
            "mismatches near late events may be artefacts")
    if offline and all(o["rows"] == 0 for o in offline) and len(ev):
        warnings_.append("the offline store has no rows: has the replay run?")
    off_rate = max((o["mismatch_rate"] for o in offline), default=0.0)
    log_rate = logged["mismatch_rate"] if logged else 0.0
    observed = max(off_rate, log_rate)
    report = {
        "repo": str(repo),
        "events": str(events) if is_uri(events) else str(Path(events).resolve()),
        "generated_at": datetime.now(UTC).isoformat(),
        "seconds": None,
        "options": {
            "truth": opts.truth, "shards": opts.shards,
            "watermark_delay_s": opts.watermark_delay_us / US_PER_S,
            "allowed_lateness_s": opts.allowed_lateness_us / US_PER_S,
            "rtol": opts.rtol, "atol": opts.atol, "sample_keys": opts.sample_keys,
            "start": _iso(opts.start_us), "end": _iso(opts.end_us),
        },
        "spec": {"join_key": key, "features": [
            {"name": f.name, "view": f.view, "function": f.function, "column": f.column,
             "kind": f.kind, "window_s": f.window_us / US_PER_S,
             "slide_s": f.slide_us / US_PER_S,
             "filter": {c: sorted(v) for c, v in f.where}} for f in spec.features]},
        "event_log": {
            "files": log.files, "valid_events": len(ev), "rejected": log.rejected,
            "keys": int(ev[key].nunique()) if len(ev) else 0,
            "first_event": _iso(ev["event_timestamp"].min()) if len(ev) else None,
            "horizon": _iso(log.horizon),
            "corrections": int(ev["corrected"].sum()), "dropped_late": model_dropped,
            "dead_letters_late": dl_late,
            "shadow_points": truth.shadow_points, "shadow_rows": truth.shadow_rows,
            "truth_seconds": round(truth.seconds, 3),
        },
        "offline": offline,
        "logged": logged if logged is not None else {
            "vectors": 0, "note": "no feature logs (no logging_config on the feature service, "
                                  "or nothing served through the logging provider yet)"},
        "threshold": {"max_mismatch_rate": None, "observed_mismatch_rate": observed,
                      "passed": None},
        "warnings": warnings_,
    }
    report["seconds"] = round(time.perf_counter() - t0, 3)
    plots = _plot_data(spec, frames[0] if frames else None, offline[0] if offline else None)
    return report, plots


def _service(store: Any, spec: EngineSpec, name: str | None) -> Any:
    """The feature service to read logs of: `name`, else the one serving the spec's features."""
    if name:
        return store.get_feature_service(name)
    names = set(spec.feature_names)
    for fs in store.list_feature_services():
        served = {f.name for p in fs.feature_view_projections for f in p.features}
        if served & names and fs.logging_config is not None:
            return fs
    return None


def _plot_data(spec: EngineSpec, frame: pd.DataFrame | None, section: dict | None,
               max_points: int = 400) -> dict:
    """Per feature: the worst key's truth and store series around its first mismatch (or the
    busiest key's when all match)."""
    if frame is None or frame.empty:
        return {}
    key = spec.join_key
    out = {}
    for f in spec.features:
        n = f.name
        if f"{n}__store" not in frame.columns:
            continue
        m = frame[f"{n}__mismatch"].to_numpy()
        if m.any():
            k = frame.loc[m, key].value_counts().index[0]
        else:
            k = frame[key].value_counts().index[0]
        sub = frame[frame[key] == k].sort_values("ts")
        mm = sub[f"{n}__mismatch"].to_numpy()
        if len(sub) > max_points:
            centre = int(np.flatnonzero(mm)[0]) if mm.any() else len(sub) // 2
            a = max(0, min(centre - max_points // 2, len(sub) - max_points))
            sub = sub.iloc[a:a + max_points]
        out[n] = {
            "key": str(k),
            "ts": [int(x) for x in sub["ts"]],
            "truth": [_val(x) for x in sub[f"{n}__truth"]],
            "store": [_val(x) for x in sub[f"{n}__store"]],
            "mismatch": [bool(x) for x in sub[f"{n}__mismatch"]],
            "has_row": [bool(x) for x in sub["has_row"]],
        }
    return out


def write_report(report: dict, plots: dict, out: Path) -> tuple[Path, Path]:
    from feast_bytewax.skew_html import render_html

    out.mkdir(parents=True, exist_ok=True)
    jpath, hpath = out / REPORT_JSON, out / REPORT_HTML
    jpath.write_text(json.dumps({**report, "plots": plots}, indent=2, default=str) + "\n",
                     encoding="utf-8")
    hpath.write_text(render_html(report, plots), encoding="utf-8")
    return jpath, hpath


def options_from_args(args: argparse.Namespace) -> SkewOptions:
    from feast_bytewax.config import FlowConfig
    from feast_bytewax.timeutil import to_us

    d = FlowConfig()

    def get(name, default):
        v = getattr(args, name, None)
        return default if v is None else v

    start, end = get("start", None), get("end", None)
    return SkewOptions(
        shards=int(get("shards", d.shards)),
        watermark_delay_us=round(float(get("watermark_delay", d.watermark_delay_s)) * US_PER_S),
        allowed_lateness_us=round(float(get("allowed_lateness", d.allowed_lateness_s))
                                  * US_PER_S),
        max_future_us=round(float(get("max_future", d.max_future_s)) * US_PER_S),
        truth=get("truth", "stream"),
        rtol=float(get("rtol", 1e-9)), atol=float(get("atol", 1e-9)),
        sample_keys=float(get("sample_keys", 1.0)),
        max_shadow_rows=int(get("max_shadow_rows", 50_000_000)),
        start_us=to_us(start) if start is not None else None,
        end_us=to_us(end) if end is not None else None,
        s3_endpoint=get("s3_endpoint", None),
    )


def _summary(report: dict, jpath: Path, hpath: Path) -> str:
    lines = []
    ev = report["event_log"]
    lines.append(f"events: {ev['valid_events']:,} valid ({ev['rejected']:,} rejected), "
                 f"{ev['keys']:,} keys, {ev['corrections']:,} corrections, "
                 f"{ev['dropped_late']:,} dropped late")
    for o in report["offline"]:
        lines.append(
            f"offline {o['source']}: {o['rows']:,} rows, {o['points_compared']:,} points, "
            f"{o['mismatched_points']:,} mismatched ({o['mismatch_rate']:.4%}); missing rows "
            f"{o['missing_rows']:,}, extra rows {o['extra_rows']:,} "
            f"(redundant {o['redundant_rows']:,}), duplicates {o['duplicate_rows']:,}; "
            f"lateness points {o['lateness']['points_differing_from_ideal']:,}")
        for n, s in o["features"].items():
            if s["mismatched"]:
                lines.append(f"  {n}: {s['mismatched']:,} mismatched "
                             f"({s['mismatch_rate']:.4%}), max abs error {s['max_abs_error']:g}")
    lg = report["logged"]
    if lg.get("vectors"):
        lines.append(f"logged: {lg['vectors']:,} served vectors, {lg['mismatched_vectors']:,} "
                     f"mismatched ({lg['mismatch_rate']:.4%}), {lg['missing_online']:,} "
                     "served empty where the truth is not")
    else:
        lines.append("logged: no feature logs")
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    th = report["threshold"]
    lines.append(f"mismatch rate {th['observed_mismatch_rate']:.4%} "
                 f"(max {th['max_mismatch_rate']:.4%}): {'PASS' if th['passed'] else 'FAIL'}")
    lines.append(f"report: {jpath}  {hpath}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    repo = Path(args.repo).resolve()
    events: str | Path = args.events
    if not is_uri(events):
        events = Path(events)
        if not events.is_absolute() and not events.exists():
            events = repo / events
    out = Path(args.out)
    if not out.is_absolute():
        out = repo / out
    report, plots = compute_report(repo, events, opts,
                                   service_name=getattr(args, "feature_service", None))
    limit = float(getattr(args, "max_mismatch_rate", 0.0) or 0.0)
    th = report["threshold"]
    th["max_mismatch_rate"] = limit
    th["passed"] = th["observed_mismatch_rate"] <= limit
    jpath, hpath = write_report(report, plots, out)
    print(_summary(report, jpath, hpath), file=sys.stdout)
    return 0 if th["passed"] else 1
