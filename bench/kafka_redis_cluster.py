"""The live flow's settings for bench/kafka_redis_bench.py, and its `cluster` phase:
events/s with 2 processes vs 1 on this machine (issue 11).

Settings: the bench passes LiveConfig nothing that tunes the flow unless asked
(`live_overrides`: ``--delay``, ``--flush``, ``--batch-size``, ``--epoch``, ``--live
NAME=VALUE``), so every phase runs the product's defaults (watermark delay from the repo's
KafkaSource, flush interval, online flush interval, online rows mode ...) of the revision
measured; `live_settings` records what they resolved to.

Cluster phase: one topic (``--partitions``, 8) pre-produced with ``--cluster-events``
events, then read to its end by `python -m bytewax.run bench.cluster_live_flow:flow` (=
`dataflows.live`, configured by FEAST_BYTEWAX_* variables, ``FEAST_BYTEWAX_STOP_AT_END``,
recovery off, ``-s`` = the epoch) as 1 process, then as 2 processes of one cluster (``-i
0/1 -a HOST:P0;HOST:P1``), each run into a fresh copy of the applied repo and an emptied
Redis. events/s = the steady rate (10% -> 90% of the events read, the sum of every
process's ``feast_bytewax_consumed_total`` polled every 0.1 s) as in the max phase; also
events / (last exit - last process ready), the start-up left out as bench/cluster_bench.py
does. Both runs' offline rows are checked against the reference (bench.kafka_redis_checks).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = ("watermark_delay", "allowed_lateness", "flush_interval", "flush_rows",
            "online_flush_interval", "online_rows", "batch_size", "epoch_interval", "shards",
            "idle_timeout", "lookup_timeout")


def live_overrides(args) -> dict[str, str | float | int]:
    """LiveConfig fields the command line sets (nothing by default: the product's)."""
    out: dict[str, str | float | int] = {}
    for field, value in (("watermark_delay", args.delay), ("flush_interval", args.flush),
                         ("batch_size", args.batch_size), ("epoch_interval", args.epoch)):
        if value is not None:
            out[field] = value
    for item in args.live or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--live {item!r}: expected NAME=VALUE")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def live_settings(cfg) -> dict:
    """The settings a run resolved to (the fields this revision has)."""
    return {k: getattr(cfg, k) for k in SETTINGS if k in type(cfg).model_fields}


def _consumed(port: int) -> float | None:
    from tests.e2e.checks import metric

    return metric(port, "feast_bytewax_consumed_total")


def run_cluster(processes: int, source: str, repo: Path, n: int, args, cwd: Path) -> dict:
    """`processes` processes of one Bytewax cluster read `source` to its end into `repo`."""
    from feast_bytewax.config import LiveConfig
    from tests.e2e.checks import free_port

    overrides = live_overrides(args)
    epoch = float(overrides.get("epoch_interval",
                                LiveConfig.model_fields["epoch_interval"].default))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEAST_BYTEWAX_")}
    env.update({f"FEAST_BYTEWAX_{k.upper()}": str(v) for k, v in overrides.items()})
    env.update(FEAST_BYTEWAX_SOURCE=source, FEAST_BYTEWAX_REPO=str(repo),
               FEAST_BYTEWAX_STOP_AT_END="true", FEAST_BYTEWAX_IDLE_EXIT=str(args.idle_exit),
               FEAST_BYTEWAX_METRICS_HOST="127.0.0.1")
    for item in args.kafka_option:
        key, _, value = item.partition("=")
        env[f"FEAST_BYTEWAX_KAFKA_OPT_{key.strip().upper().replace('.', '_')}"] = value
    probe = repo.parent / f"probe-p{processes}"
    env["KAFKA_REDIS_PROBE"] = str(probe)
    ports = [free_port() for _ in range(processes)]
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    base = [sys.executable, "-m", "bytewax.run", "bench.cluster_live_flow:flow", "-s",
            str(max(1, round(epoch)))]
    procs, errs = [], []
    t0 = time.time()
    for i in range(processes):
        err = open(repo.parent / f"cluster-p{processes}-{i}.stderr", "w+")  # noqa: SIM115
        errs.append(err)
        cmd = base + (["-i", str(i), "-a", addresses] if processes > 1 else [])
        procs.append(subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err,
            env={**env, "FEAST_BYTEWAX_METRICS_PORT": str(ports[i]),
                 "FEAST_BYTEWAX_DEAD_LETTERS": str(repo / "data" / f"dead-{i}.jsonl")}))
    samples: list[tuple[float, float]] = []  # (time, records read by all processes)
    last = [0.0] * processes
    cpu: dict[int, float] = {}
    codes: dict[int, int] = {}
    deadline = t0 + args.idle_exit + 600
    try:
        while len(codes) < processes:
            for i, p in enumerate(procs):
                if i in codes:
                    continue
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:  # exited: its final count is in its probe
                    codes[i] = p.returncode = os.waitstatus_to_exitcode(status)
                    cpu[i] = usage.ru_utime + usage.ru_stime
                    with contextlib.suppress(OSError, ValueError):
                        last[i] = json.loads(Path(f"{probe}.{p.pid}").read_text())["consumed"]
                else:
                    last[i] = _consumed(ports[i]) or last[i]
            samples.append((time.time(), sum(last)))
            if time.time() > deadline:
                raise RuntimeError(f"cluster p{processes}: still running after 600 s")
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    stderr = []
    for e in errs:
        e.seek(0)
        stderr.append(e.read())
        e.close()
    failed = {i: c for i, c in codes.items() if c != 0}
    if failed:
        raise RuntimeError(f"cluster p{processes}: exit codes {failed}: "
                           f"{stderr[min(failed)][-3000:]}")
    stamps = [json.loads(f.read_text()) for f in sorted(probe.parent.glob(probe.name + ".*"))]
    consumed = sum(s["consumed"] for s in stamps)  # where read; processed where keyed
    done = sum(s["processed"] + s["late"] + s["rejected"] for s in stamps)
    if len(stamps) != processes or consumed != n or done != n:
        raise RuntimeError(f"cluster p{processes}: read {consumed} of {n} records "
                           f"(probes {stamps}): {stderr[0][-2000:]}")
    import feast_bytewax

    code = {(s["feast_bytewax"], s["dataflows"]) for s in stamps}
    if {c[0] for c in code} != {feast_bytewax.__file__}:
        raise RuntimeError(f"cluster p{processes} ran {code}, not {feast_bytewax.__file__}")
    run_s = max(s["exit"] for s in stamps) - max(s["ready"] for s in stamps)
    first = next((t for t, c in samples if c > 0), None)
    a = next((s for s in samples if s[1] >= 0.1 * n), None)
    b = next((s for s in samples if s[1] >= 0.9 * n), None)
    steady = (b[1] - a[1]) / (b[0] - a[0]) if a and b and b[0] > a[0] else None
    end = max(s["exit"] for s in stamps)
    return {
        "processes": processes, "events": n, "consumed_per_process":
            [s["consumed"] for s in stamps], "late": sum(s["late"] for s in stamps),
        "corrections": sum(s["corrections"] for s in stamps),
        "rows_offline": sum(s["rows_offline"] for s in stamps),
        "events_per_s_steady": round(steady, 1) if steady else None,
        "events_per_s_ready_to_exit": round(n / run_s, 1) if run_s > 0 else None,
        "events_per_s_first_to_exit": round(n / (end - first), 1) if first else None,
        "startup_s": round(max(s["ready"] for s in stamps) - t0, 2),
        "wall_s": round(end - t0, 2), "cpu_s": [round(cpu[i], 2) for i in sorted(cpu)],
        "samples": len(samples), "overrides": overrides, "stop": [s["stop"] for s in stamps],
        "code": sorted(code),
    }


def rate(run: dict) -> float | None:
    return run.get("events_per_s_steady") or run.get("events_per_s_ready_to_exit")


def phase_cluster(broker, fresh_repo, spec, args, src_root: Path, seed: int = 19) -> dict:
    """1 process, then 2, over the same pre-produced topic; offline rows checked."""
    import numpy as np

    from bench.kafka_redis_bench import ROOT, preproduce
    from bench.kafka_redis_checks import check_offline, sent_events

    n = args.cluster_events or args.events
    topic = broker.topic("cluster-events", args.partitions)
    first = fresh_repo("cluster-p1")
    stamps = first.parent / "cluster.stamps.npy"
    prod = preproduce(broker, topic, n, args, seed, stamps)
    events = sent_events(n, args.users, seed, np.load(stamps))
    entity = spec.entity("user_id")
    # dataflows/ and feast_repo/ of the revision measured: the child's cwd is first on its
    # sys.path; bench/ comes from this checkout through PYTHONPATH
    os.environ["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys([*filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
                       str(ROOT)]))
    runs = []
    for k in (1, 2):
        repo = first if k == 1 else fresh_repo(f"cluster-p{k}")
        res = run_cluster(k, f"kafka://{broker.bootstrap}/{topic}", repo, n, args, src_root)
        res["offline_check"] = check_offline(repo, entity, events, args.corrupt_check)
        runs.append(res)
        print(f"cluster {k}p: {rate(res) or 0:,.0f} events/s steady, "
              f"{res['events_per_s_ready_to_exit'] or 0:,.0f} ready -> exit", flush=True)
    one, two = rate(runs[0]), rate(runs[1])
    return {"phase": "cluster", "events": n, "seed": seed, "producer": prod, "runs": runs,
            "ratio_2p_1p": round(two / one, 3) if one and two else None}


def cluster_report(res: dict) -> list[str]:
    from bench.kafka_redis_checks import verdict

    lines = [f"Cluster phase ({res['events']:,} pre-produced events, bytewax.run "
             "bench.cluster_live_flow; 2p / 1p = "
             f"{res['ratio_2p_1p'] if res['ratio_2p_1p'] is not None else '-'}):", "",
             "| processes | events/s steady | events/s ready -> exit | start-up s | wall s "
             "| CPU s per process | records per process | offline == reference |",
             "| ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for r in res["runs"]:
        lines.append(
            f"| {r['processes']} | {r['events_per_s_steady'] or 0:,.0f} | "
            f"{r['events_per_s_ready_to_exit'] or 0:,.0f} | {r['startup_s']} | {r['wall_s']} "
            f"| {r['cpu_s']} | {r['consumed_per_process']} | "
            f"{verdict(r.get('offline_check'))} |")
    return lines
