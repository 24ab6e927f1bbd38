"""Issue 11's figures in one run, for a base revision and the code measured, alternating:
what `python -m bench.kafka_redis_bench` does unless ``--against none``.

Each measurement is a child ``python -m bench.kafka_redis_bench --against none ...`` (its own
mock broker, redis-server and applied repo; ``--rev`` pins the base's plugin/, feast_repo/,
feature_store.redis.yaml and dataflows/; the other side is the working tree, or ``--rev``),
the two revisions in turn, the order swapped every round:

1. **max** (``--max-repeat`` rounds): one max run per revision per round, the same seed per
   round (the same events for both); the median per revision of events / (first record ->
   every row flushed) is "max events/s, one worker" (`_rate`).
2. **rate** (``--rates``, default ``auto``): ``auto`` = half the NEW revision's median max,
   and both revisions are offered that SAME rate; freshness p50 / p99 after the warm-up
   (event time -> readable in Redis, the flow's freshness histogram).
3. **cluster**: 1 process vs 2 processes of `dataflows.live` over one pre-produced topic
   (bench.kafka_redis_cluster); the ratio 2p / 1p per revision.

Every phase writes into a fresh copy of the applied repo and an emptied Redis and checks its
offline rows against the reference for exactly the events it produced
(bench.kafka_redis_checks). Flow settings are the product's defaults of each revision
unless ``--delay`` / ``--flush`` / ``--live`` ... are given (then both get them). Prints a
markdown report; writes OUT/kafka_redis_issue11.json and every child's JSON and log under
OUT/kafka_redis_issue11/.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.run_bench import ROOT, _git, uptime

OUT = ROOT / "bench" / "out"
TARGETS = {"max": 60_000, "p50": 0.100, "p99": 0.250}


def _forwarded(args) -> list[str]:
    """The settings every child gets (both revisions alike)."""
    out = ["--against", "none", "--baseline-events", "0", "--events", str(args.events),
           "--users", str(args.users), "--partitions", str(args.partitions),
           "--rate-seconds", str(args.rate_seconds), "--stamp-rate", str(args.stamp_rate),
           "--warmup", str(args.warmup), "--idle-exit", str(args.idle_exit)]
    for flag, value in (("--delay", args.delay), ("--flush", args.flush),
                        ("--epoch", args.epoch), ("--batch-size", args.batch_size),
                        ("--cluster-events", args.cluster_events)):
        if value is not None:
            out += [flag, str(value)]
    for item in args.live or ():
        out += ["--live", item]
    for item in args.kafka_option:
        out += ["--kafka-option", item]
    if args.no_check:
        out.append("--no-check")
    if args.corrupt_check:
        out.append("--corrupt-check")
    return out


def run_child(side: dict, what: str, extra: list[str], args, folder: Path) -> dict:
    """One child run of one revision; its progress lines echoed with the side's label."""
    res = folder / f"{side['key']}-{what}.json"
    log = folder / f"{side['key']}-{what}.log"
    cmd = [sys.executable, "-m", "bench.kafka_redis_bench", *_forwarded(args), *extra,
           *(["--rev", side["rev"]] if side["rev"] else []), "--out", str(res)]
    print(f"[{side['label']}] {what} ...", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            if not line.startswith(("|", "No project", "Applying", "Deploying")) and \
                    line.strip():
                print(f"  [{side['key']}] {line.rstrip()}", flush=True)
        proc.wait()
    if proc.returncode != 0 or not res.exists():
        tail = log.read_text()[-1500:]
        print(f"  [{side['key']}] {what} FAILED (exit {proc.returncode}); see {log}", flush=True)
        return {"error": f"exit {proc.returncode}: {tail}", "log": str(log)}
    data = json.loads(res.read_text())
    data["child_seconds"] = round(time.perf_counter() - t0, 1)
    return data


def _rate(ph: dict) -> float:
    """A max run's rate: events / (first record read -> every row flushed). Not the steady
    10%-90% read rate: with the default 5 s watermark delay and events stamped 50k per
    second, the exact engine holds most of a 300k-event run until the input ends, so the
    read rate would leave out most of its work."""
    return ph["events_per_s_end_to_end"]


def compare(args) -> int:
    from bench.kafka_redis_checks import verdict
    from bench.kafka_redis_cluster import rate as cluster_rate

    folder = OUT / "kafka_redis_issue11"
    folder.mkdir(parents=True, exist_ok=True)
    base_sha = _git("rev-parse", "--short", f"{args.against}^{{commit}}")
    base = {"key": "base", "rev": args.against, "label": f"base {args.against} ({base_sha})"}
    new = {"key": "new", "rev": args.rev,
           "label": f"new {args.rev}" if args.rev else "new (working tree)"}
    sides = (base, new)
    t0, load0 = time.perf_counter(), uptime()
    runs: dict[str, dict[str, list]] = {s["key"]: {"max": [], "rate": [], "cluster": []}
                                        for s in sides}

    def order(k: int) -> tuple[dict, dict]:
        return sides if k % 2 == 0 else sides[::-1]

    rounds = 0
    for k in range(args.max_repeat):
        for side in order(rounds):
            runs[side["key"]]["max"].append(run_child(
                side, f"max{k + 1}", ["--max-repeat", "1", "--max-first", str(k),
                                      "--rates", ""], args, folder))
        rounds += 1
    med = {}
    for side in sides:
        rates = [_rate(ph) for r in runs[side["key"]]["max"] if "error" not in r
                 for ph in r["phases"]]
        med[side["key"]] = statistics.median(rates) if rates else None
    offered = []
    for item in (x.strip() for x in args.rates.split(",") if x.strip()):
        if item == "auto":
            if not med["new"]:
                print("no max figure for the new revision: skipping rate auto", flush=True)
                continue
            offered.append(round(med["new"] / 2, -2))
        else:
            offered.append(float(item))
    for i, rate in enumerate(offered):
        for side in order(rounds):
            runs[side["key"]]["rate"].append(run_child(
                side, f"rate{i + 1}", ["--max-repeat", "0", "--rates", str(rate)], args, folder))
        rounds += 1
    if not args.no_cluster:
        for side in order(rounds):
            runs[side["key"]]["cluster"].append(run_child(
                side, "cluster", ["--max-repeat", "0", "--rates", "", "--cluster"], args,
                folder))
    summary = {"base": base, "new": new, "load_before": load0, "load_after": uptime(),
               "seconds": round(time.perf_counter() - t0, 1), "max_median": med,
               "offered_rates": offered, "runs": runs}
    text = report(summary, verdict, cluster_rate)
    summary["markdown"] = text
    out = OUT / "kafka_redis_issue11.json"
    out.write_text(json.dumps(summary, indent=1, default=str))
    print()
    print(text)
    print(f"\n{summary['seconds']} s in all; details in {out} and {folder}/")
    return 0


def _fmt(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _ratio(a, b, digits: int = 3) -> str:
    return f"{a / b:.{digits}f}" if a is not None and b else "-"


def report(s: dict, verdict, cluster_rate) -> str:
    runs = s["runs"]
    med = s["max_median"]

    def first(key: str, what: str) -> dict:
        return next((r for r in runs[key][what] if "error" not in r), {})

    code = {k: (first(k, "max") or first(k, "rate") or first(k, "cluster")).get("code", "?")
            for k in runs}
    lines = [f"new: {s['new']['label']}: {code['new']}",
             f"base: {s['base']['label']}: {code['base']}",
             f"load average before: {s['load_before']}; after: {s['load_after']}; "
             f"{s['seconds']:.0f} s in all.", ""]
    for k in runs:
        ph = next((p for r in runs[k]["max"] + runs[k]["rate"] if "error" not in r
                   for p in r["phases"]), {})
        lines.append(f"flow settings, {k}: {ph.get('settings')} "
                     f"(set by the bench: {ph.get('overrides') or 'none, the defaults'})")
    lines += ["", "| measure | new | base | new / base | issue 11 target (new) |",
              "| --- | ---: | ---: | ---: | --- |"]

    def maxes(k: str) -> str:
        vals = [_fmt(_rate(p)) for r in runs[k]["max"] if "error" not in r for p in r["phases"]]
        errs = sum("error" in r for r in runs[k]["max"])
        return ", ".join(vals) + (f" ({errs} failed)" if errs else "")

    meets = med["new"] is not None and med["new"] >= TARGETS["max"]
    lines.append(f"| max events/s, one worker: median (runs) | {_fmt(med['new'])} "
                 f"({maxes('new')}) | {_fmt(med['base'])} ({maxes('base')}) | "
                 f"{_ratio(med['new'], med['base'])} | >= 60,000: "
                 f"{'yes' if meets else 'NO'} |")
    for i, rate in enumerate(s["offered_rates"]):
        ph = {k: (runs[k]["rate"][i]["phases"][0] if i < len(runs[k]["rate"])
                  and "error" not in runs[k]["rate"][i] else None) for k in runs}
        fr = {k: (p or {}).get("freshness_after_warmup", {}) for k, p in ph.items()}
        for q in ("p50", "p99"):
            a, b = fr["new"].get(q), fr["base"].get(q)
            ok = a is not None and a <= TARGETS[q]
            lines.append(f"| freshness {q} (s) at {rate:,.0f} events/s offered | {_fmt(a, 3)} "
                         f"| {_fmt(b, 3)} | {_ratio(a, b)} | <= {TARGETS[q]:.3f}: "
                         f"{'yes' if ok else 'NO'} |")
        kept = {k: (f"{_fmt(p['consumed_rate'])} ({'kept up' if p['kept_up'] else 'fell behind'}"
                    f", backlog max {_fmt(p['max_backlog_after_warmup'])})" if p else "failed")
                for k, p in ph.items()}
        lines.append(f"| rate {rate:,.0f}: consumed events/s | {kept['new']} | {kept['base']} "
                     "| | |")
        lines.append(f"| rate {rate:,.0f}: offline == reference | "
                     f"{verdict((ph['new'] or {}).get('offline_check'))} | "
                     f"{verdict((ph['base'] or {}).get('offline_check'))} | | |")
    for k_run in range(max(len(runs["new"]["max"]), len(runs["base"]["max"]))):
        cells = []
        for k in ("new", "base"):
            r = runs[k]["max"][k_run] if k_run < len(runs[k]["max"]) else {"error": "-"}
            cells.append("failed" if "error" in r else
                         verdict(r["phases"][0].get("offline_check")))
        lines.append(f"| max run {k_run + 1}: offline == reference | {cells[0]} | {cells[1]} "
                     "| | |")
    def others(k: str, what: str) -> str:
        return ", ".join(f"{max(0.0, p['cpu_budget']['others_cores']):.2f}"
                         for r in runs[k][what]
                         if "error" not in r for p in r["phases"]) or "-"

    for what in ("max", "rate"):
        lines.append(f"| other processes' CPU during the {what} runs (cores of 2) | "
                     f"{others('new', what)} | {others('base', what)} | | |")
    cl = {k: first(k, "cluster").get("cluster") for k in runs}
    if any(cl.values()):
        for p, label in ((0, "1 process"), (1, "2 processes")):
            e = {k: (cluster_rate(c["runs"][p]) if c else None) for k, c in cl.items()}
            lines.append(f"| events/s, {label} (bytewax.run dataflows.live, steady) | "
                         f"{_fmt(e['new'])} | {_fmt(e['base'])} | {_ratio(e['new'], e['base'])}"
                         " | |")
        r = {k: (c or {}).get("ratio_2p_1p") for k, c in cl.items()}
        lines.append(f"| events/s 2 processes / 1 process | {_fmt(r['new'], 3)} | "
                     f"{_fmt(r['base'], 3)} | {_ratio(r['new'], r['base'])} | (reported) |")
        for p, label in ((0, "1 process"), (1, "2 processes")):
            v = {k: verdict(c["runs"][p].get("offline_check")) if c else "-"
                 for k, c in cl.items()}
            lines.append(f"| cluster {label}: offline == reference | {v['new']} | {v['base']} "
                         "| | |")
    failed = [f"{k} {what} {i + 1}" for k in runs for what, rs in runs[k].items()
              for i, r in enumerate(rs) if "error" in r]
    if failed:
        lines += ["", f"FAILED runs (see their logs): {', '.join(failed)}"]
    return "\n".join(lines)
