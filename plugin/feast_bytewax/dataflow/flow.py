"""Dataflow composition: source -> validate -> route -> features -> sinks.

Only wiring lives here; each step's logic has its own module. Rejected input and late
events leave through their own outputs, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink

from feast_bytewax.config import FlowConfig
from feast_bytewax.records import EndOfInput, Event, FeatureRow, Rejected
from feast_bytewax.observability.metrics import FlowStats
from feast_bytewax.engine.routing import shard_key
from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.dataflow.step import FeatureStepConfig
from feast_bytewax.timeutil import US_PER_S, utc_now_us
from feast_bytewax.ingest.validate import validate_item


def make_validator(
    cfg: FlowConfig,
    stats: FlowStats,
    clock: Callable[[], int] = utc_now_us,
    observe: Callable[[list, int], None] | None = None,
):
    """Batch validator: `(payload, origin)` -> Event | Rejected, counting both.

    `observe(batch, now_us)`, if given, sees every validated batch (live runs record event
    arrival times with it, for the freshness-since-arrival metric)."""
    max_future = round(cfg.max_future_s * US_PER_S)

    def validate(batch: list[tuple[Any, str]]) -> list[Event | Rejected]:
        now = clock()
        out = [validate_item(p, o, now, max_future) for p, o in batch]
        rejected = sum(1 for x in out if type(x) is Rejected)
        stats.add(consumed=len(out), rejected=rejected)
        if observe is not None:
            observe(out, now)
        return out

    return validate


def build_flow(
    flow_id: str,
    cfg: FlowConfig,
    spec: EngineSpec,
    source: Any,
    feature_sink: Sink,
    dead_letter_sink: Sink,
    stats: FlowStats,
    clock: Callable[[], int] | None = None,
    observe: Callable[[list, int], None] | None = None,
) -> Dataflow:
    """Wire one entity's feature pipeline.

    `clock` None means replay (event time only); live runs pass a wall clock so idle keys
    still decay. Feature rows reach `feature_sink` as `(shard, FeatureRow)`; rejected and
    late records reach `dead_letter_sink` as `(shard_or_"input", record)`. `observe`: see
    `make_validator`.
    """
    shards = cfg.shards
    flow = Dataflow(flow_id)
    raw = op.input("input", flow, source)
    checked = op.flat_map_batch("validate", raw, make_validator(cfg, stats, observe=observe))
    valid = op.branch("split_valid", checked, lambda x: type(x) is Event)
    events = valid.trues
    rejected = op.map("tag_rejected", valid.falses, lambda r: ("input", r))

    keyed = op.key_on("route", events, lambda e: shard_key(e.user_id, shards))
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
    step = FeatureStepConfig(spec, cfg.engine_config(clock), stats)
    out = op.stateful_batch("features", op.merge("with_end", keyed, markers), step.build)
    split = op.branch("split_rows", out, lambda kv: type(kv[1]) is FeatureRow)
    op.output("features_out", split.trues, feature_sink)
    # One output step for both kinds: a file sink must have a single writer.
    op.output("dead_letters", op.merge("rejected_and_late", rejected, split.falses),
              dead_letter_sink)
    return flow
