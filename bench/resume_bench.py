"""Issue 9 (life-cycle): what `--recovery-dir` costs a replay, and how long a replay killed
half-way takes to finish when restarted.

    .venv/bin/python -m bench.resume_bench [--events 300000] [--users 5000] [--repeats 3]
        [--kills 2] [--kill-at 0.5] [--epochs 30,2]

Measures the working tree (run it from a clean worktree; the figures name its commit).
Every run is the real command, `python -m feast_bytewax.cli.main replay --events E --repo R
--quiet [--recovery-dir D] [--epoch-interval S]`, in a fresh subprocess on a fresh copy of
the repo (feature_store.yaml + feast_repo/, `apply` untimed), so the times include the
process start and imports (~the same for every variant; the CLI's own "in X s" figure, the
dataflow alone, is reported too).

1. **overhead**: alternating: no recovery; `--recovery-dir` at the default epoch interval
   (30 s); and at each other `--epochs` value (snapshots of every shard, commit of the
   offline parts at each epoch). Ratio of the medians against no recovery.
2. **kill and resume**, per epoch interval: the same command is started, SIGKILLed at
   `--kill-at` of its progress (once it has written that share of the offline part files an
   uninterrupted run of that variant writes), and started again with the same arguments;
   timed: the restart from its start to its exit ("resume to done", against
   an uninterrupted run), and to the first offline part file it writes (mtime after the
   restart; the sink flushes at least every second, so this bounds from above when the
   first new event was processed; it includes the process start and imports).
   A kill before the first snapshot resumes from the start (nothing was committed).

Why: the issue asks that recovery cost little at the default interval and that a crash
cost about the work since the last snapshot, not a re-run. Prints markdown; writes
OUT/resume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.run_bench import BENCH, ROOT, _git, machine_busy_s, uptime

FLOW_S = re.compile(r"\] in ([0-9.]+)s")
SUMMARY = re.compile(r"consumed=\d+[^\n]*")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "feast_bytewax.cli.main", *args]


ENV = dict(os.environ, PYTHONPATH=f"{ROOT / 'plugin'}:{ROOT}")


def fresh(out: Path, name: str) -> tuple[Path, Path]:
    repo, rec = out / f"repo_{name}", out / f"recovery_{name}"
    for d in (repo, rec):
        if d.exists():
            shutil.rmtree(d)
    repo.mkdir(parents=True)
    shutil.copy(ROOT / "feature_store.yaml", repo / "feature_store.yaml")
    shutil.copytree(ROOT / "feast_repo", repo / "feast_repo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(cli("apply", "--repo", str(repo)), cwd=repo, env=ENV, check=True,
                   capture_output=True)
    return repo, rec


def replay_cmd(events: Path, repo: Path, rec: Path | None, epoch: float | None) -> list[str]:
    cmd = cli("replay", "--events", str(events), "--repo", str(repo), "--quiet")
    if rec is not None:
        cmd += ["--recovery-dir", str(rec)]
    if epoch is not None:
        cmd += ["--epoch-interval", f"{epoch:g}"]
    return cmd


def timed(cmd: list[str], cwd: Path) -> dict[str, Any]:
    t0, b0 = time.perf_counter(), machine_busy_s()
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = p.stdout + p.stderr
    if p.returncode != 0:
        raise SystemExit(f"exit {p.returncode}: {' '.join(cmd)}\n{text[-3000:]}")
    m, s = SUMMARY.search(text), FLOW_S.search(text)
    return {"wall": wall, "flow_s": float(s.group(1)) if s else None,
            "summary": m.group(0) if m else text[-500:], "parts": len(parts(cwd)),
            "machine_cores": (machine_busy_s() - b0) / wall}


def parts(repo: Path) -> set[Path]:
    return set((repo / "data" / "offline").rglob("part-*.parquet"))


def written_since(repo: Path, t_ns: int) -> bool:
    """A part file written (or rewritten: part names are deterministic) since t_ns."""
    for f in parts(repo):
        try:
            if f.stat().st_mtime_ns >= t_ns:
                return True
        except FileNotFoundError:  # rolled back meanwhile
            continue
    return False


def kill_and_resume(cmd: list[str], repo: Path, kill_parts: int) -> dict[str, Any]:
    """Start `cmd`, SIGKILL it once it has written `kill_parts` offline part files (its
    progress: the sink flushes at least every second), restart it and time the restart."""
    t0 = time.perf_counter()
    first = subprocess.Popen(cmd, cwd=repo, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    while len(parts(repo)) < kill_parts:
        if first.poll() is not None:
            raise SystemExit(f"the run ended before writing {kill_parts} parts")
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.perf_counter() - t0
    before = parts(repo)
    t1, since = time.perf_counter(), time.time_ns()
    second = subprocess.Popen(cmd, cwd=repo, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    first_write = None
    while second.poll() is None:
        if first_write is None and written_since(repo, since):
            first_write = time.perf_counter() - t1
        time.sleep(0.02)
    done = time.perf_counter() - t1
    text = second.stdout.read()
    if second.returncode != 0:
        raise SystemExit(f"the restart exited {second.returncode}:\n{text[-3000:]}")
    m, s = SUMMARY.search(text), FLOW_S.search(text)
    return {"killed_at": killed_at, "parts_before": len(before),
            "parts_after": len(parts(repo)), "resume_wall": done,
            "first_write": first_write, "flow_s": float(s.group(1)) if s else None,
            "summary": m.group(0) if m else text[-500:]}


def med(vals: list[float]) -> str:
    m = statistics.median(vals)
    return f"{m:.2f} s ({min(vals):.2f} - {max(vals):.2f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kills", type=int, default=2, help="kill/resume runs per epoch interval")
    p.add_argument("--kill-at", type=float, default=0.5)
    p.add_argument("--epochs", default="30,2", help="epoch intervals with recovery (30: the "
                   "CLI default, run without --epoch-interval)")
    p.add_argument("--out", type=Path, default=BENCH / "out" / "resume")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_all, load0 = time.perf_counter(), uptime()
    head = _git("log", "-1", "--format=%h", "--", "plugin")
    dirty = _git("status", "--porcelain", "--", "plugin", "feast_repo", "feature_store.yaml")
    events = out / f"events_{args.events}_{args.users}_{args.seed}.parquet"
    if not events.exists():
        code = ("from feast_bytewax.datagen.generate import write_events; import sys; "
                "write_events(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), "
                "seed=int(sys.argv[4]))")
        subprocess.run([sys.executable, "-c", code, str(events), str(args.events),
                        str(args.users), str(args.seed)], env=ENV, check=True)
    epochs = [float(x) for x in args.epochs.split(",")]
    variants: list[tuple[str, float | None, bool]] = [("no recovery", None, False)]
    variants += [(f"recovery, epoch {e:g} s" + (" (default)" if e == 30 else ""),
                  None if e == 30 else e, True) for e in epochs]
    runs: dict[str, list[dict]] = {v[0]: [] for v in variants}
    for i in range(args.repeats):
        for name, epoch, rec in variants:
            repo, recdir = fresh(out, "run")
            r = timed(replay_cmd(events, repo, recdir if rec else None, epoch), repo)
            runs[name].append(r)
            print(f"  {i + 1}/{args.repeats} {name:28s} wall {r['wall']:.2f} s, flow "
                  f"{r['flow_s']} s, machine {r['machine_cores']:.2f} cores", flush=True)
    base = statistics.median(r["wall"] for r in runs["no recovery"])
    base_flow = statistics.median(r["flow_s"] for r in runs["no recovery"])
    kills: dict[str, list[dict]] = {}
    for name, epoch, _rec in variants[1:]:
        full = statistics.median(r["wall"] for r in runs[name])
        n_parts = statistics.median(r["parts"] for r in runs[name])
        kills[name] = []
        for _ in range(args.kills):
            repo, recdir = fresh(out, "kill")
            k = kill_and_resume(replay_cmd(events, repo, recdir, epoch), repo,
                                max(1, round(args.kill_at * n_parts)))
            k["uninterrupted_wall"], k["uninterrupted_parts"] = full, n_parts
            kills[name].append(k)
            print(f"  kill {name:28s} at {k['killed_at']:.2f} s ({k['parts_before']} parts "
                  f"written); resume to done {k['resume_wall']:.2f} s, first write "
                  f"{k['first_write']}; {k['summary'][:90]}", flush=True)
    lines = [f"plugin/ of {head}{' (DIRTY)' if dirty else ''}; load average before: {load0}; "
             f"after: {uptime()}; {time.perf_counter() - t_all:.0f} s. Machine cores busy "
             "(all processes) per run are in resume.json.", "",
             "| variant | wall s per run | median wall (range) | wall vs none | median flow s "
             "(CLI) | flow vs none | accounting (first run) |",
             "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for name, rs in runs.items():
        w = statistics.median(r["wall"] for r in rs)
        f = statistics.median(r["flow_s"] for r in rs)
        lines.append(f"| {name} | {', '.join(format(r['wall'], '.2f') for r in rs)} | "
                     f"{med([r['wall'] for r in rs])} | {base / w:.3f} | {f:.1f} | "
                     f"{base_flow / f:.3f} | `{rs[0]['summary'][:110]}` |")
    lines += ["", "(`vs none`: events/s ratio, i.e. none's time / this time.)", "",
              "| recovery | killed at (s, of uninterrupted) | offline parts before the "
              "restart (of uninterrupted) | restart: first part written | restart: to done "
              "| to done / uninterrupted | restart's accounting |",
              "| --- | --- | ---: | --- | --- | ---: | --- |"]
    for name, ks in kills.items():
        for k in ks:
            fw = "-" if k["first_write"] is None else f"{k['first_write']:.2f} s"
            lines.append(
                f"| {name} | {k['killed_at']:.2f} of {k['uninterrupted_wall']:.2f} | "
                f"{k['parts_before']} of {k['uninterrupted_parts']:g} | {fw} | "
                f"{k['resume_wall']:.2f} s | "
                f"{k['resume_wall'] / k['uninterrupted_wall']:.2f} | "
                f"`{k['summary'][:140]}` |")
    text = "\n".join(lines)
    print(text)
    (out / "resume.json").write_text(json.dumps({"runs": runs, "kills": kills,
                                                 "markdown": text}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
