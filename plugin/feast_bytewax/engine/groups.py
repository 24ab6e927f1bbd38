"""An `EngineSpec` compiled into feature groups: which features share panes or sessions,
their aggregators and input getters, and which groups an event feeds (the filter routing is
cached per value of the filter columns, so it is one dict lookup per event)."""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from feast_bytewax.features.aggregators import make_aggregator
from feast_bytewax.engine.panes import Member, SessionGroup, SlidingGroup
from feast_bytewax.features.spec import EngineSpec


class CompiledSpec:
    """Feature groups of an `EngineSpec`, and which groups an event feeds."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        by_key: dict[tuple, list[int]] = {}
        for slot, f in enumerate(spec.features):
            by_key.setdefault(f.group_key, []).append(slot)
        self.groups: list[SlidingGroup | SessionGroup] = []
        for gid, (key, slots) in enumerate(by_key.items()):
            members = tuple(
                Member(
                    slot=s,
                    agg=make_aggregator(spec.features[s].function, dict(spec.features[s].options)),
                    get=attrgetter(spec.features[s].column),
                    n_panes=(spec.features[s].window_us // spec.features[s].slide_us
                             if key[0] == "sliding" else 0),
                )
                for s in slots
            )
            if key[0] == "session":
                self.groups.append(SessionGroup(gid, key[2], members))
            else:
                mono = tuple(m.agg.monotonic and not m.agg.exact_revert for m in members)
                self.groups.append(SlidingGroup(gid, key[2], members, mono))
        self.sliding = [isinstance(g, SlidingGroup) for g in self.groups]
        self.group_where = [spec.features[g.members[0].slot].where for g in self.groups]
        self.filter_columns = tuple(sorted({c for w in self.group_where for c, _ in w}))
        self._route_cache: dict[tuple, tuple[int, ...]] = {}
        self.empty_vector = tuple(
            m.agg.empty_value for g in self.groups for m in g.members
        )
        order = [m.slot for g in self.groups for m in g.members]
        vec = [None] * len(order)
        for pos, slot in enumerate(order):
            vec[slot] = self.empty_vector[pos]
        self.empty_vector = tuple(vec)

    def groups_for(self, ev: Any) -> tuple[int, ...]:
        """Group ids whose filter the event passes (cached per filter-column values)."""
        key = tuple(getattr(ev, c) for c in self.filter_columns)
        hit = self._route_cache.get(key)
        if hit is None:
            values = dict(zip(self.filter_columns, key, strict=True))
            hit = tuple(gid for gid, where in enumerate(self.group_where)
                        if all(values[c] in allowed for c, allowed in where))
            if len(self._route_cache) < 4096:
                self._route_cache[key] = hit
        return hit
