"""Dataflow composition: sources (validated per partition) -> lookups -> route (per entity)
-> features -> sinks.

Only wiring lives here; each step's logic has its own module. One run serves every entity
of the definitions: each entity gets its own keyed feature step (routed by its join key)
and its own Feast sink, fed by the same validated events. Rejected input and late events
leave through one dead-letter output, so nothing is dropped silently.

Joined tables (`features.inputs.TableSpec`, e.g. user profiles) are more partitions of the
same input (`ingest.tables.InputSet`): their versions get the same event-time treatment,
are routed like the events of their key (co-partitioned: each shard holds the versions of
its own keys, so the table's memory is spread over the workers), and are written through
the table's push source to both stores. Online lookups (`dataflow.lookup`) enrich each
micro-batch before routing, one step per worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.outputs import Sink

from feast_bytewax.config import FlowConfig
from feast_bytewax.dataflow.lifecycle import RunLifecycle
from feast_bytewax.dataflow.step import FeatureStepConfig
from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.routing import shard_key
from feast_bytewax.features.inputs import TableSpec
from feast_bytewax.features.spec import EngineSpec, FlowSpec
from feast_bytewax.ingest.files import EventFileSource
from feast_bytewax.ingest.partitions import EventTimeSource, EventValidator, PartitionPolicy
from feast_bytewax.ingest.tables import InputSet, TableValidator
from feast_bytewax.observability.state import STATE
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import FeatureRow, Mark, Rejected, TableVersion, column_getter
from feast_bytewax.timeutil import US_PER_S, utc_now_us

SinkFor = Callable[[EngineSpec | TableSpec], Sink]


def engine_config(cfg: FlowConfig, partitions: int = 1,
                  emit_from: int | None = None) -> EngineConfig:
    """The engine's event-time knobs (integer microseconds) from the run settings."""
    return EngineConfig(
        watermark_delay=round(cfg.watermark_delay * US_PER_S),
        allowed_lateness=round(cfg.allowed_lateness * US_PER_S),
        partitions=partitions,
        emit_from=emit_from,
    )


def partition_policy(cfg: FlowConfig, spec: FlowSpec, live: bool) -> PartitionPolicy:
    """The source's event-time rules (`ingest.partitions`) from the run settings."""
    return PartitionPolicy(
        max_future=round(cfg.max_future * US_PER_S),
        max_ahead=round(cfg.max_ahead * US_PER_S),
        max_skew=round(max(cfg.max_skew, 2 * cfg.watermark_delay) * US_PER_S),
        idle_timeout=round(cfg.idle_timeout * US_PER_S) if live else None,
        schema=spec.schema if spec.schema.extra else None,
    )


def _accounting(stats: FlowStats, observe: Callable[[list, int], None] | None):
    """Counts what the source read (consumed, rejected); `observe(batch, now_us)`, if given,
    sees every batch (live runs record event arrival times with it)."""

    def account(batch: list) -> list:
        marks = rejected = 0
        for x in batch:
            tx = type(x)
            if tx is Mark:
                marks += 1
            elif tx is Rejected:
                rejected += 1
        stats.add(consumed=len(batch) - marks, rejected=rejected)
        if observe is not None:
            observe(batch, utc_now_us())
        return batch

    return account


def _router(entity: EngineSpec, shards: int, stats: FlowStats):
    """Events of one entity, grouped by routing shard: one ``(shard, [records])`` item per
    shard the batch reaches (events without a value for the entity's join key are not its
    events: counted as `unkeyed`); every partition mark goes to every shard, in order with
    the events. One item per shard and batch, not per event: Bytewax's exchange costs per
    item (routing, and a pickle per item between processes), and a shard's batch is one
    list anyway (bench/RESULTS.md, *Batched exchange*)."""
    key_of = column_getter(entity.join_key)
    name = entity.join_key
    everyone = [str(s) for s in range(shards)]
    joined = {j.view for j in entity.enrichment.joins}

    def route(batch: list) -> list[tuple[str, list]]:
        groups: dict[str, list] = {}
        unkeyed = 0
        for x in batch:
            tx = type(x)
            if tx is Mark:
                for s in everyone:
                    g = groups.get(s)
                    if g is None:
                        groups[s] = [x]
                    else:
                        g.append(x)
                continue
            if tx is TableVersion:  # a version goes where the events of its key go
                if x.view not in joined:
                    unkeyed += 1
                    continue
                s = shard_key(x.key, shards)
            else:
                k = key_of(x)
                if k is None or k == "":
                    unkeyed += 1
                    continue
                s = shard_key(k, shards)
            g = groups.get(s)
            if g is None:
                groups[s] = [x]
            else:
                g.append(x)
        if unkeyed:
            stats.add_entity(name, unkeyed=unkeyed)
        return list(groups.items())

    return route


def _versions_as_rows(table: TableSpec, shards: int):
    """A table's versions as rows of its view (stamped with their valid-from time), keyed
    like its events and grouped per shard like them (`_router`), for the table's sink."""
    names = table.feature_names

    def rows(batch: list) -> list[tuple[str, list[FeatureRow]]]:
        groups: dict[str, list[FeatureRow]] = {}
        for x in batch:
            if type(x) is TableVersion and x.view == table.view:
                row = FeatureRow(x.key, x.valid_from, tuple(x.values.get(n) for n in names),
                                 "version")
                groups.setdefault(shard_key(x.key, shards), []).append(row)
        return list(groups.items())

    return rows


def per_thread(factory: Callable[[], Callable[[list], list]]) -> Callable[[list], list]:
    """A batch function built once per worker thread (its cache, pool and counters are the
    worker's own: Bytewax calls one step function from every worker thread)."""
    local = threading.local()

    def call(batch: list) -> list:
        fn = getattr(local, "fn", None)
        if fn is None:
            fn = local.fn = factory()
        return fn(batch)

    return call


def _timed_source(source: Any, tables: Mapping[str, Any], flow_spec: FlowSpec,
                  policy: PartitionPolicy) -> EventTimeSource:
    """Events and joined tables as one partitioned source, each partition validated as what
    it carries."""
    if not tables:
        return EventTimeSource(source, policy)
    unknown = sorted(set(tables) - {t.view for t in flow_spec.tables})
    if unknown:
        raise ValueError(f"no view joins {unknown}; joined: {[t.view for t in flow_spec.tables]}")
    inputs = InputSet(source, tables)
    events = EventValidator(policy)
    by_view = {v: TableValidator(flow_spec.table(v), policy.max_future) for v in tables}

    def validator_for(part: str):
        view = inputs.view_of(part)
        return events if view is None else by_view[view]

    # a table given as files is read before the events (a Kafka topic of versions follows
    # the watermark like the events)
    leading = frozenset(p for p in inputs.partition_order()
                        if isinstance(tables.get(inputs.view_of(p) or ""), EventFileSource))
    return EventTimeSource(inputs, policy, validator_for=validator_for, leading=leading)


def build_flow(
    flow_id: str,
    cfg: FlowConfig,
    spec: FlowSpec | EngineSpec,
    source: Any,
    feature_sink: Sink | SinkFor,
    dead_letter_sink: Sink,
    stats: FlowStats,
    live: bool = False,
    observe: Callable[[list, int], None] | None = None,
    lifecycle: RunLifecycle | None = None,
    emit_from: int | None = None,
    tables: Mapping[str, Any] | None = None,
    lookup: Callable[[], Callable[[list], list]] | None = None,
    provisional: bool = False,
) -> Dataflow:
    """Wire the feature pipeline of every entity in `spec` over `source` (raw
    ``(payload, origin)`` items; validated per partition by `ingest.partitions`).

    `live` turns on idle partitions (their frontier moves with wall-clock time while they
    read nothing, so idle keys decay on time). `feature_sink` is one sink for all rows or a
    factory giving each entity its own; rows reach it as `(shard, [FeatureRow, ...])`. Rejected
    and late records reach `dead_letter_sink` as `("input", Rejected)` / `(shard, [Late, ...])`
    (sinks flatten with `records.unbatch`). `observe`: see
    `_accounting`. `lifecycle` learns when the input really ended (the sinks commit then).
    `emit_from`: a range replay's start (see `ShardEngine._seed`). `tables`: joined view ->
    a source of its raw versions (``(payload, origin)`` items); their rows reach
    `feature_sink(TableSpec)` (a factory) or the shared sink. `lookup`: a factory of the
    batch function that enriches events by online lookups (one per worker thread).
    `provisional`: every shard also emits the leading engine's rows (`engine.provisional`),
    for a sink that writes them online only.
    """
    flow_spec = spec if isinstance(spec, FlowSpec) else FlowSpec((spec,))
    stats.declare(e.join_key for e in flow_spec.entities)
    STATE.reset(e.join_key for e in flow_spec.entities)  # the gauges describe this flow
    shards = cfg.shards
    tables = dict(tables or {})
    timed = _timed_source(source, tables, flow_spec, partition_policy(cfg, flow_spec, live))
    partitions = len(timed.partitions())
    flow = Dataflow(flow_id)
    read = op.flat_map_batch("account", op.input("input", flow, timed),
                             _accounting(stats, observe))
    split = op.branch("split_rejected", read, lambda x: type(x) is Rejected)
    dead: list[Stream] = [op.map("tag_rejected", split.trues, lambda r: ("input", r))]
    valid = split.falses
    if lookup is not None:
        valid = op.flat_map_batch("lookup", valid, per_thread(lookup))
    shared_rows: list[Stream] = []
    for view in sorted(tables):
        table = flow_spec.table(view)
        if table.push_source is None:
            continue  # a view without a push source: its versions are joined, not stored
        rows = op.flat_map_batch(f"versions_{view}", valid, _versions_as_rows(table, shards))
        if isinstance(feature_sink, Sink):
            shared_rows.append(rows)
        else:
            op.output(f"versions_out_{view}", rows, feature_sink(table))
    for entity in flow_spec.entities:
        name = entity.join_key
        keyed = op.flat_map_batch(f"route_{name}", valid, _router(entity, shards, stats))
        step = FeatureStepConfig(entity, engine_config(cfg, partitions, emit_from), stats,
                                 lifecycle, cfg.new_features, provisional,
                                 snapshots=cfg.recovery_dir is not None)
        out = op.stateful_batch(f"features_{name}", keyed, step.build)
        # the step's output items are lists of rows or lists of late records (`ShardLogic`)
        rows = op.branch(f"split_rows_{name}", out, lambda kv: type(kv[1][0]) is FeatureRow)
        if isinstance(feature_sink, Sink):
            shared_rows.append(rows.trues)
        else:
            op.output(f"features_out_{name}", rows.trues, feature_sink(entity))
        dead.append(rows.falses)
    if shared_rows:
        op.output("features_out", op.merge("all_rows", *shared_rows), feature_sink)
    # One output step for every kind: a file sink must have a single writer.
    op.output("dead_letters", op.merge("rejected_and_late", *dead), dead_letter_sink)
    return flow
