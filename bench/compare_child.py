"""The measuring child of `bench.compare_revs`: one revision of plugin/, one measurement.

    PYTHONPATH=bench/out/src-SHA/plugin python -P bench/compare_child.py MODE ... --out J

Run as a file with `-P` (nothing prepended to sys.path) so that the only feast_bytewax on
the path is the exported revision on PYTHONPATH, and nothing of bench/ (which follows the
current layout) is imported. Modes:

- `generate`: write the events file (`write_events` of this revision);
- `step`: the feature step alone: `feast apply` on a fresh repo copy (untimed), the spec
  from its registry, the events read and validated once through this revision's source
  and validator, routed by crc32(user_id) % 32 into batches per source batch of 1000;
  timed: feeding them to 32 `ShardEngine`s, then finishing every engine at the input's
  newest event time (`finish(end)`, or a done `Mark` then `finish()` where the engine
  learns the end from its partitions' marks);
- `replay`: this revision's own CLI in-process on a fresh repo copy: `apply` (untimed), then
  `replay --events E --repo R --quiet`, timed around the CLI call (imports warmed first).

The revisions differ in module layout and signatures, so every name is looked up through
`Api` (importlib, at run time), which tries the known locations in order and fails with one
message listing what it tried. Writes a JSON result to `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import inspect
import io
import json
import os
import re
import resource
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import feast_bytewax  # whichever revision PYTHONPATH puts first (main() checks which)

# name -> where it has lived, newest layout first ("module:attribute")
CANDIDATES: dict[str, tuple[str, ...]] = {
    "ShardEngine": ("feast_bytewax.engine.shard:ShardEngine", "feast_bytewax.engine:ShardEngine"),
    "FlowConfig": ("feast_bytewax.config:FlowConfig",),
    "engine_config": ("feast_bytewax.dataflow.flow:engine_config",
                      "feast_bytewax.config:FlowConfig.engine_config"),
    "EventFileSource": ("feast_bytewax.ingest.files:EventFileSource",
                        "feast_bytewax.sources:EventFileSource"),
    "validate_item": ("feast_bytewax.ingest.validate:validate_item",
                      "feast_bytewax.validate:validate_item"),
    "load_spec": ("feast_bytewax.features.spec:load_flow_spec",
                  "feast_bytewax.spec:load_spec"),
    "write_events": ("feast_bytewax.datagen.generate:write_events",
                     "feast_bytewax.generate:write_events"),
    "cli_main": ("feast_bytewax.cli.main:main", "feast_bytewax.cli:main"),
    "Mark": ("feast_bytewax.records:Mark",),
    "run_replay": ("feast_bytewax.dataflow.replay:run_replay", "feast_bytewax.runner:run_replay"),
}
SHARDS = 32
BATCH = 1000
SUMMARY = re.compile(r"^consumed=\d+ .*$", re.M)  # the run's accounting line
COUNT = re.compile(r"\b(\w+)=(\d+)\b")
SECONDS = re.compile(r" in ([0-9.]+)s\b")


class ApiError(RuntimeError):
    pass


class Api:
    """The names this child needs, resolved in the revision on sys.path."""

    def __init__(self) -> None:
        self.root = Path(feast_bytewax.__file__).resolve().parent
        self.found: dict[str, str] = {}
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in CANDIDATES:
            raise AttributeError(name)
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str) -> Any:
        tried = []
        for where in CANDIDATES[name]:
            module, _, attr = where.partition(":")
            try:
                obj: Any = importlib.import_module(module)
            except ImportError as e:
                tried.append(f"{where} ({type(e).__name__}: {e})")
                continue
            try:
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                tried.append(f"{where} (no attribute {attr})")
                continue
            self.found[name] = where
            return obj
        raise ApiError(f"feast_bytewax at {self.root} has no {name}; tried: " + "; ".join(tried)
                       + ". Add its new location to CANDIDATES in bench/compare_child.py.")

    @property
    def layout(self) -> str:
        where = self.found.get("ShardEngine") or CANDIDATES["ShardEngine"][0]
        return "subpackages" if where.startswith("feast_bytewax.engine.shard") else "flat"


def need(obj: Any, *attrs: str, what: str) -> None:
    missing = [a for a in attrs if not hasattr(obj, a)]
    if missing:
        raise ApiError(f"{what} has no {', '.join(missing)} (API changed: adapt "
                       "bench/compare_child.py)")


def first_attr(obj: Any, *names: str) -> Any:
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    raise ApiError(f"{type(obj).__name__} has none of {names}")


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextlib.contextmanager
def gc_tuned():
    """The runner's GC settings (both revisions: freeze, threshold 50000), for the step."""
    gc.collect()
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def quiet() -> None:
    warnings.filterwarnings("ignore", message="Stream feature views are experimental")


def cli(api: Api, argv: list[str]) -> tuple[int, str, float]:
    """The revision's CLI entry point in-process: (exit code, its stdout, seconds)."""
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        try:
            rc = api.cli_main(argv)
        except SystemExit as e:  # a CLI that exits instead of returning
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    seconds = time.perf_counter() - t0
    return int(rc or 0), out.getvalue(), seconds


def apply(api: Api, repo: Path) -> float:
    rc, text, seconds = cli(api, ["apply", "--repo", str(repo)])
    if rc != 0:
        raise ApiError(f"`apply --repo {repo}` exited {rc}: {text[-2000:]}")
    return seconds


def engine_knobs(api: Api) -> tuple[Any, dict[str, Any]]:
    cfg = api.FlowConfig()
    econf = api.engine_config(cfg)  # a function of cfg, or the unbound method
    need(econf, "watermark_delay", "allowed_lateness", what="EngineConfig")
    max_future_s = first_attr(cfg, "max_future", "max_future_s")
    knobs = {"watermark_delay_us": econf.watermark_delay,
             "allowed_lateness_us": econf.allowed_lateness,
             "max_future_s": max_future_s, "shards": SHARDS, "batch": BATCH,
             "shards_default": cfg.shards, "batch_size_default": cfg.batch_size}
    return econf, knobs


def entity_spec(api: Api, store: Any) -> tuple[Any, Any]:
    """(the user entity's EngineSpec, the event schema to validate with or None)."""
    spec = api.load_spec(store)
    if hasattr(spec, "entities"):  # a FlowSpec: one EngineSpec per join key
        by_key = {e.join_key: e for e in spec.entities}
        ent = by_key.get("user_id") or (spec.entities[0] if len(spec.entities) == 1 else None)
        if ent is None:
            raise ApiError(f"no user_id entity among {sorted(by_key)}")
        schema = getattr(spec, "schema", None)
        return ent, (schema if schema is not None and getattr(schema, "extra", ()) else None)
    return spec, None


def read_validated(api: Api, events: str, max_future_s: float, schema: Any) -> list:
    src = api.EventFileSource(events, batch_size=BATCH)
    need(src, "list_parts", "build_part", what="EventFileSource")
    validate = api.validate_item
    with_schema = "schema" in inspect.signature(validate).parameters
    max_future_us = round(max_future_s * 1_000_000)
    batches, rejected = [], 0
    for name in src.list_parts():
        part = src.build_part("compare", name, None)
        try:
            while True:
                try:
                    items = part.next_batch()
                except StopIteration:
                    break
                now = time.time_ns() // 1000
                if with_schema:
                    out = [validate(p, o, now, max_future_us, schema) for p, o in items]
                else:
                    out = [validate(p, o, now, max_future_us) for p, o in items]
                good = [e for e in out if hasattr(e, "event_timestamp")]
                rejected += len(out) - len(good)
                if good:
                    batches.append(good)
        finally:
            part.close()
    if rejected:
        raise ApiError(f"{rejected} events rejected by the validator (generated input: none "
                       "expected)")
    return batches


def mode_generate(args) -> dict[str, Any]:
    api = Api()
    info = api.write_events(args.events, args.count, args.users, seed=args.seed)
    return {"layout": api.layout, "api": api.found, "feast_bytewax": str(api.root),
            **{k: v for k, v in info.items() if isinstance(v, int | float | str)}}


def finisher(api: Api, engine: Any):
    """How every engine is closed at the input's newest event time `end` (as the dataflow
    closes every shard at the same final watermark, whatever keys it holds)."""
    if inspect.signature(engine.finish).parameters:
        def finish_end(eng, end):
            """finish(end)"""
            return eng.finish(end)

        return finish_end
    mark = api.Mark  # the engine learns the end from its partitions' marks

    def finish_mark(eng, end):
        """a done Mark(0, end), then finish()"""
        return eng.ingest([mark(0, end, "done")]) + eng.finish()

    return finish_mark


def mode_step(args) -> dict[str, Any]:
    quiet()
    api = Api()
    from feast import FeatureStore

    repo = Path(args.repo).resolve()
    os.chdir(repo)
    apply_s = apply(api, repo)
    spec, schema = entity_spec(api, FeatureStore(repo_path=str(repo)))
    econf, knobs = engine_knobs(api)
    t0 = time.perf_counter()
    batches = read_validated(api, str(Path(args.events).resolve()), knobs["max_future_s"],
                             schema)
    read_s = time.perf_counter() - t0
    work = []  # per source batch: the part of each shard (routing is not timed)
    for batch in batches:
        parts: list[list] = [[] for _ in range(SHARDS)]
        for e in batch:
            parts[zlib.crc32(e.user_id.encode("utf-8")) % SHARDS].append(e)
        work.append(parts)
    n = sum(len(b) for b in batches)
    del batches
    end = max(e.event_timestamp for parts in work for part in parts for e in part)
    engines = [api.ShardEngine(spec, econf) for _ in range(SHARDS)]
    need(engines[0], "ingest", "finish", what="ShardEngine")
    finish = finisher(api, engines[0])
    rows = late = 0
    with gc_tuned():
        t0, c0 = time.perf_counter(), time.thread_time()
        for parts in work:
            for eng, part in zip(engines, parts, strict=True):
                if part:
                    for r in eng.ingest(part):
                        if type(r).__name__ == "FeatureRow":
                            rows += 1
                        else:
                            late += 1
        for eng in engines:
            for r in finish(eng, end):
                if type(r).__name__ == "FeatureRow":
                    rows += 1
                else:
                    late += 1
        seconds, cpu = time.perf_counter() - t0, time.thread_time() - c0
    counts = [getattr(e, "counts", {}) for e in engines]
    return {"layout": api.layout, "api": api.found, "feast_bytewax": str(api.root),
            "events": n, "seconds": seconds, "cpu_seconds": cpu, "rows": rows, "late": late,
            "corrections": sum(c.get("corrections", 0) for c in counts),
            "duplicates": sum(c.get("duplicates", 0) for c in counts),
            "finish": finish.__doc__, "read_validate_seconds": read_s, "apply_seconds": apply_s,
            "features": list(spec.feature_names), "knobs": knobs}


def mode_replay(args) -> dict[str, Any]:
    quiet()
    api = Api()
    # warm the imports the command would otherwise pay for inside the timed call
    import bytewax.run  # noqa: F401
    import feast  # noqa: F401

    api.run_replay  # noqa: B018  (imports the revision's replay runner and its deps)
    _, knobs = engine_knobs(api)
    repo = Path(args.repo).resolve()
    os.chdir(repo)  # relative store paths land in the copy
    apply_s = apply(api, repo)
    c0 = cpu_s()
    rc, text, seconds = cli(api, ["replay", "--events", str(Path(args.events).resolve()),
                                  "--repo", str(repo), "--quiet"])
    cpu = cpu_s() - c0
    print(text, file=sys.stderr)
    if rc != 0:
        raise ApiError(f"`replay` exited {rc}: {text[-2000:]}")
    m = SUMMARY.search(text)
    if m is None:
        raise ApiError(f"no `consumed=...` accounting line in the replay output: "
                       f"{text[-2000:]!r}")
    c = {k: int(v) for k, v in COUNT.findall(m.group(0))}
    missing = {"consumed", "rows", "pushed_offline", "pushed_online"} - set(c)
    if missing:
        raise ApiError(f"the replay's accounting line lacks {sorted(missing)}: {m.group(0)}")
    s = SECONDS.search(m.group(0))
    return {"layout": api.layout, "api": api.found, "feast_bytewax": str(api.root),
            "events": c["consumed"], "seconds": seconds, "cpu_seconds": cpu,
            "flow_seconds": float(s.group(1)) if s else None,
            "rows": c["rows"], "rows_offline": c["pushed_offline"],
            "rows_online": c["pushed_online"],
            **{k: c[k] for k in ("processed", "late", "rejected", "duplicates", "corrections")
               if k in c},
            "apply_seconds": apply_s, "knobs": knobs, "summary": m.group(0)}


MODES = {"generate": mode_generate, "step": mode_step, "replay": mode_replay}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--events", required=True, help="the events file (generate: written)")
    p.add_argument("--out", required=True, help="JSON result")
    p.add_argument("--repo", help="step/replay: a fresh copy of this revision's repo")
    p.add_argument("--expect", help="fail unless feast_bytewax is imported from here")
    p.add_argument("--count", type=int, default=300_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.mode != "generate" and not args.repo:
        p.error(f"{args.mode} needs --repo")
    got = Path(feast_bytewax.__file__).resolve()
    if args.expect and not got.is_relative_to(Path(args.expect).resolve()):
        raise SystemExit(f"feast_bytewax imported from {got}, not from {args.expect}")
    load1 = os.getloadavg()[0]
    try:
        result = MODES[args.mode](args)
    except ApiError as e:
        raise SystemExit(f"compare_child {args.mode}: {e}") from None
    result.update(mode=args.mode, load1_at_start=load1, load1_at_end=os.getloadavg()[0],
                  vmhwm_kb=_vmhwm_kb())
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


def _vmhwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
