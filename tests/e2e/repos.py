"""Temp Feast repos for the production-path tests: feast_repo/ + a given feature_store.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OFFLINE_TYPE = "feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore"
FAST_STORE = "feast_bytewax.stores.fast_redis.FastRedisOnlineStore"
FAST_PROVIDER = "feast_bytewax.stores.fast_redis.FastRedisProvider"


def copy_repo(directory: Path, yaml_text: str | None = None) -> Path:
    """feast_repo/ and a feature_store.yaml (`yaml_text`, else the shipped one) in
    `directory`, not applied."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "feast_repo", directory / "feast_repo",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    if yaml_text is None:
        shutil.copy(ROOT / "feature_store.yaml", directory / "feature_store.yaml")
    else:
        (directory / "feature_store.yaml").write_text(yaml_text)
    return directory


def apply(directory: Path, fs_yaml: Path | None = None):
    """Register the feast_repo objects (as `feast apply`); returns the FeatureStore."""
    from feast import FeatureStore

    from tests.conftest import feast_repo_objects

    store = FeatureStore(repo_path=str(directory), fs_yaml_file=fs_yaml)
    store.apply(feast_repo_objects())
    return store


def redis_yaml(
    connection_string: str,
    *,
    store_type: str = "redis",
    provider: str = "local",
    project: str = "feast_bytewax",
    registry: str = "data/registry.db",
    extra_online: str = "",
    offline_extra: str = "",
) -> str:
    """A feature_store.yaml with a Redis online store and the parquet-folder offline store."""
    text = (
        f"project: {project}\n"
        f"provider: {provider}\n"
        f"registry: {registry}\n"
        "online_store:\n"
        f"  type: {store_type}\n"
        f"  connection_string: \"{connection_string}\"\n"
    )
    for line in extra_online.strip().splitlines():
        text += f"  {line.strip()}\n"
    text += f"offline_store:\n  type: {OFFLINE_TYPE}\n"
    for line in offline_extra.strip().splitlines():
        text += f"  {line.strip()}\n"
    return text + "entity_key_serialization_version: 3\n"
