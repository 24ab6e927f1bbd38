"""Benchmark: feast-bytewax against Bytewax's built-in windowing operators, in one run.

    .venv/bin/python -m bench.run_bench --events 1000000 --users 10000

Generates the events once (bench/out/, gitignored), compiles the five features from
feast_repo/ once, then runs every contender in its own subprocess on the same files (peak
RSS is that child's ru_maxrss) and writes the table into bench/RESULTS.md between the
`bench:begin` / `bench:end` markers (text outside them is kept).

Groups of runs (see RESULTS.md for definitions):
  A  all five features, on the first --prefix events (the built-in 24 h / 1 min window
     cannot run 1M events: ~1 MB and 1440 windows per purchasing user);
  B  four features (without max_amount_24h), all events, built-in vs ours;
  C  ours, all five features, all events;
  D  ours, the full replay into Feast's embedded stores (--no-feast to skip).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
LONG = "max_amount_24h"


@dataclass
class Run:
    rid: str
    label: str
    contender: str
    events_file: Path
    skip: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    ref: str | None = None  # rid whose events/s this run's ratio divides by
    note: str = ""
    module: str = "bench.contenders"  # the child: `python -m MODULE CONTENDER ...`
    result: dict[str, Any] = field(default_factory=dict)
    status: str = "not run"
    maxrss: int | None = None  # bytes


# -- setup -------------------------------------------------------------------------------------
def make_inputs(out: Path, n_events: int, n_users: int, seed: int, prefix: int) -> dict:
    import pyarrow.parquet as pq

    from feast_bytewax.datagen.generate import write_events

    full = out / f"events_{n_events}_{n_users}_{seed}.parquet"
    info = write_events(full, n_events, n_users, seed=seed)
    table = pq.read_table(full)
    pre = out / f"events_{n_events}_{n_users}_{seed}_first{prefix}.parquet"
    pq.write_table(table.slice(0, min(prefix, len(table))), pre, row_group_size=100_000)
    info["prefix_path"] = str(pre)
    ts = table.column("event_timestamp").slice(0, min(prefix, len(table)))
    lo, hi = ts.cast("int64").to_numpy().min(), ts.cast("int64").to_numpy().max()
    info["prefix_span_minutes"] = round((hi - lo) / 60e6, 1)
    return info


def compile_spec(out: Path, definitions: Path) -> Path:
    """Compile the Feast definitions of `definitions` (a repo copy: feast_repo/ and
    feature_store.yaml only, since Feast imports every .py file under it) as `apply` does,
    without applying them; pickle the user entity's spec for the children."""
    from feast.repo_operations import parse_repo

    from feast_bytewax.dataflow.repo import fresh_definitions, quiet_feast_warnings
    from feast_bytewax.features.spec import compile_flow

    quiet_feast_warnings()
    with fresh_definitions(definitions):
        contents = parse_repo(definitions)
        flow = compile_flow(contents.stream_feature_views, contents.entities,
                            contents.data_sources, contents.feature_views)
    by_key = {e.join_key: e for e in flow.entities}
    spec = by_key.get("user_id") or (flow.entities[0] if len(flow.entities) == 1 else None)
    if spec is None:
        raise SystemExit(f"no user_id entity among {sorted(by_key)} in {definitions}")
    path = out / "spec.pkl"
    with open(path, "wb") as f:
        pickle.dump(spec, f)
    return path


def uptime() -> str:
    """`uptime` (its load averages say how busy the shared machine was)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def load_avg(text: str) -> str:
    return text.rsplit("load average:", 1)[-1].strip()


def machine_busy_s() -> float:
    """CPU seconds spent by everything on the machine (all cores), from /proc/stat."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0.0


def others_cores(busy0: float, busy1: float, own_cpu_s: float, wall_s: float) -> float:
    """Cores the rest of the machine used meanwhile: all CPU minus the child's own."""
    return round(max(0.0, busy1 - busy0 - own_cpu_s) / wall_s, 2) if wall_s > 0 else 0.0


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def export_rev(rev: str, out: Path, paths: tuple[str, ...] = ("plugin",)) -> tuple[str, Path]:
    """`git archive` `paths` of commit `rev` into OUT/src-SHA (once; reused by later runs).
    Returns (short sha, that folder): OUT/src-SHA/plugin is what goes on PYTHONPATH."""
    sha = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    dest = out / f"src-{sha}"
    missing = [p for p in paths if not (dest / p).exists()]
    if missing:
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, *missing], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    if "plugin" in paths and not (dest / "plugin" / "feast_bytewax").is_dir():
        raise SystemExit(f"{rev} ({sha}) has no plugin/feast_bytewax")
    return sha, dest


def pin_source(args, extra: tuple[str, ...] = ()) -> tuple[str, Path]:
    """Which feast_bytewax is measured, and the folder whose feast_repo/ and
    feature_store.yaml it runs. With --rev, plugin/, feast_repo/ and feature_store.yaml of
    that commit are exported to bench/out/src-SHA; its plugin/ goes first on sys.path (here)
    and PYTHONPATH (children), so edits other people make to the working tree during a run
    cannot leak into the figures (`extra`: more paths the caller reads). So nothing of
    feast_bytewax may be imported before this runs: the parent's imports of it are inside
    the functions that need them."""
    if not args.rev:
        dirty = _git("status", "--porcelain", "--", "plugin", "feast_repo")
        head = _git("rev-parse", "--short", "HEAD")
        return (f"the working tree at {head}"
                + (" with uncommitted changes in plugin/ or feast_repo/" if dirty
                   else ", plugin/ and feast_repo/ clean")), ROOT
    sha, dest = export_rev(args.rev, args.out,
                           ("plugin", "feast_repo", "feature_store.yaml", *extra))
    src = str((dest / "plugin").resolve())
    sys.path.insert(0, src)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [src, str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    changed = _git("log", "-1", "--format=%h", sha, "--", "plugin")
    same = "" if changed == sha else f", as last changed in {changed}"
    return (f"plugin/ and feast_repo/ of commit {sha}{same} (exported to {dest})",
            dest.resolve())


# -- running one child -------------------------------------------------------------------------
def _vm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(run: Run, spec: Path, out: Path, args) -> None:
    res = out / f"result_{run.rid}.json"
    res.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", run.module, run.contender, "--events",
           str(run.events_file.resolve()), "--spec", str(spec.resolve()), "--out",
           str(res.resolve()), "--epoch",
           str(args.epoch), *(("--skip", *run.skip) if run.skip else ()), *run.extra]
    print(f"[{run.rid}] {run.label} ...", flush=True)
    t0, busy0 = time.perf_counter(), machine_busy_s()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    limit = int(args.max_rss_gb * 2**30)
    killed = None
    sampled = 0
    while True:
        pid, status, _ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = _vm_rss(proc.pid)
        sampled = max(sampled, now)
        if now > limit:
            killed = f"killed: RSS over {args.max_rss_gb:g} GB"
        elif time.perf_counter() - t0 > args.timeout:
            killed = f"killed: over {args.timeout:g} s"
        if killed:
            proc.send_signal(signal.SIGKILL)
            pid, status, _ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.1)
    log = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Peak RSS: the child's own VmHWM (read by the child at exit), or the highest VmRSS we
    # sampled if it was killed. Not wait4's ru_maxrss: Linux carries the parent's RSS
    # high-water mark over fork+exec into it, so every child would show >= this process.
    run.maxrss = sampled
    wall = time.perf_counter() - t0
    others = others_cores(busy0, machine_busy_s(), _ru.ru_utime + _ru.ru_stime, wall)
    if killed or proc.returncode != 0 or not res.exists():
        run.status = killed or f"failed (exit {proc.returncode})"
        print(f"[{run.rid}] {run.status}\n{log[-3000:]}", flush=True)
        return
    run.result = json.loads(res.read_text())
    run.result["others_cores"] = others
    run.status = "ok"
    if args.rev and not run.result.get("feast_bytewax", "").startswith(sys.path[0]):
        run.status = f"failed: measured {run.result.get('feast_bytewax')}, not --rev"
        print(f"[{run.rid}] {run.status}", flush=True)
        return
    run.maxrss = max(sampled, run.result.get("vmhwm", 0))
    r = run.result
    print(f"[{run.rid}] {r['events']:,} events in {r['seconds']:.2f} s = "
          f"{r['events'] / r['seconds']:,.0f} events/s, peak RSS {run.maxrss / 2**20:,.0f} MB "
          f"(child wall {wall:.1f} s; other processes {others:.2f} cores)", flush=True)


# -- report ------------------------------------------------------------------------------------
def rate(run: Run, cpu: bool = False) -> float | None:
    """Events per wall second (or per CPU second of the contender's process/thread)."""
    if run.status != "ok":
        return None
    secs = run.result.get("cpu_seconds") if cpu else run.result["seconds"]
    return run.result["events"] / secs if secs else None


def fmt_int(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    if b >= 2**20:
        return f"{b / 2**20:,.1f} MB"
    if b >= 10 * 2**10:
        return f"{b / 2**10:,.0f} KB"
    return f"{b:,.0f} B"


def state_cell(run: Run) -> str:
    st = run.result.get("state") if run.status == "ok" else None
    if not st:
        return "-"
    d = st["deep"]
    return f"{fmt_bytes(d['median'])} ({fmt_bytes(d['p90'])})"


def ratio_cell(run: Run, runs: dict[str, Run], cpu: bool = False) -> str:
    if run.ref is None:
        return "1x (ref)" if run.status == "ok" else "-"
    mine, ref = rate(run, cpu), rate(runs[run.ref], cpu)
    if mine is None or ref is None:
        return "-"
    return f"**{mine / ref:,.1f}x** vs {run.ref}" if not cpu else f"{mine / ref:,.1f}x"


def render(runs: list[Run], info: dict, args, started: str, total_s: float) -> str:
    by = {r.rid: r for r in runs}
    cmd = (f".venv/bin/python -m bench.run_bench --events {args.events} --users {args.users}"
           + (f" --prefix {args.prefix}" if args.prefix != 50_000 else "")
           + ("" if args.feast else " --no-feast") + ("" if args.four else " --no-four")
           + (f" --seed {args.seed}" if args.seed != 7 else "")
           + (f" --rev {args.rev}" if args.rev else ""))
    lines = [
        BEGIN,
        "### Figures (written by run_bench.py)",
        "",
        "```",
        cmd,
        "```",
        "",
        f"Run {started}, {total_s:.0f} s in all, on {platform.node() or 'host'}: "
        f"{os.cpu_count()} cores shared with other jobs (noisy; read ratios and orders of "
        f"magnitude), Python {platform.python_version()}, bytewax 0.21.1, one worker, "
        f"epoch {args.epoch:g} s, the runner's GC settings (freeze + threshold 50000) for "
        "every contender."
        + (f" Load average (`uptime`) before: {load_avg(info['load_before'])}; after: "
           f"{load_avg(info['load_after'])}." if info.get("load_before") else ""),
        "",
        "Code measured: feast_bytewax from "
        f"{info.get('source', '?').replace(str(ROOT) + '/', '')}.",
        "",
        f"Input: {info['rows']:,} events, {info['users']:,} users seen (of {args.users:,}), "
        f"24 h of event time, arrival order ({info['out_of_order_rows']:,} rows behind an "
        f"earlier arrival, {info['late_rows']:,} drawn 1-10 min late), seed {args.seed}. "
        f"Prefix for group A: the first {args.prefix:,} arrivals "
        f"({info['prefix_span_minutes']} min of event time).",
        "",
        "| id | contender | features | events | seconds | events/s | ratio | CPU s "
        "| events/CPU-s | CPU ratio | peak RSS | state/key median (p90) | rows out |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for r in runs:
        res = r.result if r.status == "ok" else {}
        nfeat = 5 - len(r.skip)
        feats = "5" if not r.skip else f"{nfeat} (no {', '.join(r.skip)})"
        secs = f"{res['seconds']:.2f}" if res else r.status
        cpu = f"{res['cpu_seconds']:.2f}" if res.get("cpu_seconds") else "-"
        lines.append(
            f"| {r.rid} | {r.label} | {feats} | {fmt_int(res.get('events'))} | {secs} | "
            f"{fmt_int(rate(r))} | {ratio_cell(r, by)} | {cpu} | {fmt_int(rate(r, True))} | "
            f"{ratio_cell(r, by, True)} | {fmt_bytes(r.maxrss)} | "
            f"{state_cell(r)} | {fmt_int(res.get('rows'))} |")
    lines += ["", "Notes per run:", ""]
    for r in runs:
        facts = facts_of(r)
        if r.note or facts:
            lines.append(f"- {r.rid}: " + "; ".join(x for x in (r.note, facts) if x))
    lines += ["", "#### State per active key", "",
              "| id | active keys | deep median | deep p90 | deep mean | pickled median "
              "| all state / active keys |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        st = r.result.get("state") if r.status == "ok" else None
        if not st:
            continue
        d, p = st["deep"], st["pickled"]
        keys = fmt_int(st.get("active_keys"))
        if st.get("sampled_keys") and st["sampled_keys"] < st.get("active_keys", 0):
            keys += f" ({st['sampled_keys']} sampled)"
        total = st.get("engine_total_per_key")
        lines.append(f"| {r.rid} | {keys} | {fmt_bytes(d['median'])} | {fmt_bytes(d['p90'])} | "
                     f"{fmt_bytes(d['mean'])} | {fmt_bytes(p['median'])} | "
                     f"{fmt_bytes(total) if total else '-'} |")
    lines += [""]
    lines += verdicts(by)
    for r in sorted(runs, key=lambda r: r.rid != "C1"):  # C1 (all events) first
        st = r.result.get("state") if r.status == "ok" else None
        if st and st.get("breakdown"):
            mk = st["breakdown"]["median_key"]
            lines += ["", f"Where the bytes of a median-size key go ({r.rid}, key "
                          f"{mk['key']}, {mk['total']:,} B):", ""]
            lines += [f"- {name}: {v:,} B" for name, v in mk["parts"].items()]
            break
    for r in runs:
        st = r.result.get("state") if r.status == "ok" else None
        if st and st.get("per_feature_deep"):
            lines += ["", f"Built-in state by feature ({r.rid}, per key holding that "
                          "operator's state; median / open windows median):", ""]
            for f, d in st["per_feature_deep"].items():
                w = st["open_windows_per_key"].get(f, {})
                lines.append(f"- {f}: {fmt_bytes(d.get('median'))} / "
                             f"{fmt_int(w.get('median'))} windows")
            break
    lines += ["", END]
    return "\n".join(lines)


def facts_of(r: Run) -> str:
    """Counts that show what each contender did besides its throughput."""
    res = r.result if r.status == "ok" else {}
    if not res:
        return ""
    out = []
    if r.contender.startswith("baseline"):
        out.append(f"{res.get('late', 0):,} items to the late output (an event behind its "
                   "key's watermark, once per window it missed)")
        if res.get("rows_by_feature"):
            out.append("closed windows by feature: " + ", ".join(
                f"{k} {v:,}" for k, v in res["rows_by_feature"].items()))
    else:
        out.append(f"{res.get('corrections', 0):,} corrections, {res.get('late', 0):,} late")
        if "shards" in res:
            out.append(f"{res['wall_seconds_incl_validation']:.1f} s with validation "
                       "and routing")
        if "rows_online" in res:
            out.append(f"{res['rows_offline']:,} rows offline, {res['rows_online']:,} online "
                       f"(latest per key per flush); feast apply {res['apply_seconds']:.1f} s "
                       "not timed")
    if res.get("others_cores") is not None:
        out.append(f"other processes used {res['others_cores']:.2f} cores meanwhile")
    return "; ".join(out)


def verdicts(by: dict[str, Run]) -> list[str]:
    out = ["#### Against the targets (computed from the table above)", ""]

    def ratio(a: str, b: str, cpu: bool = False) -> float | None:
        if a not in by or b not in by:
            return None
        x, y = rate(by[a], cpu), rate(by[b], cpu)
        return None if x is None or y is None else x / y

    def yes(ok: bool) -> str:
        return "met" if ok else "NOT met"

    r_same = ratio("A4", "A1")
    r_step = ratio("A3", "A2")
    r_cross = ratio("C3", "A1")
    r_four = ratio("B2", "B1")
    if r_same is not None:
        out.append(f"- >= 10x the built-in windowing throughput on the five features: "
                   f"{yes(r_same >= 10)}: {r_same:,.1f}x dataflow vs dataflow on the same "
                   f"prefix (A4/A1; {ratio('A4', 'A1', True) or 0:,.1f}x per CPU-second)"
                   + (f", {r_step:,.1f}x feature step vs built-in logic (A3/A2)"
                      if r_step else "")
                   + (f", {r_cross:,.1f}x ours on all events vs the built-ins on the prefix "
                      f"(C3/A1)" if r_cross else "")
                   + (f"; without the 24 h feature, on all events: {r_four:,.1f}x (B2/B1)"
                      if r_four else "") + ".")
    steps = [by[k] for k in ("C1", "C2") if k in by and rate(by[k])]
    if steps:
        best = max(rate(r) for r in steps)
        out.append(f"- >= 100k events/s for the feature step on one core: {yes(best >= 1e5)}: "
                   + ", ".join(f"{fmt_int(rate(r))} events/s ({fmt_int(rate(r, True))} per "
                               f"CPU-second) ({r.rid})" for r in steps) + ".")
    if "C1" in by and by["C1"].result.get("state"):
        st = by["C1"].result["state"]
        med = st["deep"]["median"]
        out.append(f"- <= 1 KB of in-memory state per active key (median): {yes(med <= 1024)}: "
                   f"{med:,.0f} B deep ({st['pickled']['median']:,.0f} B pickled) over "
                   f"{st['active_keys']:,} active keys (C1).")
    return out


def write_results(path: Path, block: str) -> None:
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            path.write_text(head + block + tail)
            return
        path.write_text(text.rstrip() + "\n\n" + block + "\n")
        return
    path.write_text("# Benchmark results\n\n" + block + "\n")


# -- main --------------------------------------------------------------------------------------
def plan(args, spec_names: tuple[str, ...], full: Path, prefix: Path, feast_repo: Path | None):
    m = ("--measure", "--sample-keys", str(args.sample_keys))
    n_pre = f"first {args.prefix:,}"
    runs = [
        Run("A1", "built-in windows, dataflow", "baseline_flow", prefix,
            note=f"{n_pre} events; source + validation + one built-in window operator per "
                 "feature + counting sink; its rows are closed windows"),
        Run("A2", "built-in window logic, no runtime", "baseline_logic", prefix, extra=m,
            note="the same `_WindowLogic` objects driven directly per key and batch (its "
                 "outputs equal A1's); state measured on a random key sample"),
        Run("A3", "ours, feature step (32 engines)", "ours_step", prefix, ref="A2",
            extra=("--measure",)),
        Run("A4", "ours, dataflow", "ours_flow", prefix, ref="A1"),
    ]
    if args.four:
        runs += [
            Run("B1", "built-in windows, dataflow", "baseline_flow", full, skip=(LONG,)),
            Run("B2", "ours, dataflow", "ours_flow", full, skip=(LONG,), ref="B1"),
        ]
    runs += [
        Run("C1", "ours, feature step (32 engines)", "ours_step", full, ref="A2",
            extra=("--measure",),
            note="ratio against the built-in logic on the prefix (it cannot run all events)"),
        Run("C2", "ours, feature step (1 engine)", "ours_step", full, ref="A2",
            extra=("--measure", "--shards", "1"),
            note="one engine owns all keys (the watermark is the input partition's either "
                 "way: every shard gets its marks, so the rows equal C1's)"),
        Run("C3", "ours, dataflow", "ours_flow", full, ref="A1",
            note="ratio against the built-in dataflow on the prefix"),
    ]
    if feast_repo is not None:
        runs.append(Run("D1", "ours, replay into Feast (sqlite + parquet)", "feast_replay",
                        full, ref="A1", extra=("--repo", str(feast_repo)),
                        module="bench.feast_replay",
                        note="`run_replay`: dataflow + FeastSink writing every row offline "
                             "and the latest per key online"))
    names = set(spec_names)
    for r in runs:
        assert set(r.skip) <= names, r.skip
    return runs


def prepare_feast_repo(out: Path, definitions: Path) -> Path:
    repo = out / "feast_repo_copy"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    shutil.copy(definitions / "feature_store.yaml", repo / "feature_store.yaml")
    shutil.copytree(definitions / "feast_repo", repo / "feast_repo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def render_only(args) -> int:
    """Rewrite the RESULTS.md block from bench/out/results.json (no runs)."""
    saved = json.loads((args.out / "results.json").read_text())
    info = saved["info"]
    repo = args.out / "feast_repo_copy" if args.feast else None
    runs = plan(args, tuple(saved["names"]), Path(info["path"]), Path(info["prefix_path"]),
                repo)
    done = {r["rid"]: r for r in saved["runs"]}
    for r in runs:
        if r.rid in done:
            r.status, r.maxrss, r.result = (done[r.rid][k] for k in ("status", "maxrss",
                                                                     "result"))
    block = render(runs, info, args, saved["started"], saved["total"])
    write_results(args.results, block)
    print(block)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--prefix", type=int, default=50_000,
                   help="events for group A (all five features, built-ins included)")
    p.add_argument("--no-four", dest="four", action="store_false",
                   help="skip group B (built-ins without the 24 h feature on all events)")
    p.add_argument("--no-feast", dest="feast", action="store_false",
                   help="skip D1 (the replay into Feast's embedded stores)")
    p.add_argument("--epoch", type=float, default=3600.0, help="bytewax epoch, seconds")
    p.add_argument("--sample-keys", type=int, default=200,
                   help="built-in state: keys whose state graph is walked")
    p.add_argument("--max-rss-gb", type=float, default=8.0, help="kill a child above this")
    p.add_argument("--timeout", type=float, default=600.0, help="kill a child after this")
    p.add_argument("--out", type=Path, default=BENCH / "out")
    p.add_argument("--results", type=Path, default=BENCH / "RESULTS.md")
    p.add_argument("--rev", help="measure plugin/ as of this git revision (e.g. HEAD) "
                   "instead of the working tree")
    p.add_argument("--only", nargs="*",
                   help="run ids to run (default: all); prints, does not write RESULTS.md")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite RESULTS.md from bench/out/results.json (same arguments)")
    args = p.parse_args(argv)

    if args.render_only:
        return render_only(args)
    args.out = args.out.resolve()  # children and Feast run in other directories
    load_before = uptime()
    t_start = time.perf_counter()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.mkdir(parents=True, exist_ok=True)
    source, definitions = pin_source(args)
    print(f"{load_before}\nmeasuring feast_bytewax from {source}", flush=True)
    info = make_inputs(args.out, args.events, args.users, args.seed, args.prefix)
    print(f"events: {info['rows']:,} rows, {info['users']:,} users -> {info['path']} "
          f"({info['seconds']:.1f} s); prefix {info['prefix_path']}", flush=True)
    repo = prepare_feast_repo(args.out, definitions)
    spec_path = compile_spec(args.out, repo)
    with open(spec_path, "rb") as f:
        names = pickle.load(f).feature_names
    runs = plan(args, names, Path(info["path"]), Path(info["prefix_path"]),
                repo if args.feast else None)
    for r in runs:
        if args.only and r.rid not in args.only:
            continue
        run_child(r, spec_path, args.out, args)
    total = time.perf_counter() - t_start
    info.update(source=source, load_before=load_before, load_after=uptime())
    (args.out / "results.json").write_text(json.dumps({
        "info": info, "started": started, "total": total, "names": names,
        "runs": [{"rid": r.rid, "status": r.status, "maxrss": r.maxrss, "result": r.result}
                 for r in runs]}, indent=1, default=str))
    block = render(runs, info, args, started, total)
    print(block)
    if not args.only:
        write_results(args.results, block)
        print(f"\nwrote {args.results} ({total:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
