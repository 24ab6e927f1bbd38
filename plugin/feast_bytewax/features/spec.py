"""Feast `StreamFeatureView`s + `Aggregation`s -> frozen engine specs.

This is the only place that reads feature definitions: names, windows, slides, functions
and filters all come from the Feast objects (or the registry, which round-trips them), so
there is never a second, hand-written copy of a window or a name.

Tags on a view carry what Feast has no words for (see feast_repo/features.py):
`feast_bytewax.filter` and `feast_bytewax.window`; `feast_bytewax.hll_lg_k` tunes the
approximate distinct count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from feast_bytewax.timeutil import td_us

TAG_FILTER = "feast_bytewax.filter"
TAG_WINDOW = "feast_bytewax.window"
TAG_PREFIX = "feast_bytewax."
WINDOW_KINDS = ("sliding", "session")


class SpecError(ValueError):
    """A feature definition the engine cannot execute; the message names the view and field."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One aggregated feature, fully resolved.

    `kind` is `sliding` (tumbling is sliding with `slide_us == window_us`) or `session`
    (`window_us` is then the session gap and `slide_us` is 0). `where` is a tuple of
    `(event column, allowed values)` clauses that must all hold for an event to count.
    """

    name: str
    view: str
    function: str
    column: str
    kind: str
    window_us: int
    slide_us: int
    where: tuple[tuple[str, frozenset[str]], ...]
    dtype: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def group_key(self) -> tuple:
        """Features with the same key share per-entity panes (or sessions)."""
        if self.kind == "session":
            return ("session", self.where, self.window_us)
        return ("sliding", self.where, self.slide_us)


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Everything the dataflow needs for one entity: its join key, features and sinks."""

    join_key: str
    push_source: str
    features: tuple[FeatureSpec, ...]
    views: tuple[str, ...] = field(default=())

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


def parse_filter(text: str, view: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """`event_type=purchase|view,category=books` -> sorted clauses. Empty -> no filter."""
    clauses = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        column, sep, values = part.partition("=")
        allowed = frozenset(v.strip() for v in values.split("|") if v.strip())
        if not sep or not column.strip() or not allowed:
            raise SpecError(
                f"view {view!r}: tag {TAG_FILTER}={text!r} is not `column=value[|value]`"
                " clauses joined by ','"
            )
        clauses.append((column.strip(), allowed))
    return tuple(sorted(clauses, key=lambda c: (c[0], sorted(c[1]))))


def _dtype_name(dtype: object) -> str:
    name = str(dtype).lower()
    for known in ("int64", "int32", "float64", "float32", "string", "bool"):
        if known in name:
            return known
    return name


def compile_view(view) -> list[FeatureSpec]:
    """Compile one `StreamFeatureView` (object or registry copy) into feature specs."""
    from feast_bytewax.features.aggregators import make_aggregator, validate_function

    tags: Mapping[str, str] = view.tags or {}
    kind = tags.get(TAG_WINDOW, "sliding").strip().lower()
    if kind not in WINDOW_KINDS:
        raise SpecError(
            f"view {view.name!r}: {TAG_WINDOW}={kind!r}, expected one of {WINDOW_KINDS}"
        )
    where = parse_filter(tags.get(TAG_FILTER, ""), view.name)
    options = tuple(sorted((k[len(TAG_PREFIX):], v) for k, v in tags.items()
                           if k.startswith(TAG_PREFIX) and k not in (TAG_FILTER, TAG_WINDOW)))
    fields = {f.name: f for f in view.features}
    specs = []
    for agg in view.aggregations:
        name = agg.resolved_name(agg.time_window)
        where_txt = f"view {view.name!r}, aggregation {name!r}"
        function = validate_function(agg.function, where_txt)  # canonical: "avg" -> "mean"
        try:  # bad options (e.g. a hll_lg_k tag) fail here, not later inside a worker
            make_aggregator(function, dict(options))
        except ValueError as e:
            raise SpecError(f"{where_txt}: {e}") from None
        if name not in fields:
            raise SpecError(f"{where_txt}: no field {name!r} in the view schema {sorted(fields)}")
        if not agg.column:
            raise SpecError(f"{where_txt}: Aggregation.column is empty")
        if agg.time_window is None or td_us(agg.time_window) <= 0:
            raise SpecError(f"{where_txt}: time_window must be a positive timedelta")
        window = td_us(agg.time_window)
        if kind == "session":
            slide = 0
        else:
            slide = td_us(agg.slide_interval) if agg.slide_interval else window
            if slide <= 0 or window % slide:
                raise SpecError(
                    f"{where_txt}: slide_interval {agg.slide_interval} must divide "
                    f"time_window {agg.time_window}"
                )
        specs.append(FeatureSpec(
            name=name, view=view.name, function=function, column=agg.column, kind=kind,
            window_us=window, slide_us=slide, where=where,
            dtype=_dtype_name(fields[name].dtype), options=options,
        ))
    return specs


def _join_keys(view, entities: Mapping[str, str]) -> tuple[str, ...]:
    """A registry copy knows its join keys; a fresh object only its entity names."""
    if view.join_keys:
        return tuple(view.join_keys)
    unknown = [name for name in view.entities if name not in entities]
    if unknown or not view.entities:
        # Never guess: an entity's name is not its join key (`user` vs `user_id`).
        raise SpecError(
            f"view {view.name!r}: no join key known for entities {unknown or view.entities};"
            " pass entities=[...] or compile the registry copies (after `feast apply`)"
        )
    return tuple(entities[name] for name in view.entities)


def compile_views(views: Iterable, join_key: str | None = None,
                  entities: Iterable = ()) -> EngineSpec:
    """Compile every aggregating stream view of one entity fed by one push source.

    `entities` (Feast `Entity` objects) resolve join keys of views not yet applied.
    """
    emap = {e.name: e.join_key for e in entities}
    chosen = [v for v in views if getattr(v, "aggregations", None)]
    if join_key is not None:
        chosen = [v for v in chosen if list(_join_keys(v, emap)) == [join_key]]
    if not chosen:
        raise SpecError("no StreamFeatureView with aggregations found"
                        + (f" for join key {join_key!r}" if join_key else ""))
    keys = {_join_keys(v, emap) for v in chosen}
    if len(keys) != 1 or len(next(iter(keys))) != 1:
        raise SpecError(f"views span several or composite join keys {sorted(keys)}; pass join_key")
    sources = {v.stream_source.name if v.stream_source else None for v in chosen}
    if len(sources) != 1 or None in sources:
        raise SpecError(
            f"views of one entity must share one push source, got {sorted(map(str, sources))}"
        )
    chosen.sort(key=lambda v: v.name)
    features = tuple(f for v in chosen for f in compile_view(v))
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"feature names must be unique across views, repeated: {dupes}")
    return EngineSpec(
        join_key=next(iter(keys))[0], push_source=next(iter(sources)), features=features,
        views=tuple(v.name for v in chosen),
    )


def load_spec(store, join_key: str | None = None) -> EngineSpec:
    """Compile the views registered in a `FeatureStore`'s registry (what `feast apply` wrote)."""
    return compile_views(store.list_stream_feature_views(), join_key, store.list_entities())
