"""FastRedisOnlineStore (and FastRedisProvider) against Feast's stock RedisOnlineStore on a
real redis-server: the same operations produce byte-identical Redis contents, Feast's stock
reader returns the same features, and "a write not newer than the stored one is dropped"
holds in every path."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from feast_bytewax.dataflow.writer import FeastWriter, rows_to_frame
from feast_bytewax.features.spec import load_spec
from feast_bytewax.records import FeatureRow
from feast_bytewax.timeutil import to_us
from tests.e2e.repos import FAST_PROVIDER, FAST_STORE, apply, copy_repo, redis_yaml

pytestmark = pytest.mark.e2e

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SERVICE = "user_fraud_features"
# variant -> (provider, online store type, redis db)
VARIANTS = {
    "stock": ("local", "redis", 0),
    "plugin": ("local", FAST_STORE, 1),
    "plugin+provider": (FAST_PROVIDER, FAST_STORE, 2),
}


def values_for(spec, i: int, b: int) -> tuple:
    """Feature values for key i in batch b: ints, floats, nulls, NaN, inf, negatives, big."""
    by_name = {
        "purchase_count_30m": [i + b, -5, 2**40][i % 3],
        "avg_amount_1h": None if i % 5 == 0 else [(i + b) / 4, float("nan"), -0.0][i % 3],
        "max_amount_24h": None if i % 7 == 0 else [i * 1.5 + b, float("inf"), 1e-300][i % 3],
        "failed_logins_10m": (i + b) % 3,
        "distinct_categories_session": None if i % 11 == 0 else i % 5 + b,
    }
    def other(dtype: str):  # features added later to the repo: a value of their type
        return (i + b) % 4 if dtype.startswith("int") else [(i + b) / 8, None, -1.5][i % 3]

    return tuple(by_name[f.name] if f.name in by_name else other(f.dtype)
                 for f in spec.features)


def row(spec, i: int, minute: float, b: int) -> FeatureRow:
    return FeatureRow(f"user_{i:03d}", to_us(T0 + timedelta(minutes=minute)),
                      values_for(spec, i, b), "event")


def operations(store, spec) -> None:
    """The same writes, through every entry point, applied to one store."""
    writer = FeastWriter(store, spec, offline=False, max_rows=10**6, max_interval=10**6)
    # 1. a first flush: 60 keys at minute 10 (+ i us, so stamps differ in the microseconds)
    writer.write([row(spec, i, 10 + i / 6e7, 1) for i in range(60)])
    writer.flush()
    # 2. newer for i % 3 == 0; older for i % 3 == 1 (dropped); the same instant with other
    #    values for i % 3 == 2 (dropped: not newer)
    batch = []
    for i in range(60):
        minute = {0: 20.0, 1: 5.0, 2: 10 + i / 6e7}[i % 3]
        batch.append(row(spec, i, minute, 2))
    writer.write(batch)
    writer.flush()
    # 3. ingest_df directly with repeated keys out of order inside one frame
    frame_rows = [row(spec, 1, 30, 3), row(spec, 1, 25, 4),   # keeps minute 30
                  row(spec, 2, 40, 5), row(spec, 2, 45, 6),   # keeps minute 45
                  row(spec, 4, 50, 7), row(spec, 4, 50, 8)]   # equal: keeps the first
    frame = rows_to_frame(frame_rows, spec)
    provider = store._get_provider()
    for target in writer._online_targets:
        provider.ingest_df(target.view, frame.loc[:, list(target.columns)])
    # 4. online_write_batch with Feast's own protos (materialization's path)
    later = rows_to_frame([row(spec, 5, 70, 9), row(spec, 70, 70, 9)], spec)
    for target in writer._online_targets:
        protos = provider._prep_rows_to_write_for_ingestion(
            target.view, later.loc[:, list(target.columns)])
        provider.online_write_batch(store.config, target.view, protos, None)


def dump(client) -> dict[bytes, dict[bytes, bytes]]:
    return {k: client.hgetall(k) for k in client.scan_iter(count=1000)}


def has_ttl(client) -> dict[bytes, bool]:
    return {k: client.ttl(k) > 0 for k in client.scan_iter(count=1000)}


@pytest.fixture
def repo(tmp_path: Path, redis_clean):
    """One applied repo (one registry) and a feature_store yaml per variant and Redis db."""
    directory = copy_repo(tmp_path / "repo",
                          redis_yaml(f"{redis_clean.connection_string},db=0"))
    apply(directory)
    return directory


def write_yaml(repo: Path, name: str, redis_server, provider: str, store_type: str, db: int,
               extra: str = "") -> Path:
    path = repo / f"{name.replace('+', '_')}.yaml"
    path.write_text(redis_yaml(f"{redis_server.connection_string},db={db}",
                               store_type=store_type, provider=provider, extra_online=extra))
    return path


def open_store(repo: Path, yaml_path: Path):
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo), fs_yaml_file=yaml_path)


@pytest.mark.parametrize("extra", ["", "key_ttl_seconds: 3600", "skip_dedup: true"],
                         ids=["default", "key_ttl", "skip_dedup"])
def test_every_write_path_produces_feasts_exact_bytes(repo, redis_clean, extra):
    import redis

    dumps, ttls = {}, {}
    for name, (provider, store_type, db) in VARIANTS.items():
        store = open_store(repo, write_yaml(repo, name, redis_clean, provider, store_type, db,
                                            extra))
        operations(store, load_spec(store))
        client = redis.Redis(host=redis_clean.host, port=redis_clean.port, db=db)
        dumps[name], ttls[name] = dump(client), has_ttl(client)
    stock = dumps["stock"]
    assert len(stock) == 61  # user_000..059 and user_070
    spec = load_spec(store)  # one _ts per view + one field per feature
    assert all(len(fields) == len(spec.views) + len(spec.features) for fields in stock.values())
    for name in ("plugin", "plugin+provider"):
        assert dumps[name].keys() == stock.keys(), name
        for key, fields in stock.items():
            assert dumps[name][key] == fields, (name, key)
        assert ttls[name] == ttls["stock"]
    assert all(ttls["stock"].values()) == bool(extra.startswith("key_ttl"))


def test_stock_reader_and_feature_service_read_plugin_writes(repo, redis_clean):
    """Write with the plugin (both paths), read with Feast's stock RedisOnlineStore: the
    same response as for stock writes, and the values the dedup rule says."""
    for name, (provider, store_type, db) in VARIANTS.items():
        store = open_store(repo, write_yaml(repo, name, redis_clean, provider, store_type, db))
        operations(store, load_spec(store))
    users = [f"user_{i:03d}" for i in (0, 1, 2, 3, 4, 5, 7, 70)] + ["never_seen"]
    responses = {}
    for name, (_, _, db) in VARIANTS.items():
        reader = open_store(repo, write_yaml(repo, f"read_{db}", redis_clean, "local", "redis",
                                             db))
        assert type(reader._get_provider().online_store).__name__ == "RedisOnlineStore"
        resp = reader.get_online_features(
            features=reader.get_feature_service(SERVICE),
            entity_rows=[{"user_id": u} for u in users],
        )
        responses[name] = resp.to_dict(include_event_timestamps=True)
    stock = responses["stock"]
    for name in ("plugin", "plugin+provider"):
        assert _same(responses[name], stock), name

    spec = load_spec(open_store(repo, repo / "feature_store.yaml"))
    got = {u: {n: stock[n][k] for n in spec.feature_names} for k, u in enumerate(users)}

    def expect(i: int, b: int) -> dict:
        want = dict(zip(spec.feature_names, values_for(spec, i, b), strict=True))
        return {n: (None if isinstance(v, float) and math.isnan(v) else v)
                for n, v in want.items()}

    assert _same(got["user_000"], expect(0, 2))  # newer in batch 2
    assert _same(got["user_001"], expect(1, 3))  # batch 2 older; frame: minute 30 beats 25
    assert _same(got["user_002"], expect(2, 6))  # batch 2 equal instant; frame: 45 wins
    assert _same(got["user_003"], expect(3, 2))
    assert _same(got["user_004"], expect(4, 7))  # two rows at one instant: the first stays
    assert _same(got["user_005"], expect(5, 9))  # online_write_batch path
    assert _same(got["user_007"], expect(7, 1))  # older write dropped
    assert _same(got["user_070"], expect(70, 9))
    assert all(v is None for v in got["never_seen"].values())


def _same(a, b) -> bool:
    """Equal, with NaN == NaN and None == NaN (a null double reads back as None)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    nan_a = a is None or (isinstance(a, float) and math.isnan(a))
    nan_b = b is None or (isinstance(b, float) and math.isnan(b))
    if nan_a or nan_b:
        return nan_a and nan_b
    return a == b


def test_script_reloads_after_the_server_forgets_it(repo, redis_clean):
    store = open_store(repo, write_yaml(repo, "p", redis_clean, FAST_PROVIDER, FAST_STORE, 3))
    spec = load_spec(store)
    writer = FeastWriter(store, spec, offline=False)
    writer.write([row(spec, 1, 1, 1)])
    writer.flush()
    redis_clean.client().script_flush()
    writer.write([row(spec, 1, 2, 2)])
    writer.flush()
    out = store.get_online_features(features=store.get_feature_service(SERVICE),
                                    entity_rows=[{"user_id": "user_001"}]).to_dict()
    assert out["failed_logins_10m"] == [values_for(spec, 1, 2)[
        spec.feature_names.index("failed_logins_10m")]]


def test_online_write_frame_is_columnar_for_the_sink(repo, redis_clean, monkeypatch):
    """With the provider, the sink's flush never builds Feast protos."""
    from feast.infra import passthrough_provider

    store = open_store(repo, write_yaml(repo, "p", redis_clean, FAST_PROVIDER, FAST_STORE, 4))
    spec = load_spec(store)

    def no_protos(*a, **k):
        raise AssertionError("Feast's arrow -> proto conversion was used")

    monkeypatch.setattr(passthrough_provider.PassthroughProvider,
                        "_prep_rows_to_write_for_ingestion", staticmethod(no_protos))
    writer = FeastWriter(store, spec, offline=False)
    writer.write([row(spec, i, 1, 1) for i in range(20)])
    writer.flush()
    assert writer.stats()["rows_online"] == 20 * len(spec.views)
    got = pd.DataFrame(store.get_online_features(
        features=store.get_feature_service(SERVICE),
        entity_rows=[{"user_id": f"user_{i:03d}"} for i in range(20)]).to_dict())
    assert got["failed_logins_10m"].tolist() == [(i + 1) % 3 for i in range(20)]
