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
from feast import FeatureStore
from feast.repo_config import load_repo_config
from feast.repo_operations import apply_total, parse_repo

from feast_bytewax.errors import ConfigError
from feast_bytewax.features.spec import FlowSpec, compile_flow

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


def open_store(repo_path: str | Path) -> FeatureStore:
    """A `FeatureStore` on the repo."""
    repo = check_repo(repo_path)
    quiet_feast_warnings()
    return FeatureStore(repo_path=str(repo))


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


def apply_repo(repo_path: str | Path) -> FlowSpec:
    """Compile the repo's definitions (raises `SpecError` for one the engine cannot run, and
    registers nothing then), then `feast apply` them. Returns the compiled spec."""
    repo = check_repo(repo_path)
    quiet_feast_warnings()
    with fresh_definitions(repo):
        contents = parse_repo(repo)
        spec = compile_flow(contents.stream_feature_views, contents.entities,
                            contents.data_sources)
        apply_total(load_repo_config(repo, repo / "feature_store.yaml"), repo,
                    skip_source_validation=True)
    log.info("compiled %d feature(s) for %s", sum(len(e.features) for e in spec.entities),
             ", ".join(e.join_key for e in spec.entities))
    return spec
