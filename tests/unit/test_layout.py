"""The package's shape, checked: imports point one way, and nothing hides a cycle.

The import graph is built from the source (module-level and function-level imports alike),
so a cycle cannot hide behind an import inside a function. Layers, bottom up:

    records, errors, timeutil          (and config, training at the top of the stack)
    features                           the definitions compiled
    engine, ingest, kafka, stores, observability, datagen   one concern each
    dataflow, skew                     wiring the concerns into runs / the batch check
    cli                                parse and delegate

A package may import its own layer's peers only where the table below allows it, and never
upward. Every module also imports cleanly on its own.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import feast_bytewax

ROOT = Path(feast_bytewax.__file__).parent
PKG = "feast_bytewax"

# What each part may import (besides itself and the bottom layer).
BOTTOM = {"records", "errors", "timeutil"}
ALLOWED = {
    "records": set(), "errors": set(), "timeutil": set(),
    "features": set(),
    "engine": {"features"},
    "ingest": {"features"},
    "observability": {"features"},
    "kafka": {"features", "observability"},
    "stores": {"features", "ingest"},
    "datagen": set(),
    "config": set(),
    "training": {"features"},
    "dataflow": {"config", "features", "engine", "ingest", "kafka", "stores", "observability",
                 "datagen", "training"},
    "skew": {"config", "features", "engine", "ingest", "stores"},
    "cli": {"config", "features", "dataflow", "datagen", "observability", "skew"},
}


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = p
    return out


def part(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else ""


def imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(imported module, names, inside a function) for every import of the package."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PKG):
            out.append((node.module, [a.name for a in node.names], id(node) not in top))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(PKG):
                    out.append((a.name, [], id(node) not in top))
    return out


def test_no_cycle_no_function_level_import_no_private_name():
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    problems = []
    for m, path in mods.items():
        for target, names, in_function in imports(path):
            if in_function:
                problems.append(f"{m}: function-level import of {target}")
            problems += [f"{m}: imports private {target}.{n}" for n in names if n.startswith("_")]
            for t in (target, *(f"{target}.{n}" for n in names)):
                if t in mods and t != m:
                    graph[m].add(t)
    assert not problems, problems
    seen: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, trail: list[str]) -> None:
        seen[m] = 1
        for n in graph[m]:
            if seen.get(n) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, m, n])}")
            if n not in seen:
                visit(n, [*trail, m])
        seen[m] = 2

    for m in mods:
        if m not in seen:
            visit(m, [])


def test_imports_point_one_way():
    wrong = []
    for m, path in modules().items():
        src = part(m)
        if src not in ALLOWED:
            continue
        for target, _, _ in imports(path):
            dst = part(target)
            if dst and dst != src and dst not in BOTTOM and dst not in ALLOWED[src]:
                wrong.append(f"{m} -> {target}")
    assert not wrong, wrong


def test_every_part_is_known_and_modules_are_small():
    assert {part(m) for m in modules() if part(m)} <= set(ALLOWED)
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 450}
    assert not big, big


@pytest.mark.parametrize("name", sorted(
    m.name for m in pkgutil.walk_packages(feast_bytewax.__path__, f"{PKG}.")))
def test_module_imports(name):
    importlib.import_module(name)
