"""What a run reads besides the feature definitions: the event stream and the joined tables.

Both are declared in `feast_repo/` as Feast objects, never as a second copy:

- the **event stream** is a Feast `KafkaSource` (topic, brokers, JSON schema of one event,
  watermark delay) whose batch source is the event archive a replay reads (`StreamInput`);
- a **joined table** is the Feast `FeatureView` a stream view names in its
  `feast_bytewax.join` tag (`features.enrich`): its join key, features and timestamp field
  say what a version is (`TableSpec`), its push source is where the flow writes the versions
  it reads (both stores then hold them, so `get_historical_features` joins them as of each
  row's time), and its tag `feast_bytewax.versions` may name the Feast `FileSource` holding
  the versions at rest (what `replay` reads when no `--profiles` is given).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from feast_bytewax.errors import SpecError
from feast_bytewax.features.enrich import feast_kind

TAG_INPUT = "feast_bytewax.input"
TAG_VERSIONS = "feast_bytewax.versions"


@dataclass(frozen=True, slots=True)
class StreamInput:
    """The event stream declared in `feast_repo/` as a Feast `KafkaSource`."""

    name: str
    brokers: tuple[str, ...]
    topic: str
    watermark_delay_s: float | None
    archive: str | None  # path/URI of the batch source: the event archive replays read
    timestamp_field: str = "event_timestamp"


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One stored column of a table's rows (what the Feast writer needs of a feature)."""

    name: str
    kind: str  # the validator's kind: int, double, string, bool, timestamp
    dtype: str  # Feast's: int32, int64, float64, string, bool


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A Feast view whose versions events join as of their time (`feast_bytewax.join`).

    Shaped like an `EngineSpec` where the Feast writer reads one (`join_key`,
    `push_source`, `views`, `features`, `feature_names`): the versions the flow reads are
    written through the view's push source like feature rows.
    """

    view: str
    join_key: str
    push_source: str | None
    features: tuple[ColumnSpec, ...]
    timestamp_field: str
    archive: str | None = None  # the declared versions at rest (`feast_bytewax.versions`)

    @property
    def views(self) -> tuple[str, ...]:
        return (self.view,)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.features)

    @property
    def record_columns(self) -> tuple[str, ...]:
        """The columns of one version at rest or on the wire."""
        return (self.join_key, *self.feature_names, self.timestamp_field)


def dtype_name(dtype: object) -> str:
    """Feast's type as the writer's dtype name (`Int32` -> `int32`)."""
    name = str(dtype).lower()
    for known in ("int64", "int32", "float64", "float32", "string", "bool"):
        if known in name:
            return known
    return name


def table_spec(fv: Any, sources: Mapping[str, Any], keys: list[str]) -> TableSpec:
    """A joined Feast view (object or registry copy) with its join keys -> `TableSpec`."""
    if len(keys) != 1:
        raise SpecError(f"joined view {fv.name!r} must have one join key, has {keys}")
    batch = fv.batch_source
    ts = getattr(batch, "timestamp_field", None) or "event_timestamp"
    push = fv.stream_source.name if getattr(fv, "stream_source", None) is not None else None
    cols = tuple(ColumnSpec(f.name, feast_kind(f.dtype), dtype_name(f.dtype))
                 for f in fv.features if f.name != keys[0])
    archive = None
    named = (fv.tags or {}).get(TAG_VERSIONS, "").strip()
    if named:
        src = sources.get(named)
        path = getattr(src, "path", None)
        if not path:
            raise SpecError(f"view {fv.name!r}: {TAG_VERSIONS}={named!r} is not a FileSource "
                            f"with a path; registered sources: {sorted(sources)}")
        archive = path
    return TableSpec(fv.name, keys[0], push, cols, ts, archive)


def stream_input(source: Any) -> StreamInput:
    """A Feast `KafkaSource` (object or registry copy) -> `StreamInput`."""
    opts = source.kafka_options
    delay = opts.watermark_delay_threshold
    batch = getattr(source, "batch_source", None)
    archive = getattr(batch, "path", None) if batch is not None else None
    brokers = tuple(b.strip() for b in (opts.kafka_bootstrap_servers or "").split(",")
                    if b.strip())
    return StreamInput(name=source.name, brokers=brokers, topic=opts.topic or "",
                       watermark_delay_s=delay.total_seconds() if delay else None,
                       archive=archive or None,
                       timestamp_field=source.timestamp_field or "event_timestamp")


def event_stream(views: list, sources: Iterable) -> Any | None:
    """The KafkaSource the views read (tag `feast_bytewax.input`, else the only one)."""
    kafka = {s.name: s for s in sources if hasattr(s, "kafka_options")}
    wanted = {(v.tags or {}).get(TAG_INPUT) for v in views} - {None}
    if len(wanted) > 1:
        raise SpecError(f"views read several inputs {sorted(wanted)} ({TAG_INPUT}); one run "
                        "reads one event stream")
    if wanted:
        name = next(iter(wanted))
        if name not in kafka:
            raise SpecError(f"{TAG_INPUT}={name!r}: no such KafkaSource; registered: "
                            f"{sorted(kafka)}")
        return kafka[name]
    if len(kafka) > 1:
        raise SpecError(f"several KafkaSources {sorted(kafka)}: tag the views with "
                        f"{TAG_INPUT}=<name> to say which one carries their events")
    return next(iter(kafka.values()), None)
