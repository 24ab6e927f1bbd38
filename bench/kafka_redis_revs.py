"""Kafka -> Redis max throughput of several git revisions in one session, alternating.

    .venv/bin/python -m bench.kafka_redis_revs [--revs 066abbf,HEAD] [--rounds 2]
        [--events 300000] [--max-repeat 2]

`bench.kafka_redis_bench` measures one revision per call (`--rev`: plugin/, feast_repo/ and
feature_store.redis.yaml of that commit; its own mock broker, redis-server and repo). This
calls it once per (round, revision), revisions in turn within each round, with only the
max phase (`--against none --rates "" --baseline-events 0`; the flow's own default
settings since bench-s14, no longer a 0.25 s delay and 0.1 s flush), and tables the
steady events/s of every max run (each call's runs use seeds 7, 107, ...: the same events
for every revision), their median and range per revision, the ratio of the medians against
the first revision, and the worker's events per CPU-second. Why: the issue 9 target (the
idempotent-write path costs <= 15% of Kafka -> Redis throughput) needs both sides on the
same machine state.
Writes OUT/kafka_redis_revs.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.run_bench import BENCH, ROOT, fmt_int, uptime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--revs", default="066abbf,HEAD")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--max-repeat", type=int, default=2)
    p.add_argument("--out", type=Path, default=BENCH / "out" / "kafka_redis_revs")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    revs = args.revs.split(",")
    runs: dict[str, list[dict]] = {r: [] for r in revs}
    t0, load0 = time.perf_counter(), uptime()
    for i in range(args.rounds):
        for rev in revs:
            res = out / f"{rev}_{i}.json"
            cmd = [sys.executable, "-m", "bench.kafka_redis_bench", "--against", "none",
                   "--rev", rev, "--rates", "",
                   "--baseline-events", "0", "--events", str(args.events),
                   "--max-repeat", str(args.max_repeat), "--out", str(res)]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{rev} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
            data = json.loads(res.read_text())
            for ph in data["phases"]:
                ph["code"] = data["code"]
                runs[rev].append(ph)
                print(f"  round {i + 1} {rev:8s} {ph['phase']}: "
                      f"{fmt_int(ph['events_per_s_steady'])} events/s steady, "
                      f"{fmt_int(ph['events_per_worker_cpu_s'])} per worker CPU-s", flush=True)
    base = revs[0]

    def rate(ph: dict) -> float:
        return ph["events_per_s_steady"] or ph["events_per_s_end_to_end"]

    med = {r: statistics.median(rate(ph) for ph in v) for r, v in runs.items()}
    lines = [f"Load average before: {load0}; after: {uptime()}; "
             f"{time.perf_counter() - t0:.0f} s.", "",
             "| revision | code | max runs, steady events/s (run order) | median (range) "
             f"| vs {base} | median events per worker CPU-s |",
             "| --- | --- | --- | --- | ---: | ---: |"]
    for r, v in runs.items():
        vals = [rate(ph) for ph in v]
        cpu = statistics.median(ph["events_per_worker_cpu_s"] or 0 for ph in v)
        lines.append(f"| {r} | {v[0]['code']} | {', '.join(fmt_int(x) for x in vals)} | "
                     f"{fmt_int(med[r])} ({fmt_int(min(vals))} - {fmt_int(max(vals))}) | "
                     f"{med[r] / med[base]:.3f} | {fmt_int(cpu)} |")
    text = "\n".join(lines)
    print(text)
    (out / "kafka_redis_revs.json").write_text(json.dumps({"runs": runs, "markdown": text},
                                                          indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
