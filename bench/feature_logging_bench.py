"""Serving latency with and without the feature-logging provider.

    .venv/bin/python -m bench.feature_logging_bench [--calls 10000] [--http-calls 3000]

Builds a temp repo (generated events replayed into the SQLite online store), then measures
one-entity `get_online_features(feature_service)` calls:

- in-process: two FeatureStores on the same repo, one with Feast's default provider, one with
  `feast_bytewax.stores.feature_logging.LoggingProvider` (sample rate 1.0: every request logged,
  the worst case; default 5 s flush interval), called alternately in rounds of 500 so that
  machine noise hits both alike;
- through `feast serve` (1 worker each, same repo), a keep-alive HTTP client alternating
  between the two servers.

Prints a markdown table (p50 / p90 / p99 / p99.9 / mean in microseconds, overhead at p50 and
p99) and the logging stats (rows written, flushes, flush time).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from feast_bytewax.config import ReplayConfig
from feast_bytewax.dataflow.replay import run_replay
from feast_bytewax.dataflow.repo import apply_repo
from feast_bytewax.datagen.generate import write_events

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "user_fraud_features"
LOGGING_YAML = "\nprovider: feast_bytewax.stores.feature_logging.LoggingProvider\n"


def build_repo(base: Path, events: int, users: int) -> tuple[Path, Path]:
    """(plain repo, yaml with the logging provider) sharing one registry and online store."""
    repo = base / "repo"
    repo.mkdir(parents=True)
    shutil.copy(ROOT / "feature_store.yaml", repo / "feature_store.yaml")
    shutil.copytree(ROOT / "feast_repo", repo / "feast_repo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    apply_repo(repo)
    start = (datetime.now(UTC) - timedelta(hours=25)).replace(microsecond=0)
    write_events(repo / "data/events.parquet", events, users, seed=3, start=start)
    run_replay(ReplayConfig(repo=repo, events=str(repo / "data/events.parquet")))
    text = (repo / "feature_store.yaml").read_text().replace("provider: local\n", "")
    logging_dir = base / "logging"
    logging_dir.mkdir()
    for name in ("feast_repo",):
        shutil.copytree(repo / name, logging_dir / name)
    abs_text = text.replace("data/registry.db", str(repo / "data/registry.db")).replace(
        "data/online.db", str(repo / "data/online.db"))
    (logging_dir / "feature_store.yaml").write_text(abs_text + LOGGING_YAML)
    (logging_dir / "data").symlink_to(repo / "data")
    return repo, logging_dir


def stats(lat_ns: list[int]) -> dict[str, float]:
    a = np.array(lat_ns, dtype=np.float64) / 1000.0
    return {"p50": np.percentile(a, 50), "p90": np.percentile(a, 90),
            "p99": np.percentile(a, 99), "p99.9": np.percentile(a, 99.9), "mean": a.mean()}


def _worker(repo: Path, calls: int, out: Path) -> None:
    """One mode in a fresh interpreter: `calls` one-entity reads, latencies to `out`."""
    import json

    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    svc = store.get_feature_service(SERVICE)
    import pandas as pd

    users = sorted(pd.read_parquet(repo / "data/events.parquet")["user_id"].unique())
    rnd = random.Random(1)
    for _ in range(300):  # warm up
        store.get_online_features(features=svc, entity_rows=[{"user_id": rnd.choice(users)}])
    lat = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        row = [{"user_id": rnd.choice(users)}]
        t0 = time.perf_counter_ns()
        store.get_online_features(features=svc, entity_rows=row)
        lat[i] = time.perf_counter_ns() - t0
    np.save(out, lat)
    provider = store._get_provider()
    log = getattr(provider, "feature_log", None)
    if log is not None:
        log.flush()
        out.with_suffix(".json").write_text(json.dumps(log.stats))


def in_process(plain: Path, logged: Path, calls: int, rounds: int = 4) -> tuple[dict, dict]:
    """Each mode in its own process (a background thread of one store would otherwise
    also slow the other), alternating off/on `rounds` times."""
    import json

    lat: dict[str, list] = {"off": [], "on": []}
    st: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="fb-logbench-lat-"))
    for r in range(rounds):
        for k, repo in (("off", plain), ("on", logged)):
            out = tmp / f"{k}{r}.npy"
            subprocess.run([sys.executable, "-m", "bench.feature_logging_bench", "--worker",
                            str(repo), "--calls", str(calls // rounds), "--out", str(out)],
                           check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
            got = np.load(out).tolist()
            lat[k].extend(got)
            s = stats(got)
            print(f"round {r} {k}: p50 {s['p50']:.0f} us, p99 {s['p99']:.0f} us", flush=True)
            if out.with_suffix(".json").exists():
                for name, v in json.loads(out.with_suffix(".json").read_text()).items():
                    st[name] = st.get(name, 0) + v if "max" not in name else max(
                        st.get(name, 0), v)
    shutil.rmtree(tmp, ignore_errors=True)
    return {k: stats(v) for k, v in lat.items()}, st


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(plain: Path, logged: Path, users: list[str], calls: int) -> dict:
    import requests

    feast = Path(sys.executable).with_name("feast")
    procs, urls = {}, {}
    for k, repo in (("off", plain), ("on", logged)):
        port = _port()
        procs[k] = subprocess.Popen(
            [str(feast), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port), "-w", "1",
             "--no-access-log", "--max-requests", "1000000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        urls[k] = f"http://127.0.0.1:{port}"
    try:
        sess = requests.Session()
        for k, url in urls.items():
            deadline = time.time() + 90
            while True:
                try:
                    if sess.get(f"{url}/health", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    pass
                if time.time() > deadline or procs[k].poll() is not None:
                    raise RuntimeError(f"feast serve ({k}) did not start")
                time.sleep(0.3)
        rnd = random.Random(2)
        lat: dict[str, list[int]] = {"off": [], "on": []}
        for k in urls:  # warm up
            for _ in range(100):
                sess.post(f"{urls[k]}/get-online-features", json={
                    "feature_service": SERVICE, "entities": {"user_id": [rnd.choice(users)]}})
        for _ in range(max(1, calls // 250)):
            for k in ("off", "on"):
                for _ in range(250):
                    body = {"feature_service": SERVICE,
                            "entities": {"user_id": [rnd.choice(users)]}}
                    t0 = time.perf_counter_ns()
                    r = sess.post(f"{urls[k]}/get-online-features", json=body)
                    lat[k].append(time.perf_counter_ns() - t0)
                    r.raise_for_status()
        return {k: stats(v) for k, v in lat.items()}
    finally:
        for p in procs.values():
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            p.wait(timeout=30)


def table(title: str, res: dict) -> str:
    head = (f"| {title} | p50 us | p90 us | p99 us | p99.9 us | mean us |\n"
            "|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for k, label in (("off", "Feast default provider"), ("on", "LoggingProvider (rate 1.0)")):
        s = res[k]
        lines.append(f"| {label} | {s['p50']:.0f} | {s['p90']:.0f} | {s['p99']:.0f} | "
                     f"{s['p99.9']:.0f} | {s['mean']:.0f} |")
    ov = {q: (res["on"][q] / res["off"][q] - 1) * 100 for q in ("p50", "p99", "mean")}
    lines.append(f"| overhead | {ov['p50']:+.1f}% | | {ov['p99']:+.1f}% | | {ov['mean']:+.1f}% |")
    return "\n".join(lines)


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--http-calls", type=int, default=3_000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        _worker(args.worker, args.calls, args.out)
        return
    base = Path(tempfile.mkdtemp(prefix="fb-logbench-"))
    try:
        plain, logged = build_repo(base, args.events, args.users)
        import pandas as pd

        users = sorted(pd.read_parquet(plain / "data/events.parquet")["user_id"].unique())
        res, st = in_process(plain, logged, args.calls)
        print(table(f"in-process, {args.calls:,} calls each", res))
        print(f"\nlogging: {st}\n")
        if args.http_calls:
            print(table(f"feast serve, {args.http_calls:,} requests each", http(
                plain, logged, users, args.http_calls)))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
