"""Feast definitions -> frozen engine specs, checked against the event schema.

This is the only place that reads feature definitions: names, windows, slides, functions,
filters and entity keys all come from the Feast objects (or the registry, which round-trips
them), so there is never a second, hand-written copy of a window or a name.

Tags on a view carry what Feast has no words for (see feast_repo/features.py):
`feast_bytewax.filter`, `feast_bytewax.window`, `feast_bytewax.hll_lg_k` (approximate distinct
count precision) and `feast_bytewax.input` (which `KafkaSource` the view's events come from;
default: the only one registered). The event stream's `KafkaSource` declares the event schema
(its `JsonFormat`), the topic, the brokers, the watermark delay and, as its batch source, the
event archive a replay or backfill reads (`StreamInput`).

Every column a definition reads (aggregation column, filter column, entity join key) must be
in that schema: a definition reading an undeclared column fails here, naming the view and the
column, instead of inside a worker. One run serves every entity it finds (one `EngineSpec`
per join key, together a `FlowSpec`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from feast_bytewax.errors import SpecError
from feast_bytewax.features.enrich import (
    TAG_DERIVE,
    TAG_JOIN,
    TAG_LOOKUP,
    Enrichment,
    KeysOf,
    ViewColumns,
    registry_keys,
    view_enrichment,
)
from feast_bytewax.features.inputs import (
    TAG_INPUT,
    TAG_VERSIONS,
    StreamInput,
    TableSpec,
    dtype_name,
    event_stream,
    stream_input,
    table_spec,
)
from feast_bytewax.features.registry import make_aggregator, validate_function
from feast_bytewax.features.schema import NUMERIC_KINDS, EventSchema, parse_schema_ddl
from feast_bytewax.timeutil import td_us

TAG_FILTER = "feast_bytewax.filter"
TAG_WINDOW = "feast_bytewax.window"
TAG_PREFIX = "feast_bytewax."
WINDOW_KINDS = ("sliding", "session")
NUMERIC_FUNCTIONS = frozenset({"sum", "mean", "min", "max"})
_STRUCTURAL_TAGS = (TAG_FILTER, TAG_WINDOW, TAG_INPUT, TAG_JOIN, TAG_LOOKUP, TAG_DERIVE,
                    TAG_VERSIONS)

__all__ = [
    "EngineSpec",
    "FeatureSpec",
    "FlowSpec",
    "SpecError",
    "compile_flow",
    "compile_view",
    "compile_views",
    "load_flow_spec",
    "load_spec",
    "parse_filter",
]


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
    depends: tuple[tuple[str, str], ...] = ()  # (column, definition) of joined/derived reads

    @property
    def group_key(self) -> tuple:
        """Features with the same key share per-entity panes (or sessions)."""
        if self.kind == "session":
            return ("session", self.where, self.window_us)
        return ("sliding", self.where, self.slide_us)

    @property
    def identity(self) -> tuple:
        """What produced a value: state saved for one identity is never read by another."""
        return (self.view, self.name, self.function, self.column, self.kind, self.window_us,
                self.slide_us, tuple((c, tuple(sorted(v))) for c, v in self.where),
                self.options, self.depends)


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """Everything the dataflow needs for one entity: its join key, features and sinks."""

    join_key: str
    push_source: str
    features: tuple[FeatureSpec, ...]
    views: tuple[str, ...] = field(default=())
    enrichment: Enrichment = field(default_factory=Enrichment)
    kinds: tuple[tuple[str, str], ...] = ()  # kind of every column the features read

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def lookback_us(self) -> int:
        """How far before an instant its values depend on events: the longest window (for a
        session feature, its gap; a session longer than the longest window is cut)."""
        return max((f.window_us for f in self.features), default=0)

    @property
    def fingerprint(self) -> str:
        """A short digest of every feature's identity (recorded in recovery snapshots)."""
        text = repr((self.join_key, tuple(f.identity for f in self.features)))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """One run: every entity's `EngineSpec`, the event schema, the declared input stream."""

    entities: tuple[EngineSpec, ...]
    schema: EventSchema = field(default_factory=EventSchema)
    stream: StreamInput | None = None
    tables: tuple[TableSpec, ...] = ()  # the views events join as of their time

    def table(self, view: str) -> TableSpec:
        for t in self.tables:
            if t.view == view:
                return t
        raise SpecError(f"no joined view {view!r}; joined: {[t.view for t in self.tables]}")

    def entity(self, join_key: str) -> EngineSpec:
        for e in self.entities:
            if e.join_key == join_key:
                return e
        raise SpecError(f"no entity with join key {join_key!r}; have "
                        f"{[e.join_key for e in self.entities]}")


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


def _check_column(schema: EventSchema | ViewColumns, column: str, what: str,
                  where_txt: str) -> str:
    kind = schema.kind(column)
    if kind is None:
        raise SpecError(
            f"{where_txt}: {what} {column!r} is not an event column; {schema.where()} has "
            f"{list(schema.columns)} (declare it in the KafkaSource's JsonFormat schema_json)"
        )
    return kind


# the Feast types an aggregator's result (`Aggregator.dtype`) is written as without loss
WRITABLE_AS = {"int64": ("int64", "float64"), "float64": ("float64",)}
FEAST_TYPE_NAMES = {"int64": "Int64", "float64": "Float64"}


def compile_view(view, schema: EventSchema | None = None, join_key: str | None = None,
                 feature_views: Mapping[str, object] | None = None,
                 enrichment: Enrichment | None = None,
                 keys_of: KeysOf = registry_keys) -> list[FeatureSpec]:
    """Compile one `StreamFeatureView` (object or registry copy) into feature specs, checking
    every column it reads against `schema` (default: the spec's event fields) plus what its
    join, lookup and derive tags add (`features.enrich`)."""
    base = schema or EventSchema()
    if enrichment is None:
        enrichment = view_enrichment(view, base, join_key, dict(feature_views or {}), keys_of)
    schema = ViewColumns(base, enrichment.kinds())
    tags: Mapping[str, str] = view.tags or {}
    kind = tags.get(TAG_WINDOW, "sliding").strip().lower()
    if kind not in WINDOW_KINDS:
        raise SpecError(
            f"view {view.name!r}: {TAG_WINDOW}={kind!r}, expected one of {WINDOW_KINDS}"
        )
    where = parse_filter(tags.get(TAG_FILTER, ""), view.name)
    for column, _ in where:
        _check_column(schema, column, f"{TAG_FILTER} column", f"view {view.name!r}")
    options = tuple(sorted((k[len(TAG_PREFIX):], v) for k, v in tags.items()
                           if k.startswith(TAG_PREFIX) and k not in _STRUCTURAL_TAGS))
    fields = {f.name: f for f in view.features}
    specs = []
    for agg in view.aggregations:
        name = agg.resolved_name(agg.time_window)
        where_txt = f"view {view.name!r}, aggregation {name!r}"
        function = validate_function(agg.function, where_txt)  # canonical: "avg" -> "mean"
        try:  # bad options (e.g. a hll_lg_k tag) fail here, not later inside a worker
            result = make_aggregator(function, dict(options)).dtype
        except ValueError as e:
            raise SpecError(f"{where_txt}: {e}") from None
        if name not in fields:
            raise SpecError(f"{where_txt}: no field {name!r} in the view schema {sorted(fields)}")
        declared = dtype_name(fields[name].dtype)
        if declared not in WRITABLE_AS[result]:
            # caught here, not by the writer: parts of another type poison every later read
            raise SpecError(
                f"{where_txt}: field {name!r} is declared {fields[name].dtype}, but "
                f"{function} gives {result}; declare it "
                f"{' or '.join(FEAST_TYPE_NAMES[t] for t in WRITABLE_AS[result])}")
        if not agg.column:
            raise SpecError(f"{where_txt}: Aggregation.column is empty")
        column_kind = _check_column(schema, agg.column, "Aggregation.column", where_txt)
        if function in NUMERIC_FUNCTIONS and column_kind not in NUMERIC_KINDS:
            raise SpecError(f"{where_txt}: {function} needs a numeric column, {agg.column!r} "
                            f"is {column_kind}")
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
        reads = [agg.column, *(c for c, _ in where)]
        if kind == "session" and enrichment.joined(reads):
            raise SpecError(f"{where_txt}: a session feature cannot read joined columns "
                            "(only sliding windows are corrected when a version is late)")
        specs.append(FeatureSpec(
            name=name, view=view.name, function=function, column=agg.column, kind=kind,
            window_us=window, slide_us=slide, where=where,
            dtype=dtype_name(fields[name].dtype), options=options,
            depends=enrichment.depends(reads),
        ))
    computed = {f.name for f in specs} | set(keys_of(view)) | (
        {join_key} if join_key else set()) | {c.name for c in view.entity_columns}
    orphans = sorted(set(fields) - computed)
    if orphans:
        raise SpecError(f"view {view.name!r}: fields {orphans} have no Aggregation (nothing "
                        "would write them); add one for each, or remove them from the schema")
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


def _keys_of(entities: Mapping[str, str]) -> KeysOf:
    return lambda fv: list(_join_keys(fv, entities))


def _entity_spec(chosen: list, key: tuple[str, ...], schema: EventSchema,
                 feature_views: Mapping[str, object] | None = None,
                 keys_of: KeysOf = registry_keys) -> EngineSpec:
    names_txt = [v.name for v in chosen]
    if len(key) != 1:
        raise SpecError(f"views {names_txt} join on the composite key {list(key)}; one join "
                        "key per entity is supported (combine the columns into one)")
    for v in chosen:
        _check_column(schema, key[0], "join key", f"view {v.name!r}")
    sources = {v.stream_source.name if v.stream_source else None for v in chosen}
    if len(sources) != 1 or None in sources:
        raise SpecError(
            f"views of one entity must share one push source, got {sorted(map(str, sources))}"
        )
    chosen = sorted(chosen, key=lambda v: v.name)
    fvs = dict(feature_views or {})
    enrichment = Enrichment()
    features: list[FeatureSpec] = []
    for v in chosen:
        own = view_enrichment(v, schema, key[0], fvs, keys_of)
        try:
            enrichment = enrichment.merge(own)
        except SpecError as e:
            raise SpecError(f"view {v.name!r}: {e}") from None
        features += compile_view(v, schema, key[0], fvs, own)
    columns = ViewColumns(schema, enrichment.kinds())
    read = {f.column for f in features} | {c for f in features for c, _ in f.where}
    kinds = tuple(sorted((c, columns.kind(c) or "string") for c in read))
    return EngineSpec(join_key=key[0], push_source=next(iter(sources)), features=tuple(features),
                      views=tuple(v.name for v in chosen), enrichment=enrichment, kinds=kinds)


def _aggregating(views: Iterable) -> list:
    return [v for v in views if getattr(v, "aggregations", None)]


def _check_unique(entities: Iterable[EngineSpec]) -> None:
    names = [f.name for e in entities for f in e.features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"feature names must be unique across views, repeated: {dupes}")


def compile_views(views: Iterable, join_key: str | None = None, entities: Iterable = (),
                  schema: EventSchema | None = None,
                  feature_views: Iterable = ()) -> EngineSpec:
    """Compile every aggregating stream view of one entity fed by one push source.

    `entities` (Feast `Entity` objects) resolve join keys of views not yet applied.
    """
    schema = schema or EventSchema()
    emap = {e.name: e.join_key for e in entities}
    chosen = _aggregating(views)
    if join_key is not None:
        chosen = [v for v in chosen if list(_join_keys(v, emap)) == [join_key]]
    if not chosen:
        raise SpecError("no StreamFeatureView with aggregations found"
                        + (f" for join key {join_key!r}" if join_key else ""))
    keys = {_join_keys(v, emap) for v in chosen}
    if len(keys) != 1:
        raise SpecError(f"views span several join keys {sorted(keys)}; pass join_key")
    spec = _entity_spec(chosen, next(iter(keys)), schema,
                        {fv.name: fv for fv in feature_views}, _keys_of(emap))
    _check_unique([spec])
    return spec


def compile_flow(views: Iterable, entities: Iterable = (), sources: Iterable = (),
                 feature_views: Iterable = ()) -> FlowSpec:
    """Compile every aggregating stream view, one `EngineSpec` per join key, against the
    event schema of the declared `KafkaSource` (`sources`: Feast data sources) and the Feast
    views its joins and lookups read (`feature_views`)."""
    chosen = _aggregating(views)
    if not chosen:
        raise SpecError("no StreamFeatureView with aggregations found")
    stream = event_stream(chosen, sources)
    schema = EventSchema()
    if stream is not None:
        fmt = stream.kafka_options.message_format
        ddl = getattr(fmt, "schema_json", None)
        if ddl is None:
            raise SpecError(f"KafkaSource {stream.name!r}: message_format must be a "
                            f"JsonFormat (events are JSON), got {type(fmt).__name__}")
        schema = parse_schema_ddl(ddl, stream.name)
    emap = {e.name: e.join_key for e in entities}
    by_key: dict[tuple[str, ...], list] = {}
    for v in chosen:
        by_key.setdefault(_join_keys(v, emap), []).append(v)
    fvs = {fv.name: fv for fv in feature_views}
    keys_of = _keys_of(emap)
    specs = tuple(_entity_spec(vs, key, schema, fvs, keys_of)
                  for key, vs in sorted(by_key.items()))
    _check_unique(specs)
    srcs = {s.name: s for s in sources}
    joined = sorted({j.view for e in specs for j in e.enrichment.joins})
    tables = tuple(table_spec(fvs[name], srcs, keys_of(fvs[name])) for name in joined)
    return FlowSpec(specs, schema, stream_input(stream) if stream is not None else None,
                    tables)


def load_spec(store, join_key: str | None = None) -> EngineSpec:
    """One entity's spec from a `FeatureStore`'s registry (what `feast apply` wrote)."""
    flow = load_flow_spec(store)
    if join_key is None:
        if len(flow.entities) != 1:
            raise SpecError(f"views span several join keys "
                            f"{[e.join_key for e in flow.entities]}; pass join_key")
        return flow.entities[0]
    return flow.entity(join_key)


def load_flow_spec(store) -> FlowSpec:
    """Every entity's spec from a `FeatureStore`'s registry (what `feast apply` wrote)."""
    return compile_flow(store.list_stream_feature_views(), store.list_entities(),
                        store.list_data_sources(), store.list_feature_views())
