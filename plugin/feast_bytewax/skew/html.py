"""The skew report as one self-contained HTML page: tables and inline SVG step plots, no
plotting library and no JavaScript."""

from __future__ import annotations

import html
import json
import math
from typing import Any

from feast_bytewax.timeutil import from_us

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 240, 60, 20, 20, 40
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right;font-size:13px}th{background:#f4f4f4}td.l,th.l{text-align:left}
.pass{color:#0a7d2c;font-weight:bold}.fail{color:#b00020;font-weight:bold}
.warn{background:#fff4d6;padding:6px 10px;border-left:4px solid #e0a800}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
code{background:#f4f4f4;padding:1px 4px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, float):
        if math.isnan(x):
            return "null"
        return f"{x:.6g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _table(rows: list[list[Any]], head: list[str]) -> str:
    out = ["<table><tr>"]
    out += [f"<th class='{'l' if i == 0 else ''}'>{_e(h)}</th>" for i, h in enumerate(head)]
    out.append("</tr>")
    for r in rows:
        out.append("<tr>" + "".join(
            f"<td class='{'l' if i == 0 else ''}'>{_e(_fmt(c))}</td>" for i, c in enumerate(r))
            + "</tr>")
    out.append("</table>")
    return "".join(out)


def numeric(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def step_svg(plot: dict, title: str) -> str:
    """Truth (grey, thick) and store (blue) as step lines; mismatches as red dots; store
    rows as small ticks at the bottom."""
    ts = plot["ts"]
    if not ts:
        return "<p>(no points)</p>"
    t0, t1 = ts[0], ts[-1] if ts[-1] > ts[0] else ts[0] + 1
    vals = [v for s in ("truth", "store") for v in map(numeric, plot[s]) if v is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi == lo:
        hi = lo + 1.0
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(t: int) -> float:
        return PAD_L + (t - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return PAD_T + (1 - (v - lo) / (hi - lo)) * ph

    def path(series: list) -> str:
        d, prev = [], None
        for i, v in enumerate(map(numeric, series)):
            xi = x(ts[i])
            if v is None:
                prev = None
                continue
            if prev is None:
                d.append(f"M{xi:.1f},{y(v):.1f}")
            else:
                d.append(f"H{xi:.1f}V{y(v):.1f}")
            prev = v
        if prev is not None:
            d.append(f"H{x(ts[-1]):.1f}")
        return "".join(d)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
             f"role='img' aria-label='{_e(title)}'>",
             f"<rect x='{PAD_L}' y='{PAD_T}' width='{pw}' height='{ph}' fill='#fafafa' "
             "stroke='#ddd'/>"]
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        parts.append(f"<text x='{PAD_L - 6}' y='{y(v) + 4:.1f}' font-size='11' "
                     f"text-anchor='end'>{_e(_fmt(v))}</text>")
    for t, anchor in ((t0, "start"), (t1, "end")):
        parts.append(f"<text x='{x(t):.1f}' y='{H - 22}' font-size='11' text-anchor='{anchor}'>"
                     f"{_e(from_us(t).strftime('%Y-%m-%d %H:%M:%S'))}Z</text>")
    parts.append(f"<path d='{path(plot['truth'])}' fill='none' stroke='#999' "
                 "stroke-width='4' opacity='0.6'/>")
    parts.append(f"<path d='{path(plot['store'])}' fill='none' stroke='#1f5fbf' "
                 "stroke-width='1.5'/>")
    for i, t in enumerate(ts):
        if plot["has_row"][i]:
            parts.append(f"<line x1='{x(t):.1f}' x2='{x(t):.1f}' y1='{PAD_T + ph}' "
                         f"y2='{PAD_T + ph - 5}' stroke='#1f5fbf'/>")
        if plot["mismatch"][i]:
            v = numeric(plot["store"][i])
            yy = y(v) if v is not None else PAD_T + ph
            parts.append(f"<circle cx='{x(t):.1f}' cy='{yy:.1f}' r='3.5' fill='#d0021b'/>")
    parts.append(f"<text x='{PAD_L}' y='{H - 6}' font-size='11' fill='#555'>grey: batch truth; "
                 "blue: offline store (ticks: rows); red: mismatch</text></svg>")
    return "".join(parts)


def render_html(report: dict, plots: dict) -> str:
    th = report["threshold"]
    ok = th["passed"]
    ev = report["event_log"]
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>feast-bytewax skew report"
           f"</title><style>{CSS}</style></head><body>",
           "<h1>Training-serving skew report</h1>",
           f"<p>Repo <code>{_e(report['repo'])}</code>, events <code>{_e(report['events'])}"
           f"</code>, generated {_e(report['generated_at'])} in {report['seconds']} s.</p>",
           f"<p class='{'pass' if ok else 'fail'}'>{'PASS' if ok else 'FAIL'}: mismatch rate "
           f"{th['observed_mismatch_rate']:.4%} (max {th['max_mismatch_rate']:.4%})</p>"]
    for w in report["warnings"]:
        out.append(f"<p class='warn'>{_e(w)}</p>")
    out.append("<h2>Event log and lateness model</h2>")
    out.append(_table([[k, v] for k, v in ev.items() if k != "files"], ["", "value"]))
    out.append(f"<p>Truth: <b>{_e(report['options']['truth'])}</b> (stream = the batch SQL "
               "with the stream's visibility model: late-but-allowed events count from the "
               "watermark, too-late events not at all; ideal = every event on time).</p>")
    for o in report["offline"]:
        out.append(f"<h2>Offline store: {_e(o['source'])}</h2><p><code>{_e(o['uri'])}</code></p>")
        keys = ["rows", "keys", "points_compared", "mismatched_points", "mismatch_rate",
                "mismatch_time_fraction", "missing_rows", "extra_rows", "redundant_rows",
                "wrong_value_rows", "duplicate_rows", "conflicting_duplicates",
                "rows_after_horizon", "unverified_points"]
        rows = [[k, o[k]] for k in keys]
        rows += [["missing_keys", o["missing_keys"]["count"]],
                 ["extra_keys", o["extra_keys"]["count"]],
                 ["lateness points (stream truth != ideal)",
                  o["lateness"]["points_differing_from_ideal"]],
                 ["explained by lateness", o["lateness"]["explained_by_lateness"]]]
        rows += [[f"class {c}", n] for c, n in o["by_class"].items()]
        out.append(_table(rows, ["", "value"]))
        out.append(_table([[n, s["compared"], s["mismatched"], s["mismatch_rate"],
                            s["max_abs_error"], s["max_rel_error"], s["null_mismatches"],
                            o["lateness"]["by_feature"].get(n, 0)]
                           for n, s in o["features"].items()],
                          ["feature", "points", "mismatched", "rate", "max abs err",
                           "max rel err", "null vs value", "lateness pts"]))
        if o["worst_keys"]:
            out.append("<h3>Worst keys</h3>")
            out.append(_table([[w["key"], w["mismatched_points"], w["first_mismatch"],
                                ", ".join(w["features"])] for w in o["worst_keys"]],
                              ["key", "mismatched points", "first mismatch", "features"]))
        if o["examples"]:
            out.append("<h3>First mismatches</h3>")
            out.append(_table([[x["key"], x["time"], x["class"],
                                json.dumps(x["features"])] for x in o["examples"]],
                              ["key", "time", "class", "store vs truth"]))
    lg = report["logged"]
    out.append("<h2>Served vectors (feature logs)</h2>")
    if lg.get("vectors"):
        out.append(_table([["vectors", lg["vectors"]],
                           ["mismatched vectors", lg["mismatched_vectors"]],
                           ["mismatch rate", lg["mismatch_rate"]],
                           ["NOT_FOUND values", lg["not_found_values"]],
                           ["served empty, truth not (missing online)", lg["missing_online"]],
                           ["staleness p50 (s)", lg["staleness_s"]["p50"]],
                           ["staleness p99 (s)", lg["staleness_s"]["p99"]]], ["", "value"]))
        out.append(_table([[n, s["compared"], s["mismatched"], s["mismatch_rate"],
                            s["max_abs_error"], s["max_rel_error"]]
                           for n, s in lg["features"].items()],
                          ["feature", "values", "mismatched", "rate", "max abs err",
                           "max rel err"]))
        if lg["examples"]:
            out.append(_table([[x["key"], x["feature"], x["value_time"], x["served_at"],
                                x["served"], x["truth"]] for x in lg["examples"]],
                              ["key", "feature", "value time", "served at", "served", "truth"]))
    else:
        out.append(f"<p>{_e(lg.get('note', 'no logs'))}</p>")
    out.append("<h2>Per-feature plots</h2><p>For each feature, the key with the most "
               "mismatched points (or the busiest key when none), around its first mismatch."
               "</p>")
    for name, plot in plots.items():
        out.append(f"<h3>{_e(name)} &mdash; key <code>{_e(plot['key'])}</code></h3>")
        out.append(step_svg(plot, name))
    out.append("</body></html>")
    return "\n".join(out)
