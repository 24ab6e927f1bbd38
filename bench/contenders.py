"""One contender per process: `python -m bench.contenders NAME --events F --spec S --out J`.

Each writes a JSON result (events, seconds, outputs, state measurements, VmHWM); the parent
(run_bench.py) adds the child's peak RSS. Nothing imported here loads Feast, so a
contender's peak RSS holds only what it needs; the replay into Feast (which does load it)
is its own module, `bench.feast_replay`, run the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import random
import resource
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bytewax.run import cli_main

import feast_bytewax
from bench.baseline_windows import BuiltinKeyState, build_baseline_flow
from bench.common import (
    BATCH,
    CFG,
    Counter,
    CountingSink,
    deep_size,
    distribution,
    iter_validated,
    load_spec,
    rss,
    shared_baseline,
    validated_source,
    vm_status,
)
from feast_bytewax.dataflow.flow import build_flow, engine_config
from feast_bytewax.dataflow.runtime import gc_frozen
from feast_bytewax.engine.routing import shard_of
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.ingest.files import EventFileSource
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import Event, FeatureRow, Mark
from feast_bytewax.timeutil import US_PER_S


def spec_without(spec, skip):
    """The spec minus some features (to run ours on exactly what a baseline computes)."""
    unknown = set(skip) - set(spec.feature_names)
    if unknown:
        raise ValueError(f"unknown features to skip: {sorted(unknown)}")
    return dataclasses.replace(
        spec, features=tuple(f for f in spec.features if f.name not in skip))


DELAY_US = round(CFG.watermark_delay * US_PER_S)


def _cpu() -> float:
    """CPU seconds of this process, all threads (user + system)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _run_flow(flow, epoch_s: float) -> tuple[float, float]:
    """Run a dataflow on one worker; (wall seconds, CPU seconds)."""
    t0, c0 = time.perf_counter(), _cpu()
    with gc_frozen():
        cli_main(flow, workers_per_process=1, epoch_interval=timedelta(seconds=epoch_s))
    return time.perf_counter() - t0, _cpu() - c0


# -- (b) ours: the feature step alone --------------------------------------------------------
def ours_step(args) -> dict[str, Any]:
    """`ShardEngine`s driven directly over the validated events, batch by batch as the source
    delivers them (1000 rows, each event stamped with its partition's frontier, a partition
    `Mark` after a batch), one core, no Bytewax. With `--shards N` (default 32, as the
    dataflow) each batch is split by `routing.shard_of` and each shard's part goes to its
    own engine, marks to every engine, as the flow's router and `stateful_batch` do;
    `--shards 1` is one engine owning every key. Timed: `ingest` and the final `finish`
    calls only (validation and routing are not)."""
    spec = spec_without(load_spec(args.spec), args.skip)
    shards = args.shards
    src = validated_source(args.events, spec)
    econf = engine_config(CFG, len(src.partitions()))
    engines = [ShardEngine(spec, econf) for _ in range(shards)]
    n = rows = late = 0
    busy = cpu = 0.0
    rss0 = rss()
    t_wall = time.perf_counter()
    route: dict[str, int] = {}
    with gc_frozen():
        for batch in iter_validated(src):
            parts: list[list] = [[] for _ in range(shards)]
            for x in batch:
                if type(x) is Mark:
                    for p in parts:
                        p.append(x)
                    continue
                s = route.get(x.user_id)
                if s is None:
                    s = route[x.user_id] = shard_of(x.user_id, shards)
                parts[s].append(x)
                n += 1
            for eng, part in zip(engines, parts, strict=True):
                if not part:
                    continue
                t0, c0 = time.perf_counter(), time.thread_time()
                out = eng.ingest(part)
                busy += time.perf_counter() - t0
                cpu += time.thread_time() - c0
                for r in out:
                    if type(r) is FeatureRow:
                        rows += 1
                    else:
                        late += 1
        state = measure_ours(engines) if args.measure else None
        rss_end = rss()
        t0, c0 = time.perf_counter(), time.thread_time()
        final = [r for eng in engines for r in eng.finish()]
        busy += time.perf_counter() - t0
        cpu += time.thread_time() - c0
    wall = time.perf_counter() - t_wall
    rows += sum(1 for r in final if type(r) is FeatureRow)
    late += sum(1 for r in final if type(r) is not FeatureRow)
    return {
        "events": n, "seconds": busy, "cpu_seconds": cpu,
        "wall_seconds_incl_validation": wall, "rows": rows,
        "late": late, "corrections": sum(e.counts["corrections"] for e in engines),
        "duplicates": sum(e.counts.get("duplicates", 0) for e in engines),
        "shards": shards, "features": list(spec.feature_names), "state": state,
        "rss_before": rss0, "rss_at_end_of_input": rss_end,
    }


def measure_ours(engines) -> dict[str, Any]:
    """State per active key (a key in some engine's `keys` at the end of the input, before
    the final watermark): deep size of its `KeyState` plus its key string; also all engine
    state (keys dicts, timer heaps, event buffers, held rows, recent event ids, partition
    watermarks) divided by active keys."""
    t0 = time.perf_counter()
    empty = engines[0].cs.empty_vector
    seen = shared_baseline([empty])  # the shared empty vector: a constant
    sizes, pickled = [], []
    for eng in engines:
        for k, st in eng.keys.items():
            sizes.append(deep_size(k, seen) + deep_size(st, seen))
            pickled.append(len(pickle.dumps((k, st.groups, st.emitted),
                                            protocol=pickle.HIGHEST_PROTOCOL)))
    total_seen = shared_baseline([empty])
    parts = {name: sum(deep_size(getattr(eng, name), total_seen) for eng in engines)
             for name in ("keys", "timers", "buffer", "open_rows", "dedup", "marks")}
    n_keys = len(sizes)
    dist = distribution(sizes)
    return {
        "active_keys": n_keys,
        "deep": dist,
        "pickled": distribution(pickled),
        "breakdown": breakdown_ours(engines, dist.get("median")),
        "engine_total_bytes": sum(parts.values()),
        "engine_parts_bytes": parts,
        "engine_total_per_key": sum(parts.values()) / max(n_keys, 1),
        "timers_heap_len": sum(len(e.timers) for e in engines),
        "buffer_len": sum(len(e.buffer) for e in engines),
        "snapshot_bytes": sum(len(e.snapshot()) for e in engines),
        "measure_seconds": time.perf_counter() - t0,
    }


def breakdown_ours(engines, median: float | None) -> dict[str, Any]:
    """Where a key's bytes go: the key, the KeyState shell, the current and last-emitted
    vectors, and per feature group its state object with its small per-member lists versus
    the panes / sessions it holds. Mean over active keys, and one key of median size."""
    cs = engines[0].cs
    seen = shared_baseline([cs.empty_vector])
    names = ["+".join(cs.spec.features[m.slot].name for m in g.members) for g in cs.groups]
    acc: dict[str, int] = {}
    closest: tuple[float, str, dict] | None = None
    n = 0
    for eng in engines:
        for k, st in eng.keys.items():
            n += 1
            parts = {"key str": deep_size(k, seen),
                     "KeyState + groups list": sys.getsizeof(st) + sys.getsizeof(st.groups)}
            seen.update((id(st), id(st.groups)))
            parts["emitted (last row)"] = deep_size(st.emitted, seen)
            for name, gs in zip(names, st.groups, strict=True):
                if gs is None:
                    continue
                content = gs.panes if hasattr(gs, "panes") else gs.sessions
                count = len(content)
                parts[f"{name}: {count} panes/sessions"] = deep_size(content, seen)
                parts[f"{name}: state object + per-member lists"] = deep_size(gs, seen)
            for name, v in parts.items():
                generic = name.split(": ")[0] + (": panes/sessions" if "panes/" in name
                                                  else (": " + name.split(": ")[1]
                                                        if ": " in name else ""))
                acc[generic] = acc.get(generic, 0) + v
            if median is not None:
                d = abs(sum(parts.values()) - median)
                if closest is None or d < closest[0]:
                    closest = (d, k, parts)
    return {
        "mean_bytes_per_key": {name: round(v / max(n, 1), 1) for name, v in acc.items()},
        "median_key": None if closest is None else {
            "key": closest[1], "total": sum(closest[2].values()), "parts": closest[2]},
    }


# -- (c) ours: the full dataflow on one worker -------------------------------------------------
def ours_flow(args) -> dict[str, Any]:
    spec = spec_without(load_spec(args.spec), args.skip)
    stats = FlowStats()
    rows = CountingSink()
    dead = CountingSink(lambda kv: type(kv[1]).__name__)
    flow = build_flow("bench_ours", CFG, spec, EventFileSource(args.events, batch_size=BATCH),
                      rows, dead, stats)
    seconds, cpu = _run_flow(flow, args.epoch)
    assert stats.balanced(), stats.summary()
    return {"events": stats.consumed, "seconds": seconds, "cpu_seconds": cpu, "rows": rows.n,
            "late": stats.late, "rejected": stats.rejected, "corrections": stats.corrections,
            "dead_letters_by_kind": dead.by_kind,
            "stats": {k: v for k, v in stats.as_dict().items()}}


# -- (a) baseline: built-in windowing operators in a dataflow ---------------------------------
def baseline_flow(args) -> dict[str, Any]:
    spec = load_spec(args.spec)
    skip = tuple(args.skip)
    consumed = Counter()
    results = CountingSink(lambda kv: kv[1][0])
    lates, rejected = CountingSink(), CountingSink()
    flow = build_baseline_flow(validated_source(args.events, spec), spec, consumed, results,
                               lates, rejected, DELAY_US, skip)
    seconds, cpu = _run_flow(flow, args.epoch)
    return {"events": consumed.n, "seconds": seconds, "cpu_seconds": cpu, "rows": results.n,
            "rows_by_feature": results.by_kind, "late": lates.n, "rejected": rejected.n,
            "features": [f for f in spec.feature_names if f not in skip]}


# -- (a') the built-in logic classes driven directly: step throughput and per-key state -------
def baseline_logic(args) -> dict[str, Any]:
    spec = load_spec(args.spec)
    skip = tuple(args.skip)
    bks = BuiltinKeyState(spec, DELAY_US, skip)
    n = 0
    busy = cpu = 0.0
    rss0 = rss()
    with gc_frozen():
        for items in iter_validated(validated_source(args.events, spec)):
            batch = [x for x in items if type(x) is Event]  # marks mean nothing to them
            t0, c0 = time.perf_counter(), time.thread_time()
            bks.on_batch(batch)
            busy += time.perf_counter() - t0
            cpu += time.thread_time() - c0
            n += len(batch)
        state = measure_builtin(bks, args.sample_keys) if args.measure else None
        rss_end = rss()
        t0, c0 = time.perf_counter(), time.thread_time()
        bks.on_eof()
        busy += time.perf_counter() - t0
        cpu += time.thread_time() - c0
    return {"events": n, "seconds": busy, "cpu_seconds": cpu, "rows": bks.emitted, "late": bks.late,
            "state": state, "rss_before": rss0, "rss_at_end_of_input": rss_end,
            "features": [f for f in spec.feature_names if f not in skip]}


def measure_builtin(bks, sample_keys: int) -> dict[str, Any]:
    """State per active key (a key with a live `_WindowLogic` in any feature's operator at
    the end of the input): deep size of its logics (clock, windower with its window
    metadata, one `_FoldWindowLogic` per open window, the reorder queue) plus its key.
    Shared code and config (functions, the windower's timedeltas) are paid for once.
    Deep sizes are taken over a seeded random sample of `sample_keys` active keys (Python
    walks ~150k objects/s; a full walk of the 24 h windows takes minutes); open-window
    counts cover every key."""
    t0 = time.perf_counter()
    # objects every key's logic references (callables, window config): paid once up front
    seen = shared_baseline([*((p.builder, p.folder, p.merger) for p in bks.plans),
                            *bks.clocks, *bks.windowers])
    keys = sorted(bks.keys())
    sample = set(random.Random(0).sample(keys, min(sample_keys, len(keys))))
    per_key: dict[str, int] = {}
    per_feature: dict[str, list[int]] = {}
    windows: dict[str, list[int]] = {}
    for p, logics in zip(bks.plans, bks.logics, strict=True):
        sizes = per_feature.setdefault(p.feature.name, [])
        for k, logic in logics.items():
            windows.setdefault(p.feature.name, []).append(len(logic.logics))
            if k not in sample:
                continue
            s = deep_size(k, seen) + _logic_size(logic, seen)
            per_key[k] = per_key.get(k, 0) + s
            sizes.append(s)
    pickled = []
    for k in per_key:
        pickled.append(len(pickle.dumps(
            [(k, logics[k].snapshot()) for logics in bks.logics if k in logics],
            protocol=pickle.HIGHEST_PROTOCOL)))
    return {
        "active_keys": len(keys),
        "sampled_keys": len(sample),
        "deep": distribution(list(per_key.values())),
        "pickled": distribution(pickled),
        "per_feature_deep": {f: distribution(v) for f, v in per_feature.items()},
        "open_windows_per_key": {f: distribution(v) for f, v in windows.items()},
        "measure_seconds": time.perf_counter() - t0,
    }


def _logic_size(logic, seen: set[int]) -> int:
    # the shared callables are reached through the logic: pre-mark them so they are free
    for obj in (logic.builder, logic.clock.now_getter, logic.clock.timestamp_getter,
                logic.clock.to_system):
        seen.add(id(obj))
    for fl in logic.logics.values():
        seen.add(id(fl.folder))
        seen.add(id(fl.merger))
    return deep_size(logic, seen)


CONTENDERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "ours_step": ours_step,
    "ours_flow": ours_flow,
    "baseline_flow": baseline_flow,
    "baseline_logic": baseline_logic,
}


def main(argv: list[str] | None = None,
         contenders: dict[str, Callable[[Any], dict[str, Any]]] = CONTENDERS) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("contender", choices=sorted(contenders))
    p.add_argument("--events", required=True)
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--skip", nargs="*", default=[], help="features the baseline leaves out")
    p.add_argument("--epoch", type=float, default=3600.0, help="bytewax epoch, seconds")
    p.add_argument("--measure", action="store_true", help="measure per-key state")
    p.add_argument("--shards", type=int, default=CFG.shards,
                   help="ours_step: engines the keys are routed over (the dataflow uses 32)")
    p.add_argument("--repo", help="feast_replay: Feast repo copy to write into")
    p.add_argument("--sample-keys", type=int, default=400,
                   help="baseline: keys whose state is walked (random sample)")
    args = p.parse_args(argv)
    result = contenders[args.contender](args)
    result["contender"] = args.contender
    result["feast_bytewax"] = feast_bytewax.__file__
    result["input"] = args.events
    result.update({k.lower(): v for k, v in vm_status().items()})
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(json.dumps({k: result[k] for k in ("contender", "events", "seconds")}),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
