"""Dataflow composition: source -> validate -> route (per entity) -> features -> sinks.

Only wiring lives here; each step's logic has its own module. One run serves every entity
of the definitions: each entity gets its own keyed feature step (routed by its join key)
and its own Feast sink, fed by the same validated events. Rejected input and late events
leave through one dead-letter output, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import Sink

from feast_bytewax.config import FlowConfig
from feast_bytewax.dataflow.step import FeatureStepConfig
from feast_bytewax.engine.routing import shard_key
from feast_bytewax.engine.shard import EngineConfig
from feast_bytewax.features.spec import EngineSpec, FlowSpec
from feast_bytewax.ingest.validate import validate_item
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import EndOfInput, Event, FeatureRow, Rejected, column_getter
from feast_bytewax.timeutil import US_PER_S, utc_now_us

SinkFor = Callable[[EngineSpec], Sink]


def engine_config(cfg: FlowConfig, clock: Callable[[], int] | None = None) -> EngineConfig:
    """The engine's event-time knobs (integer microseconds) from the run settings."""
    return EngineConfig(
        watermark_delay=round(cfg.watermark_delay * US_PER_S),
        allowed_lateness=round(cfg.allowed_lateness * US_PER_S),
        clock=clock,
    )


def make_validator(
    cfg: FlowConfig,
    stats: FlowStats,
    spec: FlowSpec,
    clock: Callable[[], int] = utc_now_us,
    observe: Callable[[list, int], None] | None = None,
):
    """Batch validator: `(payload, origin)` -> Event | Rejected, counting both.

    `observe(batch, now_us)`, if given, sees every validated batch (live runs record event
    arrival times with it, for the freshness-since-arrival metric)."""
    max_future = round(cfg.max_future * US_PER_S)
    schema = spec.schema if spec.schema.extra else None

    def validate(batch: list[tuple[Any, str]]) -> list[Event | Rejected]:
        now = clock()
        out = [validate_item(p, o, now, max_future, schema) for p, o in batch]
        rejected = sum(1 for x in out if type(x) is Rejected)
        stats.add(consumed=len(out), rejected=rejected)
        if observe is not None:
            observe(out, now)
        return out

    return validate


def _router(entity: EngineSpec, shards: int, stats: FlowStats):
    """Events of one entity, keyed by its routing shard; events without a value for the
    entity's join key are not its events (counted as `unkeyed`)."""
    key_of = column_getter(entity.join_key)
    name = entity.join_key

    def route(batch: list[Event]) -> list[tuple[str, Event]]:
        out = []
        for e in batch:
            k = key_of(e)
            if k is not None and k != "":
                out.append((shard_key(k, shards), e))
        if len(out) != len(batch):
            stats.add_entity(name, unkeyed=len(batch) - len(out))
        return out

    return route


def build_flow(
    flow_id: str,
    cfg: FlowConfig,
    spec: FlowSpec | EngineSpec,
    source: Any,
    feature_sink: Sink | SinkFor,
    dead_letter_sink: Sink,
    stats: FlowStats,
    clock: Callable[[], int] | None = None,
    observe: Callable[[list, int], None] | None = None,
) -> Dataflow:
    """Wire the feature pipeline of every entity in `spec`.

    `clock` None means replay (event time only); live runs pass a wall clock so idle keys
    still decay. `feature_sink` is one sink for all rows or a factory giving each entity
    its own; rows reach it as `(shard, FeatureRow)`. Rejected and late records reach
    `dead_letter_sink` as `(shard_or_"input", record)`. `observe`: see `make_validator`.
    """
    flow_spec = spec if isinstance(spec, FlowSpec) else FlowSpec((spec,))
    stats.declare(e.join_key for e in flow_spec.entities)
    shards = cfg.shards
    flow = Dataflow(flow_id)
    raw = op.input("input", flow, source)
    checked = op.flat_map_batch("validate", raw,
                                make_validator(cfg, stats, flow_spec, observe=observe))
    valid = op.branch("split_valid", checked, lambda x: type(x) is Event)
    events = valid.trues
    dead: list[Stream] = [op.map("tag_rejected", valid.falses, lambda r: ("input", r))]

    # The newest event time of a finite input, announced to every shard at EOF so that all
    # of them close at the same final watermark (a live stream never reaches this).
    batch_max = op.flat_map_batch(
        "batch_max", events, lambda b: [max(e.event_timestamp for e in b)] if b else []
    )
    input_end = op.reduce_final("input_end", op.key_on("one", batch_max, lambda _: "all"), max)
    markers = op.flat_map(
        "announce_end", input_end,
        lambda kv: [(str(s), EndOfInput(kv[1])) for s in range(shards)],
    )
    shared_rows: list[Stream] = []
    for entity in flow_spec.entities:
        name = entity.join_key
        keyed = op.flat_map_batch(f"route_{name}", events, _router(entity, shards, stats))
        step = FeatureStepConfig(entity, engine_config(cfg, clock), stats)
        out = op.stateful_batch(f"features_{name}",
                                op.merge(f"with_end_{name}", keyed, markers), step.build)
        split = op.branch(f"split_rows_{name}", out, lambda kv: type(kv[1]) is FeatureRow)
        if isinstance(feature_sink, Sink):
            shared_rows.append(split.trues)
        else:
            op.output(f"features_out_{name}", split.trues, feature_sink(entity))
        dead.append(split.falses)
    if shared_rows:
        op.output("features_out", op.merge("all_rows", *shared_rows), feature_sink)
    # One output step for every kind: a file sink must have a single writer.
    op.output("dead_letters", op.merge("rejected_and_late", *dead), dead_letter_sink)
    return flow
