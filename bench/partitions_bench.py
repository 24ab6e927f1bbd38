"""Issue 8 (event time per input partition): what a folder of uneven parts costs, and what
the `event_id` de-duplication keeps.

    .venv/bin/python -m bench.partitions_bench [--rev HEAD] [--events 300000] [--users 5000]
        [--repeats 3] [--dedup-events 100000]

1. **replay, one file vs a folder**: one events file (`write_events`, Zipf users, 24 h) and
   the same rows split by user into 4 parquet parts (user number % 4, as
   tests/e2e/test_partitions.py builds its folder: the sizes are uneven, as a Zipf stream
   gives). Each run is `bench.compare_child replay` (the revision's own CLI in-process on a
   fresh repo copy, `apply` untimed) in a fresh child, alternating file, folder, file, ...
   The folder has 4 input partitions, so it pays for what one file does not: pacing (a
   part may not read more than `--max-skew` of event time ahead of the slowest) and the
   minimum over 4 frontiers. Reported: events/s per run, medians, ranges, folder/file.
2. **dedup state**: `ShardEngine`s driven in this process (32 engines, routed as the flow
   does, events read through `EventTimeSource` with its partition marks, as
   `bench.contenders` A3/C1) over `--dedup-events` events; at the end of the input (before
   the final watermark) each engine's `RecentIds` is pickled (what its snapshot carries):
   bytes / keys holding ids, bytes / ids, and the share of the engines' snapshots. Done for
   the events spread over 24 h and the same number over 1 h (a 24x denser stream: the ids
   kept are those of the last allowed lateness + delay of event time).

Why: the issue's targets are "a folder costs <= 15% against one file" and a bounded, small
de-duplication state per key. Prints markdown; writes OUT/partitions.json.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.compare_revs import Side, fresh_repo, run_child
from bench.run_bench import BENCH, compile_spec, fmt_int, uptime


def split_by_user(one: Path, folder: Path, parts: int = 4) -> list[int]:
    table = pq.read_table(one)
    users = table.column("user_id").to_pylist()
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for p in range(parts):
        rows = [i for i, u in enumerate(users) if int(u[1:]) % parts == p]
        pq.write_table(table.take(rows), folder / f"part-{p}.parquet")
        sizes.append(len(rows))
    return sizes


def replay(side: Side, out: Path, events: Path, timeout: float) -> dict[str, Any]:
    repo = fresh_repo(side, out)
    r = run_child(side, "replay", out, events, timeout, ("--repo", str(repo)))
    r["events_per_s"] = r["events"] / r["seconds"]
    r["events_per_cpu_s"] = r["events"] / r["cpu_seconds"]
    return r


def dedup_state(spec_path: Path, events: Path) -> dict[str, Any]:
    """Engines over `events` with marks; RecentIds pickled at the end of the input."""
    from bench.common import CFG, iter_validated, load_spec, validated_source
    from feast_bytewax.dataflow.flow import engine_config
    from feast_bytewax.engine.routing import shard_of
    from feast_bytewax.engine.shard import ShardEngine
    from feast_bytewax.records import Mark

    spec = load_spec(spec_path)
    src = validated_source(events, spec)
    econf = engine_config(CFG, len(src.partitions()))
    engines = [ShardEngine(spec, econf) for _ in range(32)]
    n = 0
    for batch in iter_validated(src):
        parts: list[list] = [[] for _ in engines]
        for x in batch:
            if type(x) is Mark:
                for p in parts:
                    p.append(x)
            else:
                parts[shard_of(x.user_id, 32)].append(x)
                n += 1
        for eng, part in zip(engines, parts, strict=True):
            if part:
                eng.ingest(part)
    ids = sum(len(e.dedup) for e in engines)
    keys = len({k[0] for e in engines for k in e.dedup.seen})
    active = sum(len(e.keys) for e in engines)
    dedup_b = sum(len(pickle.dumps(e.dedup, protocol=pickle.HIGHEST_PROTOCOL))
                  for e in engines)
    snap_b = sum(len(e.snapshot()) for e in engines)
    return {"events": n, "ids": ids, "keys_with_ids": keys, "active_keys": active,
            "dedup_pickled_bytes": dedup_b, "snapshot_bytes": snap_b,
            "bytes_per_key": dedup_b / max(keys, 1), "bytes_per_id": dedup_b / max(ids, 1),
            "duplicates": sum(e.counts.get("duplicates", 0) for e in engines)}


def med_range(vals: list[float]) -> str:
    m = statistics.median(vals)
    return (f"{fmt_int(m)} ({fmt_int(min(vals))} - {fmt_int(max(vals))}, "
            f"{(max(vals) - min(vals)) / m:.1%})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", default="HEAD")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dedup-events", type=int, default=100_000)
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument("--out", type=Path, default=BENCH / "out" / "partitions")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_all, load0 = time.perf_counter(), uptime()
    side = Side("new", args.rev, out)
    one = out / f"events_{args.events}_{args.users}_{args.seed}.parquet"
    if not one.exists():
        run_child(side, "generate", out, one, args.timeout,
                  ("--count", str(args.events), "--users", str(args.users),
                   "--seed", str(args.seed)))
    folder = out / f"events_{args.events}_{args.users}_{args.seed}_by_user"
    sizes = split_by_user(one, folder)
    print(f"{side.describe()}\nparts (rows): {sizes}", flush=True)
    runs: dict[str, list[dict]] = {"file": [], "folder": []}
    for i in range(args.repeats):
        for name, events in (("file", one), ("folder", folder)):
            r = replay(side, out, events, args.timeout)
            runs[name].append(r)
            print(f"  {i + 1}/{args.repeats} {name:6s} {r['events_per_s']:,.0f} events/s "
                  f"({r['events_per_cpu_s']:,.0f}/CPU-s), rows {r['rows']:,}, late "
                  f"{r.get('late')}, corr {r.get('corrections')}, other processes "
                  f"{r['others_cores']:.2f} cores", flush=True)
    med = {k: statistics.median(r["events_per_s"] for r in v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(r["events_per_cpu_s"] for r in v) for k, v in runs.items()}
    repo = fresh_repo(side, out)
    spec_path = compile_spec(out, repo)
    dedup = {}
    for label, hours in (("24 h", 24), ("1 h", 1)):
        path = out / f"dedup_{args.dedup_events}_{hours}h.parquet"
        if not path.exists():
            from feast_bytewax.datagen.generate import write_events
            write_events(path, args.dedup_events, args.users, seed=args.seed,
                         duration=timedelta(hours=hours))
        dedup[label] = dedup_state(spec_path, path)
    load1 = uptime()
    lines = [
        f"Load average before: {load0}; after: {load1}; {time.perf_counter() - t_all:.0f} s.",
        f"Code: {side.describe()}. Parts (rows, user % 4): {', '.join(map(fmt_int, sizes))}.",
        "",
        "| input | events/s per run | median (range) | median events/CPU-s | rows | late "
        "| corrections | other processes (cores) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for k, v in runs.items():
        lines.append(
            f"| {k} | {', '.join(fmt_int(r['events_per_s']) for r in v)} | "
            f"{med_range([r['events_per_s'] for r in v])} | {fmt_int(med_cpu[k])} | "
            f"{', '.join(sorted({fmt_int(r['rows']) for r in v}))} | "
            f"{', '.join(sorted({str(r.get('late')) for r in v}))} | "
            f"{', '.join(sorted({str(r.get('corrections')) for r in v}))} | "
            f"{', '.join(format(r['others_cores'], '.2f') for r in v)} |")
    lines += ["", f"folder/file (medians): **{med['folder'] / med['file']:.3f}** "
              f"(CPU {med_cpu['folder'] / med_cpu['file']:.3f}); per pair (run order): "
              + ", ".join(f"{b['events_per_s'] / a['events_per_s']:.3f}"
                          for a, b in zip(runs["file"], runs["folder"], strict=True)), "",
              "| events over | events | ids kept | keys with ids (active keys) | RecentIds "
              "pickled | bytes / key | bytes / id | share of snapshots |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, d in dedup.items():
        lines.append(
            f"| {label} | {d['events']:,} | {d['ids']:,} | {d['keys_with_ids']:,} "
            f"({d['active_keys']:,}) | {d['dedup_pickled_bytes']:,} B | "
            f"{d['bytes_per_key']:.0f} B | {d['bytes_per_id']:.1f} B | "
            f"{d['dedup_pickled_bytes'] / d['snapshot_bytes']:.1%} |")
    text = "\n".join(lines)
    print(text)
    (out / "partitions.json").write_text(json.dumps(
        {"runs": runs, "dedup": dedup, "sizes": sizes, "markdown": text}, indent=1,
        default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
