"""Issue 10 (stream-table joins): what the temporal join and the online lookup cost, and
what a profile costs in state.

    .venv/bin/python -m bench.joins_bench [--events 300000] [--users 5000] [--repeats 3]
        [--latency 0.005] [--profile-users 10000]

Measures the working tree (run it from a clean worktree; the figures name its commit). One
events file (24 h ending an hour ago), the profile versions of the same users and time
(`generate_profiles`) and the category risks (`generate_category_risk`) feed repo copies
(feature_store.yaml + feast_repo/ with data/profiles.parquet and data/category_risk.parquet;
`apply` and `materialize` of category_risk untimed) that differ only in what follows:

- `none`: the two enriched views (`user_credit_features`: join of user_profile + derive;
  `user_risk_features`: lookup of category_risk + derive) removed (5 features, no join);
- `plain`: both views kept with the same names and windows but no join, lookup or derive
  (max of `amount` over 24 h, count of purchases over 1 h): 7 features, what the
  aggregations alone cost, so joined/plain is the enrichment itself;
- `join`: the shipped repo without `user_risk_features` (join, no lookup);
- `joined`: the shipped repo (join + lookup), SQLite online store;
- `slow`: `joined` on `tests.support.slow_store.SlowSqliteOnlineStore` (every online read
  sleeps `--latency`), default lookup settings (ttl 60 s: a category is read about once);
- `slow-nocache`: `slow` with `--lookup-ttl 0.001`: every batch reads (the worst case).

Two measures, each a fresh child (`python -m bench.joins_bench child ...`), alternating the
variants within each repeat: **replay** (the CLI in-process, timed around the call, as
`bench.compare_child`), and **step** (32 `ShardEngine`s driven directly over the events and
the profile versions read as the flow reads them: one `EventTimeSource` over the events and
the table, the table's partition leading, versions routed by key; timed: `ingest` and
`finish`; no lookup in the step: the looked-up column is absent, so the risk filter matches
nothing). Then **profile state**: one engine of the shipped spec fed `--profile-users` users
x 3 versions (through `TableValidator`, no events, so nothing is pruned): pickled
`JoinState` and snapshot growth per key, and the same after pruning to the one version a key
keeps once its older ones are behind the lateness horizon.

Why: the issue's targets: the join costs <= 25%, lookups against a 5 ms store keep >= 50% of
the no-lookup rate, and a profile's state is small. Prints markdown; writes OUT/joins.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.run_bench import BENCH, ROOT, _git, fmt_int, machine_busy_s, others_cores, uptime

VARIANTS = ("none", "plain", "join", "joined", "slow", "slow-nocache")
STEP_VARIANTS = ("none", "plain", "joined")
SLOW_TYPE = "tests.support.slow_store.SlowSqliteOnlineStore"

PLAIN = '''
user_credit_features = StreamFeatureView(
    name="user_credit_features", source=user_features_push, entities=[user],
    ttl=timedelta(0), online=True, offline=True, timestamp_field="event_timestamp",
    tags={"feast_bytewax.filter": "event_type=purchase"},
    schema=[Field(name="max_amount_to_credit_24h", dtype=Float64)],
    aggregations=[Aggregation(column="amount", function="max", time_window=timedelta(hours=24),
                              slide_interval=MINUTE, name="max_amount_to_credit_24h")],
)

user_risk_features = StreamFeatureView(
    name="user_risk_features", source=user_features_push, entities=[user],
    ttl=timedelta(0), online=True, offline=True, timestamp_field="event_timestamp",
    tags={"feast_bytewax.filter": "event_type=purchase"},
    schema=[Field(name="risky_purchase_count_1h", dtype=Int64)],
    aggregations=[Aggregation(column="event_id", function="count", time_window=timedelta(hours=1),
                              slide_interval=MINUTE, name="risky_purchase_count_1h")],
)
'''


# -- parent: data and repo variants -----------------------------------------------------------
def make_data(out: Path, n_events: int, users: int, seed: int) -> dict[str, Any]:
    from feast_bytewax.datagen.generate import write_events
    from feast_bytewax.datagen.profiles import (
        generate_category_risk,
        generate_profiles,
        write_category_risk,
        write_profiles,
    )

    start = (datetime.now(UTC) - timedelta(hours=25)).replace(minute=0, second=0,
                                                                microsecond=0)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    info = write_events(out / "events.parquet", n_events, users, seed=seed, start=start)
    profiles = generate_profiles(users, start, timedelta(hours=24), seed)
    write_profiles(data / "profiles.parquet", profiles)
    write_category_risk(data / "category_risk.parquet",
                        generate_category_risk(seed, as_of=start - timedelta(days=1)))
    return {"events": info["rows"], "users": info["users"], "start": start.isoformat(),
            "profile_versions": profiles.num_rows}


def make_repo(out: Path, variant: str, latency: float) -> Path:
    repo = out / f"repo_{variant}"
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    shutil.copytree(ROOT / "feast_repo", repo / "feast_repo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(out / "data", repo / "data")
    yaml = (ROOT / "feature_store.yaml").read_text()
    if variant.startswith("slow"):
        yaml = yaml.replace("  type: sqlite\n",
                            f"  type: {SLOW_TYPE}\n  read_latency_s: {latency}\n")
        assert SLOW_TYPE in yaml, "feature_store.yaml: no `type: sqlite` online store"
    (repo / "feature_store.yaml").write_text(yaml)
    features = repo / "feast_repo" / "features.py"
    text = features.read_text()
    credit = text.index("user_credit_features = StreamFeatureView(")
    risk = text.index("user_risk_features = StreamFeatureView(")
    tail = text[risk + len("user_risk_features = StreamFeatureView("):]
    assert credit < risk and "StreamFeatureView(" not in tail, "features.py: layout changed"
    services = repo / "feast_repo" / "services.py"
    if variant == "none":
        features.write_text(text[:credit])
        services.write_text("".join(
            line for line in services.read_text().splitlines(keepends=True)
            if "user_credit_features" not in line and "user_risk_features" not in line))
    elif variant == "plain":
        features.write_text(text[:credit] + PLAIN)
    elif variant == "join":
        features.write_text(text[:risk])
        services.write_text("".join(
            line for line in services.read_text().splitlines(keepends=True)
            if "user_risk_features" not in line))
    return repo


def run_child(mode: str, variant: str, repo: Path, out: Path, events: Path,
              timeout: float, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    res = out / f"child_{mode}_{variant}.json"
    res.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'plugin'}:{ROOT}")
    cmd = [sys.executable, "-m", "bench.joins_bench", "child", mode, "--repo", str(repo),
           "--events", str(events), "--result", str(res), *extra]
    t0, busy0 = time.perf_counter(), machine_busy_s()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not res.exists():
        raise SystemExit(f"{mode} {variant} failed (exit {proc.returncode}):\n"
                         f"{proc.stdout[-1500:]}{proc.stderr[-3000:]}")
    r = json.loads(res.read_text())
    r["others_cores"] = others_cores(busy0, machine_busy_s(), r["child_cpu"], wall)
    r["events_per_s"] = r["events"] / r["seconds"]
    r["events_per_cpu_s"] = r["events"] / r["cpu_seconds"]
    return r


# -- children ---------------------------------------------------------------------------------
def compile_repo(repo: Path):
    from feast.repo_operations import parse_repo

    from feast_bytewax.dataflow.repo import fresh_definitions, quiet_feast_warnings
    from feast_bytewax.features.spec import compile_flow

    quiet_feast_warnings()
    with fresh_definitions(repo):
        c = parse_repo(repo)
        return compile_flow(c.stream_feature_views, c.entities, c.data_sources,
                            c.feature_views)


def child_replay(args) -> dict[str, Any]:
    from bench.compare_child import COUNT, SUMMARY, Api, apply, cli, cpu_s, quiet
    from feast_bytewax.dataflow.repo import open_store

    quiet()
    api = Api()
    import bytewax.run  # noqa: F401  (warm the imports the timed call would pay for)

    api.run_replay  # noqa: B018
    repo = Path(args.repo).resolve()
    os.chdir(repo)
    apply(api, repo)
    open_store(repo).materialize(datetime.now(UTC) - timedelta(days=4), datetime.now(UTC),
                                 feature_views=["category_risk"])
    c0 = cpu_s()
    rc, text, seconds = cli(api, ["replay", "--events", str(Path(args.events).resolve()),
                                  "--repo", str(repo), "--quiet",
                                  *(("--lookup-ttl", args.lookup_ttl) if args.lookup_ttl
                                    else ())])
    cpu = cpu_s() - c0
    if rc != 0:
        raise SystemExit(f"replay exited {rc}: {text[-2000:]}")
    m = SUMMARY.search(text)
    c = {k: int(v) for k, v in COUNT.findall(m.group(0))}
    look = re.search(r"lookups: .*", text)
    return {"events": c["consumed"], "seconds": seconds, "cpu_seconds": cpu,
            "rows": c["rows"], "corrections": c.get("corrections"), "late": c.get("late"),
            "lookups": look.group(0) if look else None}


def child_step(args) -> dict[str, Any]:
    from bench.common import CFG
    from feast_bytewax.dataflow.flow import _timed_source, engine_config, partition_policy
    from feast_bytewax.dataflow.runtime import gc_frozen
    from feast_bytewax.engine.routing import shard_of
    from feast_bytewax.engine.shard import ShardEngine
    from feast_bytewax.ingest.files import EventFileSource
    from feast_bytewax.records import Event, FeatureRow, Mark, TableVersion

    repo = Path(args.repo).resolve()
    flow = compile_repo(repo)
    spec = next(e for e in flow.entities if e.join_key == "user_id")
    tables = {t.view: EventFileSource(str(repo / "data" / "profiles.parquet"), batch_size=1000,
                                      columns=t.record_columns)
              for t in flow.tables}  # as dataflow.replay and dataflow.joins build them
    src = _timed_source(EventFileSource(args.events, batch_size=1000,
                                        columns=flow.schema.columns), tables, flow,
                        partition_policy(CFG, flow, live=False))
    names = src.partitions()
    order = [p for p in names if p in src.leading] + [p for p in names if p not in src.leading]
    batches = []
    for name in order:  # read and validated untimed, leading (table) partitions first
        part = src.build_part("bench", name, None)
        while True:
            try:
                items = part.next_batch()
            except StopIteration:
                break
            if items:
                batches.append(items)
        part.close()
    engines = [ShardEngine(spec, engine_config(CFG, len(names))) for _ in range(32)]
    routed = []
    n = versions = 0
    for batch in batches:
        parts: list[list] = [[] for _ in engines]
        for x in batch:
            tx = type(x)
            if tx is Mark:
                for p in parts:
                    p.append(x)
            elif tx is TableVersion:
                parts[shard_of(x.key, 32)].append(x)
                versions += 1
            elif tx is Event:
                parts[shard_of(x.user_id, 32)].append(x)
                n += 1
        routed.append(parts)
    rows = 0
    with gc_frozen():
        t0, c0 = time.perf_counter(), time.thread_time()
        for parts in routed:
            for eng, part in zip(engines, parts, strict=True):
                if part:
                    rows += sum(1 for r in eng.ingest(part) if type(r) is FeatureRow)
        for eng in engines:
            rows += sum(1 for r in eng.finish() if type(r) is FeatureRow)
        seconds, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return {"events": n, "versions": versions, "seconds": seconds, "cpu_seconds": cpu,
            "rows": rows, "features": list(spec.feature_names),
            "corrections": sum(e.counts["corrections"] for e in engines)}


def child_profiles(args) -> dict[str, Any]:
    from bench.common import CFG
    from feast_bytewax.dataflow.flow import engine_config
    from feast_bytewax.engine.shard import ShardEngine
    from feast_bytewax.ingest.tables import TableValidator
    from feast_bytewax.records import TableVersion, iso_us

    flow = compile_repo(Path(args.repo).resolve())
    spec = next(e for e in flow.entities if e.join_key == "user_id")
    table = flow.table("user_profile")
    val = TableValidator(table, 300_000_000)
    now = int(time.time() * 1e6)
    t0 = now - 30 * 86_400_000_000
    segments = ("new", "regular", "vip")
    eng = ShardEngine(spec, engine_config(CFG, 2))
    empty = len(eng.snapshot())
    users = args.profile_users
    batch = []
    for v in range(3):
        for i in range(users):
            rec = {"user_id": f"u{i:06d}", "account_age_days": 10 + v * 30 + i % 7,
                   "credit_score": 300 + (i * 37 + v * 11) % 551, "segment": segments[v],
                   "updated_at": iso_us(t0 + v * 10 * 86_400_000_000 + i * 1000)}
            tv = val.validate(rec, f"bench:{v}:{i}", now)
            assert type(tv) is TableVersion, tv
            batch.append(tv)
            if len(batch) == 1000:
                eng.ingest(batch)
                batch = []
    if batch:
        eng.ingest(batch)
    kept = len(eng.joins)
    joins_b = len(pickle.dumps(eng.joins, protocol=pickle.HIGHEST_PROTOCOL))
    snap_b = len(eng.snapshot()) - empty
    for view in eng.joins.versions.values():
        for key in list(view.by_key):
            view.prune(key, now)
    pruned_b = len(pickle.dumps(eng.joins, protocol=pickle.HIGHEST_PROTOCOL))
    return {"users": users, "versions_kept": kept, "versions_counted":
            eng.counts["versions"], "joinstate_pickled": joins_b, "snapshot_growth": snap_b,
            "per_key": joins_b / users, "snapshot_per_key": snap_b / users,
            "pruned_versions_kept": len(eng.joins), "pruned_per_key": pruned_b / users,
            "events": 0, "seconds": 1, "cpu_seconds": 1}


def child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("replay", "step", "profiles"))
    p.add_argument("--repo", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--profile-users", type=int, default=10_000)
    p.add_argument("--lookup-ttl", help="replay: passed on as --lookup-ttl")
    args = p.parse_args(argv)
    fn = {"replay": child_replay, "step": child_step, "profiles": child_profiles}[args.mode]
    r = fn(args)
    ru = __import__("resource").getrusage(0)
    r["child_cpu"] = ru.ru_utime + ru.ru_stime
    Path(args.result).write_text(json.dumps(r, default=str))
    return 0


# -- parent ------------------------------------------------------------------------------------
def cell(runs: list[dict], key: str = "events_per_s") -> tuple[float, str]:
    vals = [r[key] for r in runs]
    m = statistics.median(vals)
    return m, (f"{fmt_int(m)} ({fmt_int(min(vals))} - {fmt_int(max(vals))}, "
               f"{(max(vals) - min(vals)) / m:.0%})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency", type=float, default=0.005)
    p.add_argument("--profile-users", type=int, default=10_000)
    p.add_argument("--only", choices=("replay", "step", "profiles"), action="append")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", type=Path, default=BENCH / "out" / "joins")
    args = p.parse_args(argv)
    only = set(args.only or ("replay", "step", "profiles"))
    out = args.out.resolve()
    t_all, load0 = time.perf_counter(), uptime()
    dirty = _git("status", "--porcelain", "--", "plugin", "feast_repo", "feature_store.yaml")
    head = _git("log", "-1", "--format=%h", "--", "plugin")
    info = make_data(out, args.events, args.users, args.seed)
    events = out / "events.parquet"
    repos = {v: make_repo(out, v, args.latency) for v in VARIANTS}
    print(f"plugin/ of {head}{' (DIRTY)' if dirty else ''}; {info}", flush=True)
    res: dict[str, dict[str, list]] = {"replay": {v: [] for v in VARIANTS},
                                       "step": {v: [] for v in STEP_VARIANTS}}
    for i in range(args.repeats):
        for mode, variants in (("step", STEP_VARIANTS), ("replay", VARIANTS)):
            if mode not in only:
                continue
            for v in variants:
                extra = ("--lookup-ttl", "0.001") if v == "slow-nocache" else ()
                if mode == "replay":
                    repos[v] = make_repo(out, v, args.latency)  # fresh stores every run
                r = run_child(mode, v, repos[v], out, events, args.timeout, extra)
                res[mode][v].append(r)
                print(f"  {i + 1}/{args.repeats} {mode:6s} {v:12s} {r['events_per_s']:,.0f}"
                      f" events/s ({r['events_per_cpu_s']:,.0f}/CPU-s) rows {r['rows']:,} "
                      f"others {r['others_cores']:.2f} versions {r.get('versions')} "
                      f"{r.get('lookups') or ''}", flush=True)
    prof = (run_child("profiles", "joined", repos["joined"], out, events, args.timeout,
                      ("--profile-users", str(args.profile_users)))
            if "profiles" in only else None)
    lines = [f"plugin/ of {head}{' (DIRTY)' if dirty else ''}; load average before: {load0}; "
             f"after: {uptime()}; {time.perf_counter() - t_all:.0f} s.",
             f"Input: {info['events']:,} events, {info['users']:,} users, 24 h from "
             f"{info['start']}; {info['profile_versions']:,} profile versions.", ""]
    for mode, ref in (("step", "none"), ("replay", "none")):
        if mode not in only:
            continue
        lines += [f"| {mode} variant | events/s per run | median (range) | median "
                  "events/CPU-s | rows | vs none | vs plain | others (cores) | lookups |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
        med = {v: cell(runs)[0] for v, runs in res[mode].items()}
        for v, runs in res[mode].items():
            m, text = cell(runs)
            cpu, _ = cell(runs, "events_per_cpu_s")
            lines.append(
                f"| {v} | {', '.join(fmt_int(r['events_per_s']) for r in runs)} | {text} | "
                f"{fmt_int(cpu)} | {', '.join(sorted({fmt_int(r['rows']) for r in runs}))} | "
                f"{m / med[ref]:.3f} | {m / med['plain']:.3f} | "
                f"{', '.join(format(r['others_cores'], '.2f') for r in runs)} | "
                f"{runs[0].get('lookups') or ''} |")
        lines.append("")
    if prof:
        lines.append(
            f"Profile state: {prof['users']:,} users x 3 versions ({prof['versions_kept']:,} "
            f"kept): JoinState pickled {prof['joinstate_pickled']:,} B = "
            f"**{prof['per_key']:.0f} B per key** (snapshot growth "
            f"{prof['snapshot_per_key']:.0f} B per key); pruned to "
            f"{prof['pruned_versions_kept']:,} versions (the latest per key): "
            f"{prof['pruned_per_key']:.0f} B per key.")
    text = "\n".join(lines)
    print(text)
    out.joinpath("joins.json").write_text(json.dumps(
        {"info": info, "results": res, "profiles": prof, "markdown": text}, indent=1,
        default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
