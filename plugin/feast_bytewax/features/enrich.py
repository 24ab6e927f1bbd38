"""Columns beyond the event: joined, looked up and derived, declared on the Feast views.

Three view tags, one small vocabulary (see feast_repo/features.py):

- ``feast_bytewax.join: user_profile`` — a temporal (as-of) join: each event reads the
  features of the version of that Feast `FeatureView` valid at its event time (the latest
  with `timestamp_field` <= event time), for its own entity key. The joined view must key on
  the same entity. Its features become columns under their own names (`credit_score`).
- ``feast_bytewax.lookup: category_risk:risk=0.0`` — an online lookup of one feature of
  another view, keyed by an event column (the looked-up view's join key), read from the
  online store at processing time, with a fallback (``=value``; none: missing) on a miss or a
  timeout. The column is ``<view>__<feature>`` (`category_risk__risk`).
- ``feast_bytewax.derive: amount_to_credit = amount / credit_score; risky = category_risk__risk
  >= 0.8`` — columns computed from the others (``+ - * /``, comparisons, ``and or not``,
  numbers, ``'strings'``); a missing operand, or a division by zero, gives a missing value,
  which every aggregator skips and no filter matches.

Aggregations and filters read these columns like event columns; they are checked when the
definitions compile. Expressions are parsed with Python's own `ast` and compiled to plain
closures over column getters: nothing is ever `eval`-ed.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feast_bytewax.errors import SpecError

TAG_JOIN = "feast_bytewax.join"
TAG_LOOKUP = "feast_bytewax.lookup"
TAG_DERIVE = "feast_bytewax.derive"

_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
            ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne}
FEAST_KINDS = {"int32": "int", "int64": "int", "float32": "double", "float64": "double",
               "string": "string", "bool": "bool", "unix_timestamp": "timestamp"}


@dataclass(frozen=True, slots=True)
class TemporalJoin:
    """Features of a Feast view joined as of each event's time, by the entity key."""

    view: str
    key: str
    columns: tuple[tuple[str, str], ...]  # (feature, kind)
    timestamp_field: str
    push_source: str | None


@dataclass(frozen=True, slots=True)
class Lookup:
    """One feature of another view read from the online store by an event column."""

    view: str
    feature: str
    key: str
    kind: str
    fallback: Any = None

    @property
    def column(self) -> str:
        return f"{self.view}__{self.feature}"


@dataclass(frozen=True, slots=True)
class Derived:
    """A column computed from others by an expression."""

    name: str
    expr: str
    kind: str
    inputs: tuple[str, ...]


def feast_kind(dtype: object) -> str:
    name = str(dtype).lower()
    for feast_name, kind in FEAST_KINDS.items():
        if feast_name in name:
            return kind
    return "string"


def _literal(text: str, kind: str, where: str) -> Any:
    text = text.strip()
    try:
        if kind == "double":
            return float(text)
        if kind == "int":
            return int(text)
        if kind == "bool":
            return {"true": True, "false": False}[text.lower()]
    except (ValueError, KeyError):
        raise SpecError(f"{where}: {text!r} is not a {kind}") from None
    return text


KeysOf = Callable[[Any], list[str]]


def registry_keys(fv: Any) -> list[str]:
    """A registry copy's join keys (a fresh object knows only its entities' names: the
    compiler passes a resolver that knows the entities)."""
    return list(fv.join_keys or [])


def parse_lookups(text: str, views: dict, view: str,
                  keys_of: KeysOf = registry_keys) -> tuple[Lookup, ...]:
    """`category_risk:risk=0.0, other:f` -> lookups (checked against the Feast views)."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        ref, _, fallback = item.partition("=")
        target, _, feature = ref.strip().partition(":")
        where = f"view {view!r}: {TAG_LOOKUP} {item!r}"
        fv = views.get(target)
        if fv is None or not feature:
            raise SpecError(f"{where}: expected `view:feature[=fallback]` of a FeatureView; "
                            f"known: {sorted(views)}")
        fields = {f.name: f for f in fv.features}
        if feature not in fields:
            raise SpecError(f"{where}: {target!r} has no feature {feature!r} ({sorted(fields)})")
        keys = keys_of(fv)
        if len(keys) != 1:
            raise SpecError(f"{where}: {target!r} must have one join key, has {keys}")
        kind = feast_kind(fields[feature].dtype)
        value = _literal(fallback, kind, where) if fallback.strip() else None
        out.append(Lookup(target, feature, keys[0], kind, value))
    return tuple(out)


def temporal_join(fv: Any, entity_key: str, view: str,
                  keys_of: KeysOf = registry_keys) -> TemporalJoin:
    keys = keys_of(fv)
    if keys != [entity_key]:
        raise SpecError(f"view {view!r}: {TAG_JOIN} {fv.name!r} keys on {keys}; a temporal join "
                        f"needs the view's own entity key [{entity_key!r}]")
    source = fv.batch_source
    ts = getattr(source, "timestamp_field", None) or "event_timestamp"
    push = fv.stream_source.name if getattr(fv, "stream_source", None) is not None else None
    cols = tuple((f.name, feast_kind(f.dtype)) for f in fv.features if f.name != entity_key)
    return TemporalJoin(fv.name, entity_key, cols, ts, push)


def parse_derived(text: str, kind_of: Callable[[str], str | None],
                  view: str) -> tuple[Derived, ...]:
    """`a = x / y; b = a > 1` -> derived columns, in order (each may use the earlier ones)."""
    out: list[Derived] = []
    known: dict[str, str] = {}

    def kind(name: str) -> str | None:
        return known.get(name) or kind_of(name)

    for item in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, expr = item.partition("=")
        name = name.strip()
        where = f"view {view!r}: {TAG_DERIVE} {item!r}"
        if not sep or not name.isidentifier():
            raise SpecError(f"{where}: expected `name = expression`")
        if kind(name) is not None:
            raise SpecError(f"{where}: {name!r} is already a column")
        try:
            tree = ast.parse(expr.strip(), mode="eval")
        except SyntaxError as e:
            raise SpecError(f"{where}: {e.msg}") from None
        inputs = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})
        missing = [n for n in inputs if kind(n) is None]
        if missing:
            raise SpecError(f"{where}: unknown columns {missing}")
        result = _check(tree.body, kind, where)
        known[name] = result
        out.append(Derived(name, expr.strip(), result, tuple(inputs)))
    return tuple(out)


def _check(node: ast.AST, kind: Callable[[str], str | None], where: str) -> str:
    """The kind an expression produces; a `SpecError` for anything outside the vocabulary."""
    if isinstance(node, ast.Name):
        return kind(node.id) or "string"
    if isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float | str):
        return {bool: "bool", int: "double", float: "double", str: "string"}[type(node.value)]
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        _check(node.left, kind, where)
        _check(node.right, kind, where)
        return "double"
    if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
        for n in (node.left, *node.comparators):
            _check(n, kind, where)
        return "bool"
    if isinstance(node, ast.BoolOp) or (isinstance(node, ast.UnaryOp)
                                        and isinstance(node.op, ast.Not)):
        for n in (node.values if isinstance(node, ast.BoolOp) else [node.operand]):
            _check(n, kind, where)
        return "bool"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        _check(node.operand, kind, where)
        return "double"
    raise SpecError(f"{where}: {type(node).__name__} is not part of the expression vocabulary "
                    "(+ - * /, comparisons, and/or/not, numbers, strings, column names)")


def compile_expression(expr: str, getter: Callable[[str], Callable[[Any], Any]]
                       ) -> Callable[[Any], Any]:
    """A derived column's expression as a closure over column getters (checked already)."""
    return _closure(ast.parse(expr, mode="eval").body, getter)


def _closure(node: ast.AST, getter: Callable) -> Callable[[Any], Any]:
    if isinstance(node, ast.Name):
        return getter(node.id)
    if isinstance(node, ast.Constant):
        value = node.value
        return lambda ev: value
    if isinstance(node, ast.UnaryOp):
        inner = _closure(node.operand, getter)
        if isinstance(node.op, ast.Not):
            return lambda ev: None if (v := inner(ev)) is None else not v
        return lambda ev: None if (v := inner(ev)) is None else -v
    if isinstance(node, ast.BinOp):
        fn, a, b = _ARITH[type(node.op)], _closure(node.left, getter), _closure(node.right, getter)

        def arith(ev: Any) -> Any:
            x = a(ev)
            if x is None or x != x:
                return None
            y = b(ev)
            if y is None or y != y:
                return None
            try:
                return fn(x, y)
            except (ZeroDivisionError, TypeError):
                return None

        return arith
    if isinstance(node, ast.Compare) and len(node.ops) == 1:  # the usual `x >= 0.8`
        op, a, b = _COMPARE[type(node.ops[0])], _closure(node.left, getter), \
            _closure(node.comparators[0], getter)

        def compare1(ev: Any) -> Any:
            x = a(ev)
            if x is None:
                return None
            y = b(ev)
            if y is None:
                return None
            try:
                return op(x, y)
            except TypeError:
                return None

        return compare1
    if isinstance(node, ast.Compare):
        parts = [_closure(n, getter) for n in (node.left, *node.comparators)]
        ops = [_COMPARE[type(o)] for o in node.ops]

        def compare(ev: Any) -> Any:
            values = [p(ev) for p in parts]
            if any(v is None for v in values):
                return None
            try:
                return all(op(values[i], values[i + 1]) for i, op in enumerate(ops))
            except TypeError:
                return None

        return compare
    parts = [_closure(n, getter) for n in node.values]  # BoolOp
    conj = isinstance(node.op, ast.And)

    def boolean(ev: Any) -> Any:
        values = [p(ev) for p in parts]
        if any(v is None for v in values):
            return None
        return all(values) if conj else any(values)

    return boolean


@dataclass(frozen=True, slots=True)
class Enrichment:
    """Everything one entity's views add to the event columns."""

    joins: tuple[TemporalJoin, ...] = ()
    lookups: tuple[Lookup, ...] = ()
    derived: tuple[Derived, ...] = ()

    def kinds(self) -> dict[str, str]:
        out = {c: k for j in self.joins for c, k in j.columns}
        out.update({lk.column: lk.kind for lk in self.lookups})
        out.update({d.name: d.kind for d in self.derived})
        return out

    def definition(self, column: str) -> str | None:
        """What a column added here is (for the identity of the features reading it)."""
        for d in self.derived:
            if d.name == column:
                return f"derive:{d.expr}"
        for lk in self.lookups:
            if lk.column == column:
                return f"lookup:{lk.view}:{lk.feature}={lk.fallback!r}"
        for j in self.joins:
            if column in dict(j.columns):
                return f"join:{j.view}"
        return None

    def depends(self, columns: list[str]) -> tuple[tuple[str, str], ...]:
        """(column, definition) of every added column `columns` read, transitively."""
        seen: dict[str, str] = {}
        todo = list(columns)
        by_name = {d.name: d for d in self.derived}
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            d = self.definition(c)
            if d is None:
                continue
            seen[c] = d
            if c in by_name:
                todo.extend(by_name[c].inputs)
        return tuple(sorted(seen.items()))

    def joined(self, columns: list[str]) -> bool:
        """Do these columns read a joined column (directly or through a derived one)?"""
        return any(d.startswith("join:") for _, d in self.depends(columns))

    def merge(self, other: Enrichment) -> Enrichment:
        def union(a: tuple, b: tuple, name: Callable[[Any], str]) -> tuple:
            out = {name(x): x for x in a}
            for x in b:
                if name(x) in out and out[name(x)] != x:
                    raise SpecError(f"{name(x)!r} is defined twice, differently: "
                                    f"{out[name(x)]} and {x}")
                out[name(x)] = x
            return tuple(out.values())

        return Enrichment(union(self.joins, other.joins, lambda j: j.view),
                          union(self.lookups, other.lookups, lambda lk: lk.column),
                          union(self.derived, other.derived, lambda d: d.name))


class ViewColumns:
    """The columns a view may read: the event schema's, plus what its tags add."""

    def __init__(self, schema: Any, added: dict[str, str]) -> None:
        self.schema = schema
        self.added = added

    def kind(self, column: str) -> str | None:
        return self.schema.kind(column) or self.added.get(column)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.schema.columns, *self.added)

    def where(self) -> str:
        return self.schema.where() + (" (plus joined, looked-up and derived columns)"
                                      if self.added else "")


def view_enrichment(view: Any, schema: Any, entity_key: str | None,
                    feature_views: dict[str, Any],
                    keys_of: KeysOf = registry_keys) -> Enrichment:
    """What a view's join, lookup and derive tags add (checked against the Feast views)."""
    tags = view.tags or {}
    joins = []
    for name in filter(None, (p.strip() for p in tags.get(TAG_JOIN, "").split(","))):
        fv = feature_views.get(name)
        if fv is None:
            raise SpecError(f"view {view.name!r}: {TAG_JOIN} {name!r} is not a FeatureView; "
                            f"known: {sorted(feature_views)}")
        joins.append(temporal_join(fv, entity_key or "", view.name, keys_of))
    lookups = parse_lookups(tags.get(TAG_LOOKUP, ""), feature_views, view.name, keys_of)
    added = {c: k for j in joins for c, k in j.columns}
    added.update({lk.column: lk.kind for lk in lookups})
    for c in added:
        if schema.kind(c) is not None:
            raise SpecError(f"view {view.name!r}: joined/looked-up column {c!r} is also an "
                            "event column")
    for lk in lookups:
        if schema.kind(lk.key) is None:
            raise SpecError(f"view {view.name!r}: {TAG_LOOKUP} {lk.view!r} is keyed by "
                            f"{lk.key!r}, which is not an event column")
    derived = parse_derived(tags.get(TAG_DERIVE, ""),
                            lambda c: schema.kind(c) or added.get(c), view.name)
    return Enrichment(tuple(joins), lookups, derived)
