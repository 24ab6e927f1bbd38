"""The Feast repo a run works on: open it, apply it, compile its definitions.

`apply_repo` compiles every stream view of `feast_repo/` first, then runs `feast apply`
in-process (the same code path as Feast's CLI): a definition the engine cannot run (an
unknown function, an undeclared column) fails at `apply`, before anything is registered,
with the list of what is valid, not minutes later inside a worker.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import feast.stream_feature_view  # noqa: F401  (installs Feast's warning filter first)
import redis
from feast import FeatureStore
from feast.repo_config import load_repo_config
from feast.repo_operations import apply_total, parse_repo

from feast_bytewax.errors import ConfigError
from feast_bytewax.features.spec import FlowSpec, compile_flow
from feast_bytewax.stores.compaction import CompactResult
from feast_bytewax.stores.parquet_folder import ParquetFolderOfflineStoreConfig, compact_source

log = logging.getLogger(__name__)


def quiet_feast_warnings() -> None:
    """Feast warns on every StreamFeatureView construction that they are experimental; we
    know. (Feast installs its own 'once' filter at import, so this runs after it.)"""
    warnings.filterwarnings("ignore", message="Stream feature views are experimental")


def check_repo(repo_path: str | Path) -> Path:
    """The repo root, resolved; a `ConfigError` naming what is missing otherwise."""
    repo = Path(repo_path).resolve()
    if not repo.is_dir():
        raise ConfigError(f"--repo {repo_path}: no such directory (the Feast repo root, "
                          "holding feature_store.yaml)")
    if not (repo / "feature_store.yaml").is_file():
        raise ConfigError(f"--repo {repo_path}: no feature_store.yaml in {repo} (run from the "
                          "project root or pass --repo)")
    return repo


def open_store(repo_path: str | Path, check_online: bool = False) -> FeatureStore:
    """A `FeatureStore` on the repo; a yaml Feast cannot read, or (`check_online`) an online
    store that cannot be reached, is a `ConfigError` saying what to fix."""
    repo = check_repo(repo_path)
    quiet_feast_warnings()
    try:
        store = FeatureStore(repo_path=str(repo))
    except Exception as e:
        raise ConfigError(f"{repo / 'feature_store.yaml'}: Feast cannot load it: "
                          f"{' '.join(str(e).split())[:300]}") from None
    if check_online:
        check_online_store(store)
    return store


def check_online_store(store: FeatureStore) -> None:
    """Before a run starts: an unset variable in the online store settings, or a Redis that
    does not answer, as one line (inside the dataflow it would be a panic, or a hang)."""
    cfg = store.config.online_store
    conn = getattr(cfg, "connection_string", None)
    if conn is None:
        return
    if "$" in conn:
        raise ConfigError(f"online_store.connection_string is {conn!r} in feature_store.yaml: "
                          "the variable is not set (e.g. export FEAST_REDIS=localhost:6379)")
    nodes = [c for c in conn.split(",") if "=" not in c]
    params = dict(c.split("=", 1) for c in conn.split(",") if "=" in c)
    host, _, port = (nodes[0] if nodes else "").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"online_store.connection_string {conn!r}: expected host:port[,...]")
    client = redis.Redis(host=host, port=int(port), db=int(params.get("db", 0) or 0),
                         password=params.get("password") or None,
                         ssl=str(params.get("ssl", "")).lower() == "true",
                         socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as e:
        raise ConfigError(f"cannot reach the Redis online store at {host}:{port}: {e} (start "
                          "it, or fix FEAST_REDIS / online_store.connection_string)") from None
    finally:
        client.close()


@contextmanager
def fresh_definitions(repo: Path) -> Iterator[None]:
    """Import the repo's definition modules from `repo`, as edited now, and leave the process
    as it was: `repo` first on `sys.path` (as Feast's CLI does: definitions import each
    other), earlier imports of its packages (another copy, or before an edit) set aside for
    the block and put back after it."""
    packages = {p.name for p in repo.iterdir() if (p / "__init__.py").is_file()}
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] in packages}
    path = list(sys.path)
    sys.path.insert(0, str(repo))
    cwd = os.getcwd()
    try:
        os.chdir(repo)  # Feast names the definition modules relative to the cwd
        yield
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        for m in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[m]
        sys.modules.update(saved)


def compile_repo(repo_path: str | Path) -> FlowSpec:
    """Compile the repo's definitions without registering anything (`SpecError` for one the
    engine cannot run): what a command that would first overwrite data checks up front."""
    repo = check_repo(repo_path)
    quiet_feast_warnings()
    with fresh_definitions(repo):
        contents = parse_repo(repo)
        return compile_flow(contents.stream_feature_views, contents.entities,
                            contents.data_sources, contents.feature_views)


def apply_repo(repo_path: str | Path) -> FlowSpec:
    """Compile the repo's definitions (raises `SpecError` for one the engine cannot run, and
    registers nothing then), then `feast apply` them. Returns the compiled spec."""
    repo = check_repo(repo_path)
    quiet_feast_warnings()
    with fresh_definitions(repo):
        contents = parse_repo(repo)
        spec = compile_flow(contents.stream_feature_views, contents.entities,
                            contents.data_sources, contents.feature_views)
        apply_total(load_repo_config(repo, repo / "feature_store.yaml"), repo,
                    skip_source_validation=True)
    log.info("compiled %d feature(s) for %s", sum(len(e.features) for e in spec.entities),
             ", ".join(e.join_key for e in spec.entities))
    return spec


def compact_repo(repo_path: str | Path, grace_s: float = 60.0) -> dict[str, CompactResult]:
    """Compact every parquet-folder batch source of the registered stream views."""
    store = open_store(repo_path)
    if not isinstance(store.config.offline_store, ParquetFolderOfflineStoreConfig):
        raise ConfigError("compact works on the parquet-folder offline store; "
                          f"this repo uses {type(store.config.offline_store).__name__}")
    out: dict[str, CompactResult] = {}
    for view in store.list_stream_feature_views():
        source = view.batch_source
        if source is None or source.name in out:
            continue
        out[source.name] = compact_source(store.config, source,
                                          [c.name for c in view.entity_columns], grace_s)
    return out
