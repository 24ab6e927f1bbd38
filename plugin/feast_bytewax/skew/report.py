"""`feast-bytewax skew`: row-level training-serving skew detection.

Every feature is recomputed *in batch* from the raw event log with
`batch_reference.batch_features` (DuckDB SQL generated from the same Feast definitions, no
code shared with the streaming engine) and compared, feature by feature, with

(a) the rows the dataflow wrote to the offline store (the push source's batch source, read
    with the parquet-folder store's reader), and
(b) the feature vectors actually served, as logged by `feast_bytewax.stores.feature_logging`
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

Lateness. The stream applies an event that arrives behind the watermark (the minimum over
input partitions of newest event time - watermark delay) but within the allowed lateness as
a correction stamped at that watermark W: the event counts only from W on. Events further behind are
dropped (dead letters). A recomputation that lets every event count from its own time would
differ from the stream right after late events. So the truth is computed with the stream's
visibility model, derived here from the input order (the same order the replay reads:
files in name order, rows in file order) with per-partition (per-file) watermarks, the
watermark delay and the allowed lateness (exact for one file; for several, the bound
described in `skew.events.visibility_model`):

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

Served vectors against the exact rows (`skew.online_exact`): how many served vectors differed
from the offline rows as of their time (provisional online values), reported, not judged.

Output: `<out>/skew_report.json` and `<out>/skew_report.html` (inline SVG, one plot per
feature). Exit code 1 when the mismatch rate (offline and logged, the larger) exceeds
`--max-mismatch-rate` (default 0).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feast_bytewax.config import FlowConfig, SkewConfig
from feast_bytewax.features.spec import EngineSpec, load_spec
from feast_bytewax.ingest.filesystems import is_uri
from feast_bytewax.skew.compare import iso, json_value
from feast_bytewax.skew.events import (
    SkewOptions,
    read_events,
)
from feast_bytewax.skew.html import render_html
from feast_bytewax.skew.logged import (
    compare_logged,
    logged_points,
    read_logs,
)
from feast_bytewax.skew.offline import compare_offline, offline_sources, read_offline
from feast_bytewax.skew.online_exact import served_vs_exact
from feast_bytewax.skew.online_exact import summary_line as online_exact_line
from feast_bytewax.skew.truth import (
    change_candidates,
    empty_vector,
    truth_lookup,
)
from feast_bytewax.skew.window import read_window_events, resolve_window
from feast_bytewax.timeutil import US_PER_S, to_us, utc_now_us

REPORT_JSON = "skew_report.json"
REPORT_HTML = "skew_report.html"


def _dead_letter_late(repo: Path) -> int | None:
    """Late (dropped) events the run recorded, if its dead-letter file(s) are there."""
    path = FlowConfig.model_fields["dead_letters"].default
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
                   store: Any, spec: EngineSpec | None = None,
                   service_name: str | None = None) -> tuple[dict, dict]:
    """Everything `run_skew` writes: (report dict, plot data per feature). `store` is the
    repo's `FeatureStore`."""
    t0 = time.perf_counter()
    repo = Path(repo).resolve()
    spec = spec if spec is not None else load_spec(store, opts.entity)
    # Features over joined or looked-up columns are not recomputed from the event log alone
    # (they need the table versions, or the store's value at processing time): named, not
    # checked. tests/e2e/test_joins_e2e.py checks them against an as-of reference.
    unchecked = [f.name for f in spec.features if f.depends]
    spec = replace(spec, features=tuple(f for f in spec.features if not f.depends))
    key = spec.join_key
    log = read_window_events(events, spec, opts) if opts.windowed \
        else read_events(events, spec, opts)
    ev = log.events
    horizon = log.horizon if log.horizon is not None else 0
    first_point = opts.window_start_us if opts.windowed else opts.start_us
    cand = change_candidates(spec, ev, horizon, first_point) if len(ev) else pd.DataFrame(
        {key: pd.Series([], dtype=object), "ts": pd.Series([], dtype="int64")})
    cand[key] = cand[key].astype(str)
    sources = offline_sources(store, spec)
    offline_frames = []
    for source, names in sources:
        first = int(ev["event_timestamp"].min()) if len(ev) else None
        off, uri, carry = read_offline(store, spec, source, names, opts, since=first)
        offline_frames.append((source, names, off, uri, carry))
    service = _service(store, spec, service_name)
    logs = read_logs(store, service)
    lp = logged_points(spec, service, logs, log.horizon, opts) if logs is not None else None
    all_pts = [cand[[key, "ts"]]] + [o[[key, "ts"]] for _, _, o, _, _ in offline_frames]
    if lp is not None and len(lp):
        all_pts.append(lp[[key, "ts"]])
        all_pts.append(lp[[key, "alt_ts"]].rename(columns={"alt_ts": "ts"}))
    truth_at, truth = truth_lookup(spec, log, opts, pd.concat(all_pts, ignore_index=True))
    empties = empty_vector(spec, ev)
    offline, frames = [], []
    for source, names, off, uri, carry in offline_frames:
        section, frame = compare_offline(spec, names, off, cand, truth_at, empties, log, opts,
                                         carry=carry)
        offline.append({"source": source.name, "uri": uri, "features_checked": names,
                        **section})
        frames.append(frame)
    logged = compare_logged(spec, lp, truth_at, empties, opts) \
        if lp is not None and len(lp) else None
    if logged is not None:
        logged["feature_service"] = service.name
    versus_exact = served_vs_exact(lp, key, [(names, off, carry) for _, names, off, _, carry
                                             in offline_frames], empties, opts.rtol, opts.atol) \
        if lp is not None and len(lp) else {"vectors": 0}
    dl_late = _dead_letter_late(repo)
    model_dropped = int(ev["dropped"].sum())
    warnings_ = []
    # (a window's events are not the run's whole input: its dead letters do not compare)
    if dl_late is not None and dl_late != model_dropped and opts.sample_keys >= 1.0 \
            and not opts.windowed:
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
            "truth": opts.truth,
            "watermark_delay_s": opts.watermark_delay_us / US_PER_S,
            "allowed_lateness_s": opts.allowed_lateness_us / US_PER_S,
            "rtol": opts.rtol, "atol": opts.atol, "sample_keys": opts.sample_keys,
            "start": iso(opts.start_us), "end": iso(opts.end_us),
        },
        "window": {"since": iso(opts.window_start_us), "until": iso(opts.window_end_us),
                   "events_read_from": iso(log.read_from)} if opts.windowed else None,
        "spec": {"join_key": key, "features": [
            {"name": f.name, "view": f.view, "function": f.function, "column": f.column,
             "kind": f.kind, "window_s": f.window_us / US_PER_S,
             "slide_s": f.slide_us / US_PER_S,
             "filter": {c: sorted(v) for c, v in f.where}} for f in spec.features]},
        "event_log": {
            "files": log.files, "valid_events": len(ev), "rejected": log.rejected,
            "keys": int(ev[key].nunique()) if len(ev) else 0,
            "first_event": iso(ev["event_timestamp"].min()) if len(ev) else None,
            "horizon": iso(log.horizon),
            "corrections": int(ev["corrected"].sum()), "dropped_late": model_dropped,
            "dead_letters_late": dl_late,
            "shadow_points": truth.shadow_points, "shadow_rows": truth.shadow_rows,
            "truth_seconds": round(truth.seconds, 3),
        },
        "offline": offline,
        "logged": logged if logged is not None else {
            "vectors": 0, "note": "no feature logs (no logging_config on the feature service, "
                                  "or nothing served through the logging provider yet)"},
        "online_vs_exact": versus_exact,
        "threshold": {"max_mismatch_rate": None, "observed_mismatch_rate": observed,
                      "passed": None},
        "warnings": warnings_,
        "not_checked": {"features": unchecked,
                        "why": "they read joined, looked-up or derived columns; the event log "
                               "alone does not determine them"},
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
            "truth": [json_value(x) for x in sub[f"{n}__truth"]],
            "store": [json_value(x) for x in sub[f"{n}__store"]],
            "mismatch": [bool(x) for x in sub[f"{n}__mismatch"]],
            "has_row": [bool(x) for x in sub["has_row"]],
        }
    return out


def write_report(report: dict, plots: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jpath, hpath = out / REPORT_JSON, out / REPORT_HTML
    jpath.write_text(json.dumps({**report, "plots": plots}, indent=2, default=str) + "\n",
                     encoding="utf-8")
    hpath.write_text(render_html(report, plots), encoding="utf-8")
    return jpath, hpath


def skew_options(cfg: SkewConfig, now_us: int | None = None) -> SkewOptions:
    """The report's options from the command's settings (times in microseconds); a
    `--since` window is resolved against `now_us` (default: the wall clock)."""
    window = None
    if cfg.since is not None:
        window = resolve_window(cfg.since, cfg.until,
                                utc_now_us() if now_us is None else now_us,
                                cfg.watermark_delay, cfg.settle)
    return SkewOptions(
        window_start_us=window.start_us if window else None,
        window_end_us=window.end_us if window else None,
        watermark_delay_us=round(cfg.watermark_delay * US_PER_S),
        allowed_lateness_us=round(cfg.allowed_lateness * US_PER_S),
        max_future_us=round(cfg.max_future * US_PER_S),
        truth=cfg.truth, rtol=cfg.rtol, atol=cfg.atol, sample_keys=cfg.sample_keys,
        start_us=to_us(cfg.start) if cfg.start is not None else None,
        end_us=to_us(cfg.end) if cfg.end is not None else None,
        s3_endpoint=cfg.s3_endpoint, entity=cfg.entity,
    )


def _summary(report: dict, jpath: Path, hpath: Path) -> str:
    lines = []
    if report.get("window"):
        w = report["window"]
        lines.append(f"window: [{w['since']}, {w['until']}), events read from "
                     f"{w['events_read_from']} (the features' lookback)")
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
        lines.append(online_exact_line(report.get("online_vs_exact", {})))
    else:
        lines.append("logged: no feature logs")
    if report["not_checked"]["features"]:
        lines.append(f"not checked: {', '.join(report['not_checked']['features'])} "
                     f"({report['not_checked']['why']})")
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    th = report["threshold"]
    if th.get("duplicate_rows"):
        lines.append(f"{th['duplicate_rows']:,} rows are stored more than once (same key and "
                     "time): FAIL even if readers see the newest copy")
    lines.append(f"mismatch rate {th['observed_mismatch_rate']:.4%} "
                 f"(max {th['max_mismatch_rate']:.4%}): {'PASS' if th['passed'] else 'FAIL'}")
    lines.append(f"report: {jpath}  {hpath}")
    return "\n".join(lines)


def run_skew(cfg: SkewConfig, store: Any, events: str) -> tuple[int, str, dict]:
    """Compute, write and judge the report; returns (exit code, the printed summary, the
    report)."""
    opts = skew_options(cfg)
    repo = Path(cfg.repo).resolve()
    path: str | Path = events
    if not is_uri(path):
        path = Path(path)
        if not path.is_absolute() and not path.exists():
            path = repo / path
    out = cfg.resolve(cfg.out)
    report, plots = compute_report(repo, path, opts, store, service_name=cfg.feature_service)
    th = report["threshold"]
    th["max_mismatch_rate"] = cfg.max_mismatch_rate
    duplicates = sum(o["duplicate_rows"] for o in report["offline"])
    th["duplicate_rows"] = duplicates
    # a row stored twice is a defect even when readers resolve it (`compact` removes them)
    th["passed"] = th["observed_mismatch_rate"] <= cfg.max_mismatch_rate and duplicates == 0
    jpath, hpath = write_report(report, plots, out)
    return (0 if th["passed"] else 1), _summary(report, jpath, hpath), report
