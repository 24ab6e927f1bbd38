"""cProfile of our feature step (or the whole dataflow) on an events file.

    .venv/bin/python -m bench.profile_step --events bench/out/events_1000000_10000_7.parquet
    .venv/bin/python -m bench.profile_step --events ... --flow     # bytewax run_main, 1 worker

The step: the same 32 `ShardEngine`s as run_bench's C1, events validated and routed before
profiling starts. cProfile roughly doubles the run time; read the shares, not the seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from datetime import timedelta
from pathlib import Path

from bytewax.testing import run_main

from bench.common import CFG, CountingSink, iter_validated, load_spec, validated_source
from feast_bytewax.dataflow.flow import build_flow, engine_config
from feast_bytewax.dataflow.runtime import gc_frozen
from feast_bytewax.engine.routing import shard_of
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.ingest.files import EventFileSource
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import Mark


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", required=True)
    p.add_argument("--spec", default="bench/out/spec.pkl")
    p.add_argument("--shards", type=int, default=CFG.shards)
    p.add_argument("--flow", action="store_true", help="profile the bytewax dataflow instead")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--sort", default="tottime")
    args = p.parse_args(argv)
    if not Path(args.spec).exists():
        sys.exit(f"{args.spec} missing: run bench.run_bench once (it compiles the spec)")
    spec = load_spec(args.spec)
    prof = cProfile.Profile()
    if args.flow:
        stats = FlowStats()
        flow = build_flow("profile", CFG, spec, EventFileSource(args.events), CountingSink(),
                          CountingSink(), stats)
        with gc_frozen():
            prof.enable()
            run_main(flow, epoch_interval=timedelta(seconds=3600))
            prof.disable()
        print(stats.summary())
    else:
        src = validated_source(args.events, spec)
        econf = engine_config(CFG, len(src.partitions()))
        engines = [ShardEngine(spec, econf) for _ in range(args.shards)]
        work = []
        for batch in iter_validated(src):
            parts: list[list] = [[] for _ in engines]
            for x in batch:
                if type(x) is Mark:  # every engine gets every partition mark
                    for p in parts:
                        p.append(x)
                else:
                    parts[shard_of(x.user_id, args.shards)].append(x)
            work.append(parts)
        with gc_frozen():
            prof.enable()
            for parts in work:
                for eng, part in zip(engines, parts, strict=True):
                    if part:
                        eng.ingest(part)
            for eng in engines:
                eng.finish()
            prof.disable()
        print({k: sum(e.counts[k] for e in engines) for k in engines[0].counts})
    st = pstats.Stats(prof)
    st.sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
