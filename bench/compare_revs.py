"""Same-run, side-by-side benchmark of two git revisions of plugin/.

    .venv/bin/python -m bench.compare_revs [--base 6e7c42d] [--new HEAD] [--repeats 3]
        [--events 300000] [--users 5000]

plugin/, feast_repo/ and feature_store.yaml of each revision are exported with `git archive`
to bench/out/src-SHA/ (`run_bench.export_rev`), so neither side is the working tree that
others may be editing. One events file is generated (by the new revision's `write_events`)
and feeds both. Every measurement runs in a fresh subprocess (`bench/compare_child.py`,
`python -P` with PYTHONPATH = that export's plugin/) which finds its API by layout:

- **step**: the feature step alone: events read and validated once in the child, routed by
  crc32(user_id) % 32, then timed: batches of (up to) 1000 fed to 32 `ShardEngine`s, then
  `finish()`;
- **replay**: the revision's own CLI, in-process, on a fresh copy of ITS repo
  (feature_store.yaml + feast_repo/: SQLite online store, parquet-folder offline store):
  `apply` untimed, then `replay --events E --repo R --quiet` timed around the CLI call.

Runs alternate base, new, base, new, ... (`--repeats` of each measure and revision); the
table gives per revision the median and range of events/s and the ratio new/base of the
medians. It is printed and written into bench/RESULTS.md between the `compare:begin` /
`compare:end` markers (added under "## Same-run comparison of two revisions" if absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run_bench import (
    BENCH,
    ROOT,
    _git,
    export_rev,
    fmt_int,
    load_avg,
    machine_busy_s,
    others_cores,
    uptime,
)

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
HEADING = "## Same-run comparison of two revisions"
CHILD = BENCH / "compare_child.py"
EXPORTED = ("plugin", "feast_repo", "feature_store.yaml")
MEASURES = ("step", "replay")


class Side:
    """One revision: its export and its results per measure."""

    def __init__(self, role: str, rev: str, out: Path | None,
                 saved: dict[str, Any] | None = None) -> None:
        self.role, self.rev = role, rev
        self.results: dict[str, list[dict[str, Any]]] = {m: [] for m in MEASURES}
        if saved is not None:  # --render-only
            self.sha, self.subject, self.plugin_sha = (saved[k] for k in
                                                       ("sha", "subject", "plugin_sha"))
            self.results.update(saved["results"])
            return
        self.sha, self.dest = export_rev(rev, out, EXPORTED)
        self.subject = _git("log", "-1", "--format=%s", self.sha)
        self.plugin_sha = _git("log", "-1", "--format=%h", self.sha, "--", "plugin")

    def saved(self) -> dict[str, Any]:
        return {"rev": self.rev, "sha": self.sha, "subject": self.subject,
                "plugin_sha": self.plugin_sha, "results": self.results}

    @property
    def src(self) -> Path:
        return (self.dest / "plugin").resolve()

    def describe(self) -> str:
        subject = self.subject if len(self.subject) <= 100 else self.subject[:100] + "..."
        where = ("" if self.plugin_sha == self.sha
                 else f"; plugin/ as last changed in {self.plugin_sha}")
        return f"{self.sha} \"{subject}\" (`{self.rev}`{where})"

    def label(self) -> str:
        return f"{self.role} {self.sha}" + (f" ({self.rev})" if self.rev != self.sha else "")


def fresh_repo(side: Side, out: Path) -> Path:
    """A fresh copy of the revision's feature_store.yaml + feast_repo/ (no data/ yet)."""
    repo = out / f"compare_repo_{side.sha}"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    shutil.copy(side.dest / "feature_store.yaml", repo / "feature_store.yaml")
    shutil.copytree(side.dest / "feast_repo", repo / "feast_repo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def run_child(side: Side, mode: str, out: Path, events: Path, timeout: float,
              extra: tuple[str, ...] = ()) -> dict[str, Any]:
    res = out / f"compare_{mode}_{side.sha}.json"
    res.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(side.src))
    cmd = [sys.executable, "-P", str(CHILD), mode, "--events", str(events), "--out", str(res),
           "--expect", str(side.src), *extra]
    t0, busy0, kids0 = time.perf_counter(), machine_busy_s(), _children_cpu()
    try:
        proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{side.label()} {mode}: no result after {timeout:g} s") from None
    if proc.returncode != 0 or not res.exists():
        tail = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
        raise SystemExit(f"{side.label()} {mode} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(res.read_text())
    wall = time.perf_counter() - t0
    result["child_wall_seconds"] = wall
    result["others_cores"] = others_cores(busy0, machine_busy_s(), _children_cpu() - kids0,
                                          wall)
    return result


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(side: Side, mode: str, out: Path, events: Path, timeout: float) -> dict[str, Any]:
    repo = fresh_repo(side, out)
    r = run_child(side, mode, out, events, timeout, ("--repo", str(repo)))
    r["events_per_s"] = r["events"] / r["seconds"]
    r["events_per_cpu_s"] = r["events"] / r["cpu_seconds"] if r.get("cpu_seconds") else None
    side.results[mode].append(r)
    print(f"  {mode:6s} {side.label():24s} {r['events']:,} events in {r['seconds']:.2f} s = "
          f"{r['events_per_s']:,.0f} events/s ({fmt_int(r['events_per_cpu_s'])} per CPU-s), "
          f"rows {r['rows']:,}, load {r['load1_at_start']:.2f}, other processes "
          f"{r['others_cores']:.2f} cores", flush=True)
    return r


# -- report ------------------------------------------------------------------------------------
def stats_of(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rows_cell(mode: str, runs: list[dict]) -> str:
    """Rows and corrections (identical in every run of a revision, else flagged); online
    writes as a range: the latest row per key per flush depends on when flushes fall."""
    fixed = {(r["rows"], r.get("rows_offline"), r.get("corrections")) for r in runs}
    if len(fixed) != 1:
        return "**varies**: " + "; ".join(f"{a:,} rows, {c:,} corr." for a, _, c in
                                          sorted(fixed))
    rows, offline, corr = next(iter(fixed))
    if mode == "replay":
        online = sorted({r["rows_online"] for r in runs})
        span = f"{online[0]:,}" + (f"-{online[-1]:,}" if len(online) > 1 else "")
        return f"{rows:,} ({offline:,} offline, {span} online), {corr:,} corr."
    return f"{rows:,}, {corr:,} corr."


def table(base: Side, new: Side) -> list[str]:
    lines = [
        "| measure | revision | events/s per run (run order) | median events/s | range "
        "| median events/CPU-s | rows out | new/base (medians) |",
        "| --- | --- | --- | ---: | --- | ---: | --- | ---: |",
    ]
    for mode in MEASURES:
        med = {}
        for side in (base, new):
            runs = side.results[mode]
            if not runs:
                continue
            s = stats_of([r["events_per_s"] for r in runs])
            cpu = [r["events_per_cpu_s"] for r in runs if r.get("events_per_cpu_s")]
            med[side.role] = s["median"]
            med[side.role + "_cpu"] = statistics.median(cpu) if cpu else None
            ratio = ""
            if side is new and "base" in med:
                ratio = f"**{s['median'] / med['base']:.3f}**"
                if med.get("base_cpu") and med.get("new_cpu"):
                    ratio += f" (CPU {med['new_cpu'] / med['base_cpu']:.3f})"
            lines.append(
                f"| {mode} | {side.label()} | "
                + ", ".join(fmt_int(r["events_per_s"]) for r in runs)
                + f" | {fmt_int(s['median'])} | {fmt_int(s['min'])} - {fmt_int(s['max'])} "
                f"({(s['max'] - s['min']) / s['median']:.1%}) | "
                f"{fmt_int(med[side.role + '_cpu'])} | {rows_cell(mode, runs)} | {ratio} |")
    return lines


def knob_line(base: Side, new: Side) -> str:
    knobs = {}
    for side in (base, new):
        ks = {json.dumps(r.get("knobs"), sort_keys=True)
              for m in MEASURES for r in side.results[m]}
        knobs[side.role] = ks
    b = next(iter(knobs["base"]), "{}")
    same = knobs["base"] == knobs["new"] and len(knobs["base"]) == 1
    k = json.loads(b)
    text = (f"watermark delay {k.get('watermark_delay_us', 0) / 1e6:g} s, allowed lateness "
            f"{k.get('allowed_lateness_us', 0) / 1e6:g} s, max future {k.get('max_future_s')} s "
            f"(each revision's defaults)")
    return text + (": the same in both." if same else
                   f": **they differ**: base {knobs['base']}, new {knobs['new']}.")


def render(base: Side, new: Side, args, argv: list[str], info: dict, started: str,
           total_s: float, load_before: str, load_after: str, order: list[str]) -> str:
    cmd = " ".join([".venv/bin/python -m bench.compare_revs", *map(shlex.quote, argv)])
    step = base.results["step"][:1] + new.results["step"][:1]
    read_s = ", ".join(f"{s.role} {r['read_validate_seconds']:.1f} s" for s, r in
                       zip((base, new), step, strict=False))
    replay = base.results["replay"][:1] + new.results["replay"][:1]
    flow_s = "; ".join(
        f"{side.role}: " + ", ".join(f"{r['flow_seconds']:.1f}" for r in side.results["replay"]
                                     if r.get("flow_seconds") is not None)
        for side in (base, new))
    apply_s = ", ".join(f"{s.role} {r['apply_seconds']:.1f} s" for s, r in
                        zip((base, new), replay, strict=False))
    lines = [
        BEGIN,
        "### Figures (written by compare_revs.py)",
        "",
        "```",
        cmd,
        "```",
        "",
        f"Run {started}, {total_s:.0f} s in all, on {platform.node() or 'host'}: "
        f"{os.cpu_count()} cores shared with other jobs, Python {platform.python_version()}. "
        f"Load average (`uptime`) before: {load_avg(load_before)}; after: "
        f"{load_avg(load_after)}.",
        "",
        f"- base: {base.describe()}, layout {_layout(base)};",
        f"- new: {new.describe()}, layout {_layout(new)}.",
        "",
        f"Input: {info['rows']:,} events, {info['users']:,} users seen (of {args.users:,}), "
        f"24 h of event time, seed {args.seed}, generated by the new revision's "
        f"`write_events` ({info['api']}); the same file for both. "
        + knob_line(base, new) + " 32 engines, routed by crc32(user_id) % 32, source "
        "batches of 1000.",
        "",
        f"Order of the {len(order)} child processes: " + ", ".join(order) + ".",
        "",
        *table(base, new),
        "",
    ]
    if step:
        lines.append(
            "- step: seconds = the `ingest` calls and the final `finish` (reading, validation "
            f"and routing done before, untimed: {read_s} for the first run); CPU = the "
            "thread's CPU time over the same span. Every engine ends at the input's newest "
            "event time: " + ", ".join(f"{s.role} `{r.get('finish')}`" for s, r in
                                       zip((base, new), step, strict=False)) + ".")
    if replay:
        lines.append(
            "- replay: seconds = the revision's CLI `replay ... --quiet` called in-process "
            "after its imports were warmed (opening the store, compiling the spec from the "
            "registry, the dataflow, the Feast writes); CPU = the process's (all threads). "
            f"The CLI's own figure (dataflow only, 0.1 s resolution): {flow_s} s. `apply` "
            f"untimed ({apply_s}).")
    others = "; ".join(f"{m} {s.role}: " + ", ".join(f"{r['others_cores']:.2f}"
                                                     for r in s.results[m])
                       for m in MEASURES for s in (base, new)
                       if s.results[m] and all("others_cores" in r for r in s.results[m]))
    if others:
        lines.append(f"- other processes' CPU while each child ran (cores, of "
                     f"{os.cpu_count()}; the machine's CPU time minus the child's): {others}.")
    lines += [
        "- 1-min load average at the start of each child (counts the child's own start): "
        + "; ".join(f"{m} {s.role}: " + ", ".join(f"{r['load1_at_start']:.2f}"
                                                   for r in s.results[m])
                    for m in MEASURES for s in (base, new) if s.results[m]) + ".",
        "",
        END,
    ]
    return "\n".join(lines)


def _layout(side: Side) -> str:
    runs = [r for m in MEASURES for r in side.results[m]]
    return runs[0]["layout"] if runs else "?"


def write_results(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        path.write_text(head + block + rest.split(END, 1)[1])
        return
    path.write_text(text.rstrip() + f"\n\n{HEADING}\n\n" + block + "\n")


def render_only(args) -> int:
    """The section again from the saved results (with the command line of that run)."""
    saved = json.loads((args.out / "compare_results.json").read_text())
    sides = [Side(role, d["rev"], None, d) for role, d in saved["sides"].items()]
    base, new = sorted(sides, key=lambda s: s.role != "base")
    run_argv = saved["argv"]
    run_args = argparse.Namespace(users=5_000, seed=7)
    for flag, attr in (("--users", "users"), ("--seed", "seed")):
        if flag in run_argv:
            setattr(run_args, attr, int(run_argv[run_argv.index(flag) + 1]))
    block = render(base, new, run_args, run_argv, saved["info"], saved["started"],
                   saved["total_s"], saved["load_before"], saved["load_after"],
                   saved["order"])
    print(block)
    if not args.no_results:
        write_results(args.results, block)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="6e7c42d", help="git revision measured as the base")
    p.add_argument("--new", default="HEAD", help="git revision compared with it")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measure and revision")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--only", choices=MEASURES, help="one measure only")
    p.add_argument("--timeout", type=float, default=1200.0, help="per child, seconds")
    p.add_argument("--out", type=Path, default=BENCH / "out")
    p.add_argument("--results", type=Path, default=BENCH / "RESULTS.md")
    p.add_argument("--no-results", action="store_true", help="print only")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the RESULTS.md section from OUT/compare_results.json")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.render_only:
        return render_only(args)

    load_before = uptime()
    t_start = time.perf_counter()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    base, new = Side("base", args.base, args.out), Side("new", args.new, args.out)
    print(f"{load_before}\nbase {base.describe()}\nnew  {new.describe()}", flush=True)
    events = args.out / f"compare_events_{args.events}_{args.users}_{args.seed}.parquet"
    info = run_child(new, "generate", args.out, events, args.timeout,
                     ("--count", str(args.events), "--users", str(args.users),
                      "--seed", str(args.seed)))
    info["api"] = info.get("api", {}).get("write_events", "?")
    print(f"events: {info['rows']:,} rows, {info['users']:,} users -> {events}", flush=True)
    measures = (args.only,) if args.only else MEASURES
    order = []
    for i in range(args.repeats):
        print(f"round {i + 1}/{args.repeats}", flush=True)
        for mode in measures:
            for side in (base, new):
                measure(side, mode, args.out, events, args.timeout)
                order.append(f"{mode} {side.role}")
    total = time.perf_counter() - t_start
    load_after = uptime()
    (args.out / "compare_results.json").write_text(json.dumps({
        "argv": argv, "info": info, "started": started, "total_s": total,
        "load_before": load_before, "load_after": load_after,
        "sides": {s.role: s.saved() for s in (base, new)}, "order": order},
        indent=1, default=str))
    block = render(base, new, args, argv, info, started, total, load_before, load_after, order)
    print(block)
    print(load_after)
    if not args.no_results:
        write_results(args.results, block)
        shown = args.results.resolve()
        print(f"\nwrote {shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
