"""Kafka -> the live flow -> Redis, two revisions A/B by marginal cost (issue 9's budget).

    .venv/bin/python -m bench.live_ab [--revs 066abbf,85ca268] [--sizes 30000,90000]
        [--repeats 3]

Each revision's plugin/, feast_repo/, feature_store.yaml and tests/ are exported with
`git archive` (`run_bench.export_rev`); each run is a fresh child (`python -P`, that export
first on sys.path) that starts librdkafka's mock cluster and a redis-server (tests.services
of that revision), produces N JSON events (2,000 users, 10 ms apart, ending ~now), applies
a repo on the FastRedis provider + store and the parquet-folder offline store, and times
`run_live` (one worker, defaults, `--max-events N`) in wall and process CPU seconds.
Runs alternate revisions within each size and repeat. Why marginal: a run's fixed part
(Feast registry, flow build, Kafka start) is seconds and differs by revision for reasons
that do not scale with events; (time at the larger size - time at the smaller) / (sizes'
difference) is the per-event cost, and the ratio of the revisions' medians is the
throughput ratio. The machine may be busy: the table notes the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.run_bench import export_rev

BENCH = Path(__file__).resolve().parent
CHILD = r'''
import json, random, sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path
src, n, repo_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
sys.path[:0] = [f"{src}/plugin", src]
import feast_bytewax
assert feast_bytewax.__file__.startswith(src), feast_bytewax.__file__
from feast_bytewax.config import LiveConfig
from feast_bytewax.dataflow.live import run_live
from tests.e2e.repos import FAST_PROVIDER, FAST_STORE, apply, copy_repo, redis_yaml
from tests.services import start_kafka_mock, start_redis
kafka, redis = start_kafka_mock(), start_redis()
topic = kafka.new_topic("ab")
rnd = random.Random(3)
t0 = datetime.now(UTC) - timedelta(milliseconds=10 * n + 60_000)
evs = [{"event_id": str(i), "user_id": f"u{rnd.randrange(2000):05d}",
        "event_type": rnd.choice(["view", "purchase", "login_ok", "login_failed"]),
        "amount": round(rnd.random() * 100, 2), "category": rnd.choice("abcde"),
        "event_timestamp": (t0 + timedelta(milliseconds=10 * i)).isoformat()}
       for i in range(n)]
kafka.produce(topic, [(e["user_id"].encode(), json.dumps(e).encode(), None) for e in evs])
repo = copy_repo(repo_dir, redis_yaml(redis.connection_string, store_type=FAST_STORE,
                                      provider=FAST_PROVIDER))
apply(repo)
cfg = LiveConfig(source=f"kafka://{kafka.bootstrap}/{topic}", repo=repo, shards=32,
                 max_events=n, idle_exit=30.0)
c, w = time.process_time(), time.perf_counter()
res = run_live(cfg)
print(json.dumps({"wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                  "consumed": res.stats.consumed}))
'''


def run(src: Path, n: int, work: Path) -> dict:
    import json

    repo = work / f"repo-{src.name}-{n}"
    subprocess.run(["rm", "-rf", str(repo)], check=True)
    out = subprocess.run([sys.executable, "-P", "-c", CHILD, str(src), str(n), str(repo)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"{src.name} n={n} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["consumed"] != n:
        raise SystemExit(f"{src.name} n={n}: consumed {res['consumed']} (the mock dropped?)")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--revs", default="066abbf,85ca268")
    p.add_argument("--sizes", default="30000,90000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=BENCH / "out" / "live_ab")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    revs = [export_rev(r, args.out, ("plugin", "feast_repo", "feature_store.yaml", "tests"))
            for r in args.revs.split(",")]
    small, large = (int(x) for x in args.sizes.split(","))
    got: dict[tuple[str, int], list[dict]] = {}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for n in (small, large):
            for sha, src in revs:
                r = run(src, n, args.out)
                got.setdefault((sha, n), []).append(r)
                print(f"{sha} n={n} wall {r['wall']:.2f} s cpu {r['cpu']:.2f} s", flush=True)
    load.append(os.getloadavg()[0])
    print(f"\n| revision | marginal wall s per {large - small:,} events (runs) | median | "
          "marginal CPU s (runs) | median | events/s (wall) |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    med = {}
    for sha, _ in revs:
        for key in ("wall", "cpu"):
            d = [b[key] - a[key] for a, b in zip(got[(sha, small)], got[(sha, large)],
                                                 strict=True)]
            med[(sha, key)] = (statistics.median(d), d)
        (w, wd), (c, cd) = med[(sha, "wall")], med[(sha, "cpu")]
        print(f"| {sha} | {', '.join(f'{x:.2f}' for x in wd)} | {w:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in cd)} | {c:.2f} | {(large - small) / w:,.0f} |")
    base, new = revs[0][0], revs[-1][0]
    wall = med[(base, "wall")][0] / med[(new, "wall")][0]
    cpu = med[(base, "cpu")][0] / med[(new, "cpu")][0]
    print(f"\nthroughput ratio {new}/{base}: wall {wall:.3f}x, CPU {cpu:.3f}x; load average "
          f"{load[0]:.1f} -> {load[1]:.1f}")


if __name__ == "__main__":
    main()
