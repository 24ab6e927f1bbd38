"""An `EngineSpec` compiled into feature groups: which features share panes or sessions,
their aggregators and input getters, the entity key getter, and which groups an event feeds
(the filter routing is cached per value of the filter columns, so it is one dict lookup per
event). Every column is read through `records.column_getter`, so a spec field and a declared
extra column cost the same and no name is hard-wired."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from feast_bytewax.engine.sessions import SessionGroup
from feast_bytewax.engine.sliding import SlidingGroup
from feast_bytewax.engine.state import Member
from feast_bytewax.features.enrich import compile_expression
from feast_bytewax.features.registry import make_aggregator
from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.records import column_getter

_NO_JOIN: dict = {}

ROUTE_CACHE_MAX = 4096


class CompiledSpec:
    """Feature groups of an `EngineSpec`, and which groups an event feeds."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.key_of = column_getter(spec.join_key)
        enrich = spec.enrichment
        self._joined = {c: j.view for j in enrich.joins for c, _ in j.columns}
        self._derived = {d.name: d.expr for d in enrich.derived}
        self._getters: dict[str, Callable] = {}
        self.kinds = dict(spec.kinds)
        by_key: dict[tuple, list[int]] = {}
        for slot, f in enumerate(spec.features):
            by_key.setdefault(f.group_key, []).append(slot)
        self.groups: list[SlidingGroup | SessionGroup] = []
        for gid, (key, slots) in enumerate(by_key.items()):
            members = tuple(
                Member(
                    slot=s,
                    agg=make_aggregator(spec.features[s].function, dict(spec.features[s].options)),
                    get=self.getter(spec.features[s].column),
                    n_panes=(spec.features[s].window_us // spec.features[s].slide_us
                             if key[0] == "sliding" else 0),
                    identity=spec.features[s].identity,
                )
                for s in slots
            )
            if key[0] == "session":
                self.groups.append(SessionGroup(gid, key[2], members))
            else:
                mono = tuple(m.agg.monotonic and not m.agg.exact_revert for m in members)
                self.groups.append(SlidingGroup(gid, key[2], members, mono))
        self.group_where = [tuple((c, frozenset(self._typed(c, v) for v in allowed))
                                  for c, allowed in spec.features[g.members[0].slot].where)
                            for g in self.groups]
        self.filter_columns = tuple(sorted({c for w in self.group_where for c, _ in w}))
        self._filter_getters = tuple(self.getter(c) for c in self.filter_columns)
        self._route_key = _cache_key(self._filter_getters)
        # groups whose value depends on joined columns: they keep their events for corrections
        self.joined_groups: dict[int, tuple[tuple, int]] = {}
        for g in self.groups:
            feats = [spec.features[m.slot] for m in g.members]
            reads = [f.column for f in feats] + [c for c, _ in feats[0].where]
            if enrich.joined(reads):
                base = tuple((c, a) for c, a in self.group_where[g.gid]
                             if not enrich.joined([c]))
                span = max(m.n_panes for m in g.members) * g.slide
                self.joined_groups[g.gid] = (base, span)
        self.joins = bool(enrich.joins)
        self._route_cache: dict[tuple, tuple[int, ...]] = {}
        # the event columns that decide whether any join-reading group takes an event
        self._join_columns = tuple(sorted({c for base, _ in self.joined_groups.values()
                                           for c, _ in base}))
        self._join_key = _cache_key(tuple(self.getter(c) for c in self._join_columns))
        self._join_cache: dict[tuple, bool] = {}
        # per looked-up column, the clauses on plain event columns of each group reading it
        # (directly, through a derived column or a filter): only those events need the read
        looked = {lk.column for lk in enrich.lookups}
        self.lookup_gates: dict[str, list[tuple]] = {c: [] for c in looked}
        for g in self.groups:
            feats = [spec.features[m.slot] for m in g.members]
            reads = [f.column for f in feats] + [c for c, _ in feats[0].where]
            base = tuple((c, a) for c, a in self.group_where[g.gid] if not enrich.depends([c]))
            for c in {c for c, _ in enrich.depends(reads)} & looked:
                self.lookup_gates[c].append(base)
        vec: list[Any] = [None] * len(spec.features)
        for g in self.groups:
            for m in g.members:
                vec[m.slot] = m.agg.empty_value
        self.empty_vector = tuple(vec)

    def getter(self, column: str) -> Callable[[Any], Any]:
        """A reader of any column: an event's, a joined table's (`Event.joined`), a looked-up
        one (in `Event.extra`) or a derived one (its expression over the others)."""
        got = self._getters.get(column)
        if got is None:
            if column in self._derived:
                got = compile_expression(self._derived[column], self.getter)
            elif column in self._joined:
                def got(ev: Any, c: str = column, view: str = self._joined[column]) -> Any:
                    entry = (ev.joined or _NO_JOIN).get(view)
                    return None if entry is None else entry[1].get(c)
            else:
                got = column_getter(column)
            self._getters[column] = got
        return got

    def _typed(self, column: str, value: str) -> Any:
        """A filter's value in the column's type (a derived `risky` is a bool, not 'true')."""
        kind = self.kinds.get(column)
        if kind == "bool":
            return value.strip().lower() == "true"
        if kind in ("double", "int"):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    def retains(self, gid: int, ev: Any) -> bool:
        """Does a join-reading group keep this event (its clauses on event columns hold)?"""
        base, _ = self.joined_groups[gid]
        return all(self.getter(c)(ev) in allowed for c, allowed in base)

    def needs_join(self, ev: Any) -> bool:
        """Does a join-reading group take this event (its clauses on event columns hold)?
        Only those events are joined (and kept for corrections): most events of a stream
        feed no joined feature (cached per those columns' values)."""
        key = self._join_key(ev)
        hit = self._join_cache.get(key)
        if hit is None:
            hit = any(self.retains(gid, ev) for gid in self.joined_groups)
            if len(self._join_cache) < ROUTE_CACHE_MAX:
                self._join_cache[key] = hit
        return hit

    def lookup_wanted(self, column: str) -> Callable[[Any], bool]:
        """Does any group reading looked-up `column` take this event (its clauses on event
        columns hold)? `dataflow.lookup` reads the online store only for those events: a
        lookup feeding purchase features need not be read for every view event."""
        bases = self.lookup_gates.get(column, [])
        if any(not base for base in bases):
            return lambda ev: True
        getters = {c: self.getter(c) for base in bases for c, _ in base}
        key_of = _cache_key(tuple(getters[c] for c in sorted(getters)))
        cache: dict[Any, bool] = {}

        def wanted(ev: Any) -> bool:
            key = key_of(ev)
            hit = cache.get(key)
            if hit is None:
                hit = any(all(getters[c](ev) in allowed for c, allowed in base)
                          for base in bases)
                if len(cache) < ROUTE_CACHE_MAX:
                    cache[key] = hit
            return hit

        return wanted

    def groups_for(self, ev: Any) -> tuple[int, ...]:
        """Group ids whose filter the event passes (cached per filter-column values)."""
        key = self._route_key(ev)
        hit = self._route_cache.get(key)
        if hit is None:
            values = {c: get(ev) for c, get in zip(self.filter_columns, self._filter_getters,
                                                    strict=True)}
            hit = tuple(gid for gid, where in enumerate(self.group_where)
                        if all(values[c] in allowed for c, allowed in where))
            if len(self._route_cache) < ROUTE_CACHE_MAX:
                self._route_cache[key] = hit
        return hit


def _cache_key(getters: tuple[Callable, ...]) -> Callable[[Any], Any]:
    """The routing caches' key of an event: its values of `getters` (one value, not a
    tuple, for one column; a tuple built by a generator per event cost ~1 us)."""
    if len(getters) == 1:
        return getters[0]
    if len(getters) == 2:
        a, b = getters
        return lambda ev: (a(ev), b(ev))
    return lambda ev: tuple(get(ev) for get in getters)
