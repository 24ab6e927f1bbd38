"""Feast's Redis online write path through FeastWriter: stock store vs the fast plugin.

    .venv/bin/python bench/redis_write.py [--keys 10000] [--rounds 5]

Starts its own redis-server on a free loopback port (tests/services.py), builds one temp
Feast repo per variant, and times `FeastWriter.flush()` (online only) of `--keys` distinct
keys per flush, each round newer than the last (so every write passes the
"newer than stored" check). One key = one row per feature view (3 views here).

Variants (all read back identically by Feast's stock RedisOnlineStore):
  stock     online_store type: redis (Feast's RedisOnlineStore)
  plugin    type: feast_bytewax.stores.fast_redis.FastRedisOnlineStore with Feast's local
            provider (FeastWriter uses the store's columnar write_frame with any provider,
            so no Feast conversion happens: this measures the provider's share)
  plugin+provider  the same store + provider FastRedisProvider (columnar write_frame)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from feast import FeatureStore

from feast_bytewax.dataflow.repo import apply_repo
from feast_bytewax.dataflow.writer import FeastWriter
from feast_bytewax.features.spec import load_spec
from feast_bytewax.records import FeatureRow

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "stock": ("local", "redis"),
    "plugin": ("local", "feast_bytewax.stores.fast_redis.FastRedisOnlineStore"),
    "plugin+provider": ("feast_bytewax.stores.fast_redis.FastRedisProvider",
                        "feast_bytewax.stores.fast_redis.FastRedisOnlineStore"),
}


def make_repo(directory: Path, provider: str, store_type: str, connection: str,
              project: str = "feast_bytewax") -> Path:
    directory.mkdir(parents=True)
    shutil.copytree(ROOT / "feast_repo", directory / "feast_repo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "feature_store.yaml").write_text(
        f"project: {project}\n"
        f"provider: {provider}\n"
        "registry: data/registry.db\n"
        "online_store:\n"
        f"  type: {store_type}\n"
        f"  connection_string: {connection}\n"
        "offline_store:\n"
        "  type: feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore\n"
        "entity_key_serialization_version: 3\n"
    )
    apply_repo(directory)
    return directory


def rows_for(spec, keys: int, round_no: int):
    t0 = 1_763_000_000_000_000 + round_no * 60_000_000
    ints = [f.dtype.startswith("int") for f in spec.features]
    return [
        FeatureRow(f"user_{i:06d}", t0 + i,
                   tuple((i + round_no) if is_int else (i + round_no) / 7 for is_int in ints),
                   "event")
        for i in range(keys)
    ]


class Variant:
    """One repo + FeastWriter (online only), instrumented to split Feast's arrow -> proto
    conversion from the online store's write."""

    def __init__(self, name: str, repo: Path) -> None:
        self.name = name
        store = FeatureStore(repo_path=str(repo))
        self.spec = load_spec(store)
        self.writer = FeastWriter(store, self.spec, offline=False, max_rows=10**9,
                                  max_interval=10**9)
        self.timing = {"convert": 0.0, "store_write": 0.0}
        self.samples: list[dict] = []
        prov = self.writer._provider
        for attr, slot in (("_prep_rows_to_write_for_ingestion", "convert"),
                           ("online_write_batch", "store_write")):
            setattr(prov, attr, self._timed(getattr(prov, attr), slot))
        if self.writer._write_frame is not None:  # the writer's columnar path skips both
            self.writer._write_frame = self._timed(self.writer._write_frame, "store_write")

    def _timed(self, fn, slot: str):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.timing[slot] += time.perf_counter() - t
        return wrapper

    def flush_round(self, keys: int, round_no: int, redis_client, record: bool) -> None:
        self.writer.write(rows_for(self.spec, keys, round_no))
        self.timing.update(convert=0.0, store_write=0.0)
        before = redis_client.info("cpu")
        c0, t0 = time.process_time(), time.perf_counter()
        self.writer.flush()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        after = redis_client.info("cpu")
        redis_cpu = sum(after[k] - before[k] for k in ("used_cpu_sys", "used_cpu_user"))
        if record:
            self.samples.append({"wall": wall, "cpu": cpu, "redis_cpu": redis_cpu,
                                 **self.timing})

    def summary(self, keys: int) -> dict:
        def med(k: str) -> float:
            return statistics.median(s[k] for s in self.samples)

        views = len(self.writer._online_targets)
        return {
            "keys_per_flush": keys,
            "hash_writes_per_flush": keys * views,
            "flush_wall_s": round(med("wall"), 4),
            "flush_cpu_s": round(med("cpu"), 4),
            "redis_server_cpu_s": round(med("redis_cpu"), 4),
            "keys_per_s_wall": round(keys / med("wall")),
            "keys_per_s_cpu": round(keys / med("cpu")),
            "feast_convert_s": round(med("convert"), 4),
            "store_write_s": round(med("store_write"), 4),
            "wall_rounds": [round(s["wall"], 4) for s in self.samples],
        }


def main() -> int:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "redis_write.json")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))  # tests/ (the redis-server helper), also as a script
    from tests.services import running_redis

    results = {}
    with running_redis() as redis_server, tempfile.TemporaryDirectory() as tmp:
        variants = []
        for i, (name, (provider, store_type)) in enumerate(VARIANTS.items()):
            # one project per variant: they share the Redis server without sharing keys
            repo = make_repo(Path(tmp) / name.replace("+", "_"), provider, store_type,
                             redis_server.connection_string, project=f"bench_{i}")
            variants.append(Variant(name, repo))
        client = redis_server.client()
        for r in range(args.rounds + 1):  # round 0 warms up (connections, script load)
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:  # interleaved, rotating: load changes hit every variant alike
                v.flush_round(args.keys, r, client, record=r > 0)
        for v in variants:
            results[v.name] = v.summary(args.keys)
    base = results["stock"]
    for name, res in results.items():
        res["speedup_wall"] = round(base["flush_wall_s"] / res["flush_wall_s"], 2)
        res["speedup_cpu"] = round(base["flush_cpu_s"] / res["flush_cpu_s"], 2)
        print(f"{name:16s} {res['keys_per_s_wall']:>8,} keys/s wall "
              f"({res['keys_per_s_cpu']:>8,}/s of writer CPU): flush {res['flush_wall_s']*1e3:.0f}"
              f" ms = Feast convert {res['feast_convert_s']*1e3:.0f} ms + store write "
              f"{res['store_write_s']*1e3:.0f} ms; redis-server CPU "
              f"{res['redis_server_cpu_s']*1e3:.0f} ms; x{res['speedup_wall']} wall, "
              f"x{res['speedup_cpu']} CPU vs stock")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
