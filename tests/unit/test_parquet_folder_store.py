"""ParquetFolderOfflineStore: append-only part files, folder reads, empty folders, S3."""

from __future__ import annotations

import hashlib
import os
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from feast.repo_config import RepoConfig

from feast_bytewax.stores import parquet_folder
from feast_bytewax.stores.folder_names import (
    OUR_MARKER,
    OUR_PART,
    marker_name,
    new_run_id,
    part_name,
    writer_id,
)
from feast_bytewax.stores.parquet_folder import (
    STORE_TYPE,
    ParquetFolderOfflineStore,
    ParquetFolderOfflineStoreConfig,
)

FOLDER = Path("data/offline/user_features")
FEATURES = [
    "failed_logins_10m", "purchase_count_30m", "avg_amount_1h", "max_amount_24h",
    "distinct_categories_session",
]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def batch(keys: list[str], minutes: list[float], base: int = 0) -> pa.Table:
    """A batch with the batch source's columns; feature values derived from (key, minute)."""
    n = len(keys)
    return pa.Table.from_pandas(
        pd.DataFrame({
            "user_id": keys,
            "event_timestamp": pd.DatetimeIndex(
                [T0 + timedelta(minutes=m) for m in minutes]
            ).astype("datetime64[us, UTC]"),
            "failed_logins_10m": pd.array([None] * n, dtype="Int64"),
            "purchase_count_30m": pd.array([base + i for i in range(n)], dtype="Int64"),
            "avg_amount_1h": [float(base + i) / 2 for i in range(n)],
            "max_amount_24h": [None] * n,
            "distinct_categories_session": pd.array([i % 3 for i in range(n)], dtype="Int64"),
        }),
        preserve_index=False,
    )


def open_store(repo: Path) -> tuple[FeatureStore, dict]:
    store = FeatureStore(repo_path=str(repo))
    return store, {v.name: v for v in store.list_stream_feature_views()}


def parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def fingerprint(path: Path) -> tuple[int, int, str]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_is_strict_and_selects_the_store(feast_repo_dir: Path) -> None:
    store = FeatureStore(repo_path=str(feast_repo_dir))
    assert isinstance(store.config.offline_store, ParquetFolderOfflineStoreConfig)
    assert store.config.offline_store.type == STORE_TYPE
    assert isinstance(store._get_provider().offline_store, ParquetFolderOfflineStore)
    with pytest.raises(ValueError, match="extra"):
        ParquetFolderOfflineStoreConfig(typo_field=1)
    cfg = ParquetFolderOfflineStoreConfig(root="s3://bucket/prefix", s3_endpoint_override="x")
    assert cfg.root == "s3://bucket/prefix"


def test_each_write_appends_one_part_and_never_touches_existing_ones(
    feast_repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, views = open_store(feast_repo_dir)
    provider = store._get_provider()
    folder = feast_repo_dir / FOLDER
    assert not folder.exists()  # created by the first write

    # Writing must not read existing data back (the built-in store re-reads and rewrites the
    # whole file): any full read of a parquet file during the writes fails the test.
    def no_reads(*args, **kwargs):
        raise AssertionError("offline_write_batch read existing data")

    monkeypatch.setattr(pq, "read_table", no_reads)
    monkeypatch.setattr(parquet_folder.pads, "dataset", no_reads)

    seen: dict[Path, tuple[int, int, str]] = {}
    for i in range(4):
        provider.ingest_df_to_offline_store(
            views["user_purchase_features"], batch(["u1", "u2", "u3"], [i, i, i], base=10 * i)
        )
        now = parts(folder)
        assert len(now) == i + 1, now
        for path, before in seen.items():
            assert fingerprint(path) == before, f"{path.name} was modified"
        seen.update({p: fingerprint(p) for p in now if p not in seen})
        assert [p.name for p in folder.iterdir() if not p.name.startswith("part-")] == [
            "_commits"]  # each write committed at once (Feast's push path)
    monkeypatch.undo()

    table = pq.read_table(folder)
    assert table.num_rows == 12
    assert sorted(table.column("purchase_count_30m").to_pylist()) == sorted(
        10 * i + j for i in range(4) for j in range(3)
    )


def test_parts_share_one_schema_even_when_a_batch_is_all_null(feast_repo_dir: Path) -> None:
    store, views = open_store(feast_repo_dir)
    provider = store._get_provider()
    view = views["user_purchase_features"]
    first = batch(["u1"], [0])
    # an int feature that is null throughout its first batch arrives typed as `null`
    first = first.set_column(
        first.schema.get_field_index("purchase_count_30m"), "purchase_count_30m",
        pa.nulls(1),
    )
    provider.ingest_df_to_offline_store(view, first)
    second = batch(["u2"], [1])  # int64; then a float64-typed int column with nulls:
    second = second.set_column(
        second.schema.get_field_index("distinct_categories_session"),
        "distinct_categories_session", pa.array([None], pa.float64()),
    )
    provider.ingest_df_to_offline_store(view, second)
    reordered = batch(["u3"], [2]).select(list(reversed(batch(["u3"], [2]).column_names)))
    provider.ingest_df_to_offline_store(view, reordered)

    schemas = [pq.read_schema(p) for p in parts(feast_repo_dir / FOLDER)]
    assert len(schemas) == 3
    # the view's own columns get its Feast types in every part, whatever the batch carried
    own = ["user_id", "event_timestamp", "purchase_count_30m", "avg_amount_1h", "max_amount_24h"]
    types = [{n: s.field(n).type for n in own} for s in schemas]
    assert all(t == types[0] for t in types), types
    assert types[0]["purchase_count_30m"] == pa.int64()
    assert types[0]["event_timestamp"] == pa.timestamp("us", tz="UTC")
    entity_df = pd.DataFrame({"user_id": ["u1", "u2", "u3"],
                              "event_timestamp": [T0 + timedelta(hours=1)] * 3})
    got = store.get_historical_features(entity_df, ["user_purchase_features:avg_amount_1h"])
    assert got.to_df()["avg_amount_1h"].tolist() == [0.0, 0.0, 0.0]  # every part reads

    bad = batch(["u4"], [3]).drop_columns(["avg_amount_1h"])
    with pytest.raises(ValueError, match="avg_amount_1h"):
        provider.ingest_df_to_offline_store(view, bad)
    assert len(parts(feast_repo_dir / FOLDER)) == 3


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_folder_reads_as_no_rows(feast_repo_dir: Path, state: str) -> None:
    folder = feast_repo_dir / FOLDER
    if state == "empty":
        folder.mkdir(parents=True)
        (folder / ".part-000-abc.parquet.tmp").write_bytes(b"partial")  # must be ignored
    store, views = open_store(feast_repo_dir)
    entity_df = pd.DataFrame({
        "user_id": ["u1", "u2"],
        "event_timestamp": [T0, T0 + timedelta(hours=1)],
    })
    out = store.get_historical_features(
        entity_df, store.get_feature_service("user_fraud_features")
    ).to_df()
    assert sorted(out["user_id"]) == ["u1", "u2"]
    assert out[FEATURES].isna().all().all()

    source = views["user_purchase_features"].batch_source
    pulled = ParquetFolderOfflineStore.pull_latest_from_table_or_query(
        store.config, source, ["user_id"], ["purchase_count_30m"], "event_timestamp", None,
        T0 - timedelta(days=1), T0 + timedelta(days=1),
    ).to_df()
    assert len(pulled) == 0


def test_historical_features_read_every_part(feast_repo_dir: Path) -> None:
    store, views = open_store(feast_repo_dir)
    provider = store._get_provider()
    view = views["user_login_features"]  # any view on the source carries the whole batch
    provider.ingest_df_to_offline_store(view, batch(["u1", "u2"], [0, 0], base=100))
    provider.ingest_df_to_offline_store(view, batch(["u1"], [10], base=200))
    entity_df = pd.DataFrame({
        "user_id": ["u1", "u1", "u2"],
        "event_timestamp": [T0 + timedelta(minutes=5), T0 + timedelta(minutes=15),
                            T0 + timedelta(minutes=15)],
        "row": [0, 1, 2],
    })
    out = store.get_historical_features(
        entity_df, store.get_feature_service("user_fraud_features")
    ).to_df().set_index("row").sort_index()
    assert out["purchase_count_30m"].tolist() == [100, 200, 101]
    assert out["avg_amount_1h"].tolist() == [50.0, 100.0, 50.5]
    assert out["purchase_count_30m"].dtype == "Int64"  # ints with nulls stay ints

    pulled = ParquetFolderOfflineStore.pull_latest_from_table_or_query(
        store.config, view.batch_source, ["user_id"], ["purchase_count_30m"],
        "event_timestamp", None, T0 - timedelta(days=1), T0 + timedelta(days=1),
    ).to_df().set_index("user_id")
    assert pulled.loc["u1", "purchase_count_30m"] == 200
    assert pulled.loc["u2", "purchase_count_30m"] == 101

    everything = ParquetFolderOfflineStore.pull_all_from_table_or_query(
        store.config, view.batch_source, ["user_id"], ["purchase_count_30m"],
        "event_timestamp", None, T0 - timedelta(days=1), T0 + timedelta(days=1),
    ).to_df()
    assert sorted(everything["purchase_count_30m"].tolist()) == [100, 101, 200]


def test_relative_root_reroots_the_source(feast_repo_dir: Path, tmp_path: Path) -> None:
    config = RepoConfig(
        project="feast_bytewax", provider="local", registry=str(tmp_path / "unused.db"),
        repo_path=feast_repo_dir, entity_key_serialization_version=3,
        offline_store={"type": STORE_TYPE, "root": "lake"},
    )
    _, views = open_store(feast_repo_dir)
    view = views["user_purchase_features"]
    ParquetFolderOfflineStore.offline_write_batch(config, view, batch(["u1"], [0]), None)
    assert len(parts(feast_repo_dir / "lake" / FOLDER)) == 1
    assert not (feast_repo_dir / FOLDER).exists()


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch):
    """A moto S3 server on loopback with one bucket; yields its endpoint URL."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="feast-lake")
    try:
        yield endpoint
    finally:
        server.stop()


def test_s3_root_appends_and_reads_through_pyarrow(feast_repo_dir: Path, moto_s3: str) -> None:
    yaml_path = feast_repo_dir / "feature_store.yaml"
    text = yaml_path.read_text()
    assert f"type: {STORE_TYPE}\n" in text
    yaml_path.write_text(text.replace(
        f"type: {STORE_TYPE}\n",
        f"type: {STORE_TYPE}\n" + textwrap.indent(
            f"root: s3://feast-lake/features\ns3_endpoint_override: {moto_s3}\n", "  "
        ),
    ))
    store, views = open_store(feast_repo_dir)
    entity_df = pd.DataFrame({"user_id": ["u1"], "event_timestamp": [T0 + timedelta(hours=1)]})
    service = store.get_feature_service("user_fraud_features")
    empty = store.get_historical_features(entity_df, service).to_df()  # nothing written yet
    assert empty[FEATURES].isna().all().all()

    provider = store._get_provider()
    provider.ingest_df_to_offline_store(views["user_purchase_features"], batch(["u1"], [0], 7))
    provider.ingest_df_to_offline_store(views["user_purchase_features"], batch(["u1"], [1], 8))

    import boto3

    listed = boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket="feast-lake")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    folder = f"features/{FOLDER.as_posix()}"
    assert len([k for k in keys if k.startswith(f"{folder}/part-")]) == 2, keys
    assert len([k for k in keys if k.startswith(f"{folder}/_commits/")]) == 2, keys
    assert not (feast_repo_dir / FOLDER).exists()
    out = store.get_historical_features(entity_df, service).to_df()
    assert out["purchase_count_30m"].tolist() == [8]


def test_part_and_marker_names_are_deterministic_and_recognised() -> None:
    writer = writer_id(new_run_id(), "3")
    name = part_name(writer, 12)
    assert name == f"part-{writer}-s00000012.parquet" and os.sep not in name
    assert OUR_PART.match(name)["writer"] == writer
    assert OUR_MARKER.match(marker_name(writer, 12))["seq"] == "00000012"
    assert writer_id("r0-abc", "0") != writer_id("r0-abc", "0")  # one nonce per execution
    # a file of the earlier layout is never taken for an uncommitted part of ours
    assert not OUR_PART.match("part-00000001764628212345678-12345678.parquet")
