"""Scale-out on Bytewax's own cluster (issue 11, item 3): replay throughput on 1 process,
2 worker threads in 1 process (`-w 2`) and 2 processes (`-i/-a` on loopback), and the hot
key of a Zipf stream: its share of one worker's time.

    .venv/bin/python -m bench.cluster_bench [--events 300000 --users 10000 --parts 4
                                             --repeat 2]

What runs (writes bench/out/cluster/, prints a markdown report):

- *throughput*: `python -m bytewax.run dataflows.replay -s 3600` (recovery off) over a
  folder of `--parts` parquet parts (generated Zipf events, partitioned by user like a keyed
  topic) into a fresh copy of an applied Feast repo (SQLite online, parquet-folder offline),
  with the stores on, and with both off (`FEAST_BYTEWAX_ONLINE=0 FEAST_BYTEWAX_OFFLINE=0`:
  the dataflow alone). Wall time from the first process's start to the last one's exit;
  the fixed start-up (imports, Feast registry, cluster handshake) is measured with a
  1,000-event folder and subtracted: events/s = events / (wall - start-up wall). CPU
  seconds per process from `os.wait4`.
- *hot key*: the same events validated and routed to the 32 shards as the dataflow routes
  them, then the shard engines timed on (a) every event and (b) the hottest key's events
  alone (with every partition mark, as its shard gets them). Its share of one worker's
  time with W workers is t_hot / (t_hot + (t_all - t_hot) / W) (its shard's worker also
  holds 1/W of the other keys, spread evenly); 1 / that share bounds the speed-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/out/cluster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_template(directory: Path) -> Path:
    """An applied Feast repo (the shipped yaml and feast_repo/), copied per run."""
    from tests.conftest import make_feast_repo

    if directory.exists():
        shutil.rmtree(directory)
    return make_feast_repo(directory)


def write_folder(path: Path, n: int, users: int, parts: int, seed: int = 7) -> Path:
    from feast_bytewax.datagen.generate import write_events

    if path.exists():
        shutil.rmtree(path)
    start = (datetime.now(UTC) - timedelta(hours=26)).replace(microsecond=0)
    write_events(path, n, users, seed=seed, start=start, duration=timedelta(hours=24),
                 parts=parts, late_fraction=0.0, jitter_s=0.4)
    return path


def run_cluster(mode: str, events: Path, repo: Path, stores: bool) -> dict:
    """One replay under bytewax.run: mode `p1` (1 process, 1 worker), `w2` (1 process, 2
    worker threads) or `p2` (2 processes). Returns wall s and CPU s per process."""
    env = {**os.environ, "FEAST_BYTEWAX_EVENTS": str(events), "FEAST_BYTEWAX_REPO": str(repo)}
    if not stores:
        env.update(FEAST_BYTEWAX_ONLINE="0", FEAST_BYTEWAX_OFFLINE="0")
    probe = OUT / f"probe-{mode}-{int(stores)}-{time.time_ns()}"
    env["CLUSTER_BENCH_PROBE"] = str(probe)
    base = [sys.executable, "-m", "bytewax.run", "bench.cluster_flow:flow", "-s", "3600"]
    if mode == "p1":
        cmds = [base]
    elif mode == "w2":
        cmds = [[*base, "-w", "2"]]
    else:
        n = int(mode[1:])
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(n))
        cmds = [[*base, "-i", str(i), "-a", addresses] for i in range(n)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for c in cmds]
    cpu = []
    try:
        for p in procs:
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu.append(usage.ru_utime + usage.ru_stime)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
    wall = time.perf_counter() - t0
    for i, p in enumerate(procs):
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        if p.returncode != 0:
            raise RuntimeError(f"{mode} process {i} exited {p.returncode}: {err[-2000:]}")
    stamps = []
    for f in OUT.glob(probe.name + ".*"):
        stamps.append(tuple(map(float, f.read_text().split())))
        f.unlink()
    assert len(stamps) == len(procs), stamps
    # the cluster runs once every process has built its flow; it ends with the last exit
    run = max(e for _, e in stamps) - max(r for r, _ in stamps)
    return {"wall": wall, "run": run, "cpu": cpu}


def throughput(args, template: Path, big: Path, tiny: Path, n_tiny: int) -> list[dict]:
    rows = []
    for stores in (False, True):
        for mode in ("p1", "w2", "p2"):
            res = {"tiny": [], "big": []}
            for r in range(args.repeat):
                for what, folder in (("tiny", tiny), ("big", big)):
                    repo = OUT / f"repo-{mode}-{int(stores)}-{what}-{r}"
                    if repo.exists():
                        shutil.rmtree(repo)
                    shutil.copytree(template, repo)
                    res[what].append(run_cluster(mode, folder, repo, stores))
                    shutil.rmtree(repo)
            tiny_run = min(x["run"] for x in res["tiny"])
            best = min(res["big"], key=lambda x: x["run"])
            eps = (args.events - n_tiny) / max(1e-9, best["run"] - tiny_run)
            rows.append({"stores": stores, "mode": mode, "eps": eps, **best})
            print(f"  stores={'on' if stores else 'off'} {mode}: run (flow built -> exit) "
                  f"{[round(x['run'], 2) for x in res['big']]} s, tiny-input run "
                  f"{tiny_run:.2f} s, => {eps:,.0f} events/s; process wall "
                  f"{[round(x['wall'], 1) for x in res['big']]} s, CPU s per process "
                  f"{[round(c, 1) for c in best['cpu']]}", flush=True)
    return rows


def hot_key(events: Path, repo: Path) -> dict:
    from bench.common import CFG, iter_validated, validated_source
    from feast_bytewax.dataflow.flow import engine_config
    from feast_bytewax.dataflow.repo import open_store
    from feast_bytewax.dataflow.runtime import gc_frozen
    from feast_bytewax.engine.routing import shard_of
    from feast_bytewax.engine.shard import ShardEngine
    from feast_bytewax.features.spec import load_flow_spec
    from feast_bytewax.records import Mark

    spec = load_flow_spec(open_store(repo)).entities[0]
    src = validated_source(events, spec)
    econf = engine_config(CFG, len(src.partitions()))
    batches = list(iter_validated(src))
    counts = Counter(x.user_id for b in batches for x in b if type(x) is not Mark)
    total = sum(counts.values())
    hot, hot_n = counts.most_common(1)[0]
    shards = CFG.shards

    def run(keep) -> float:
        engines = [ShardEngine(spec, econf) for _ in range(shards)]
        work = []
        for batch in batches:
            parts: list[list] = [[] for _ in engines]
            for x in batch:
                if type(x) is Mark:
                    for p in parts:
                        p.append(x)
                elif keep(x):
                    parts[shard_of(x.user_id, shards)].append(x)
            work.append([(e, p) for e, p in zip(engines, parts, strict=True)
                         if any(type(y) is not Mark for y in p)])
        with gc_frozen():
            t0 = time.perf_counter()
            for pairs in work:
                for eng, part in pairs:
                    eng.ingest(part)
            for eng in engines:
                eng.finish()
            return time.perf_counter() - t0

    t_all = statistics.median(run(lambda x: True) for _ in range(3))
    t_hot = statistics.median(run(lambda x: x.user_id == hot) for _ in range(3))
    hot_shard = shard_of(hot, shards)
    shard_events = sum(n for k, n in counts.items() if shard_of(k, shards) == hot_shard)
    return {"total": total, "hot": hot, "hot_n": hot_n, "t_all": t_all, "t_hot": t_hot,
            "shard_events": shard_events, "second": counts.most_common(2)[1][1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    template = make_template(OUT / "template")
    big = write_folder(OUT / f"events-{args.events}", args.events, args.users, args.parts)
    n_tiny = 1000
    tiny = write_folder(OUT / "events-tiny", n_tiny, 100, args.parts)
    print(f"# cluster_bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average "
          f"{os.getloadavg()[0]:.1f}, {os.cpu_count()} cores", flush=True)
    h = hot_key(big, template)
    print("## hot key (engine only, 32 shards)")
    print(f"events {h['total']:,}, hottest key {h['hot']}: {h['hot_n']:,} events "
          f"({h['hot_n'] / h['total']:.1%}; next {h['second'] / h['total']:.1%}); its shard "
          f"{h['shard_events'] / h['total']:.1%} of events")
    print(f"engine time all {h['t_all']:.2f} s ({h['total'] / h['t_all']:,.0f} events/s), "
          f"hot key alone {h['t_hot']:.2f} s = {h['t_hot'] / h['t_all']:.1%} of it")
    for w in (1, 2, 4, 8, 16):
        share = h["t_hot"] / (h["t_hot"] + (h["t_all"] - h["t_hot"]) / w)
        bound = h["t_all"] / (h["t_hot"] + (h["t_all"] - h["t_hot"]) / w)
        print(f"  W={w}: hot key = {share:.0%} of its worker's time; speed-up <= {bound:.2f}x")
    if not args.skip_throughput:
        print("## replay throughput (bytewax.run dataflows.replay)")
        throughput(args, template, big, tiny, n_tiny)
    print(f"(bench took {time.time() - t_start:.0f} s; load average now "
          f"{os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
