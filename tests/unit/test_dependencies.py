"""Every third-party package the plugin and the Bytewax entry points import is a declared
dependency in pyproject.toml (or comes with one, by the declared dependency's own
requirements), so the README's first command (`pip install -e .`, no test extras) gives a
working `feast-bytewax`. The test extras pulled in pydantic-settings once and hid that it was
missing from the base install."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# imported directly, installed by a declared dependency's own requirements (checked below)
BROUGHT_BY = {"numpy": "pandas", "pytz": "pandas", "dask": "feast", "redis": "feast",
              "confluent-kafka": "bytewax"}


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}


def imported_top_levels() -> set[str]:
    out = set()
    for folder in ("plugin", "dataflows"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    out.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"feast_bytewax", "dataflows", "__future__"}


def test_every_imported_package_is_declared():
    dists = metadata.packages_distributions()
    deps = declared()
    missing = []
    for top in sorted(imported_top_levels()):
        names = {_name(d) for d in dists.get(top, [top])}
        if names & deps:
            continue
        via = {BROUGHT_BY.get(n) for n in names} - {None}
        if via & deps and all(_requires(v, n) for v in via for n in names if n in BROUGHT_BY):
            continue
        missing.append(f"{top} ({', '.join(sorted(names))})")
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def _requires(dist: str, wanted: str) -> bool:
    """Does the installed `dist` require `wanted` (so installing it installs that)?"""
    return any(_name(r) == wanted for r in metadata.requires(dist) or ())
