"""Skew detection, expected values: the compared points and the batch truth at them,
with the stream's visibility model (correction shadows). See `feast_bytewax.skew.report`."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from feast_bytewax.features.spec import EngineSpec, FeatureSpec
from feast_bytewax.skew.batch_reference import batch_features
from feast_bytewax.skew.events import EventLog, SkewOptions, counted_mask

KEY_SEP = "\x1f"


def change_candidates(spec: EngineSpec, ev: pd.DataFrame, horizon: int,
                      start: int | None = None) -> pd.DataFrame:
    """(key, ts) of every time at which a key's batch value may change, from `start` (a
    range replay: its first instant, where every key with a value has a row) up to
    `horizon`: event times, visibility times of corrections, pane exits, session expiries."""
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
    if start is not None:
        parts.append(pd.DataFrame({key: pd.unique(ev[key]), "ts": start}))
    pts = pd.concat(parts, ignore_index=True)
    pts = pts[pts["ts"] <= horizon]
    if start is not None:
        pts = pts[pts["ts"] >= start]
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



def truth_lookup(spec: EngineSpec, log: EventLog, opts: SkewOptions, all_points: pd.DataFrame):
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
