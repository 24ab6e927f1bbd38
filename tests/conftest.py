"""Make the repo root importable: `feast_repo` (the Feast definitions) and `tests.reference`."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# --- Feast repo fixture (feast-bytewax sink/store tests) ------------------------------------

import shutil  # noqa: E402

import pytest  # noqa: E402


def feast_repo_objects() -> list:
    """Every Feast object declared in the `feast_repo` modules (what `feast apply` finds)."""
    import importlib

    from feast import Entity, FeatureService
    from feast.base_feature_view import BaseFeatureView
    from feast.data_source import DataSource

    kinds = (Entity, DataSource, BaseFeatureView, FeatureService)
    objects: dict[tuple[str, str], object] = {}
    for module in ("entities", "sources", "features", "services"):
        mod = importlib.import_module(f"feast_repo.{module}")
        for value in vars(mod).values():
            if isinstance(value, kinds):
                objects[(type(value).__name__, value.name)] = value
    return list(objects.values())


def make_feast_repo(directory: Path) -> Path:
    """Copy feature_store.yaml + feast_repo/ into `directory` and apply them; returns it."""
    from feast import FeatureStore

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(ROOT) / "feature_store.yaml", directory / "feature_store.yaml")
    shutil.copytree(
        Path(ROOT) / "feast_repo", directory / "feast_repo",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    FeatureStore(repo_path=str(directory)).apply(feast_repo_objects())
    return directory


@pytest.fixture
def feast_repo_dir(tmp_path: Path) -> Path:
    """A temp copy of feature_store.yaml + feast_repo/, applied (registry written).

    Every relative path of feature_store.yaml (registry, SQLite online store, the offline
    parquet folder data/offline/user_features) lives under the returned directory; the offline
    folder does not exist yet. Open it with `FeatureStore(repo_path=str(feast_repo_dir))`.
    """
    return make_feast_repo(tmp_path / "feast_repo_copy")


# --- Real services: redis-server and moto S3 on free loopback ports (tests/services.py) -----

from tests.services import moto_server, redis_clean, redis_server  # noqa: E402, F401

# --- Kafka: librdkafka's mock cluster (tests/services.py) -----------------------------------

KAFKA_FIXTURES = ("kafka_mock",)
from tests.services import kafka_mock  # noqa: E402, F401
