"""The Bytewax face of `ShardEngine`: config dataclass -> `build(resume_state)` -> logic
with `snapshot()`, as Bytewax's own windowing operators are laid out.

The engine needs no timer of Bytewax's: its watermark moves only with what arrives (events
and partition marks, in order), so `on_batch` and `on_eof` are the whole interface.

With `provisional` (live runs, ``--online-rows provisional``) a shard also runs the provisional
engine of `engine.provisional` over the same batches: its rows (cause ``provisional``) go
online at once, the exact engine's go offline. Only the exact engine is snapshotted; the
provisional one is rebuilt from it at every build.

Each logic reports its state size (keys, buffered events, snapshot bytes) to the process's
`observability.state.STATE`, which sums the shards of an entity into the gauges: at most
every `GAUGE_INTERVAL_S` from `on_batch` (the hot path pays a clock read) and at every
snapshot, where the snapshot's size is known.

Bytewax asks every logic for a snapshot at every epoch end, with recovery on or off. Without
recovery (`snapshots=False`: the run has no ``--recovery-dir``) the state would be pickled
and thrown away: measured, that was 38% of a live worker's time at the 2 s epoch. So then
`snapshot()` returns `NO_SNAPSHOT` and estimates the snapshot's size from a sample of the
state (`ShardEngine.estimated_snapshot_bytes`: pickling a whole shard to measure it held the
worker for up to 0.25 s), at most every `MEASURE_INTERVAL_S` per logic, at a random phase.
A restore that finds `NO_SNAPSHOT` (a recovery store written by a run told it had no
recovery) stops with one line instead of starting empty.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from bytewax.operators import StatefulBatchLogic

from feast_bytewax.dataflow.lifecycle import RunLifecycle
from feast_bytewax.dataflow.runtime import fatal_stop
from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.provisional import ProvisionalRows
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.observability.state import STATE, StateGauges
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import Event, FeatureRow, Late, Mark

GAUGE_INTERVAL_S = 1.0
MEASURE_INTERVAL_S = 300.0
NO_SNAPSHOT = b""


@dataclass(frozen=True)
class FeatureStepConfig:
    """What every shard's logic is built from (picklable: workers may be processes)."""

    spec: EngineSpec
    engine: EngineConfig
    stats: FlowStats | None = None
    lifecycle: RunLifecycle | None = None
    new_features: str = "refuse"
    provisional: bool = False
    snapshots: bool = True

    def build(self, resume_state: bytes | None) -> ShardLogic:
        if resume_state == NO_SNAPSHOT:
            fatal_stop("the recovery store holds no state for this shard: the run that wrote "
                       "it was built without a recovery directory (--recovery-dir / "
                       "FEAST_BYTEWAX_RECOVERY_DIR) while Bytewax had one. Start with an "
                       "empty recovery directory and give it to both", self.stats)
        engine = ShardEngine(self.spec, self.engine, resume_state)
        report = engine.restore_report
        if report is not None and report.new and self.new_features == "refuse":
            lookback_h = self.spec.lookback_us / 3.6e9
            fatal_stop(
                f"the definitions gained or changed {report.new} since the recovery "
                "snapshot; their windows would start empty. Either restart with "
                "--new-features cold (they count events from the restart on; to rewrite "
                f"their past rows, {lookback_h:g} h after the restart replay the archive "
                "with `feast-bytewax replay --start <restart time minus "
                f"{lookback_h:g} h> --end <now>`), or start with an empty --recovery-dir after "
                "replaying the archive", self.stats)
        return ShardLogic(engine, self.stats, self.spec.join_key, self.lifecycle,
                          ProvisionalRows(engine) if self.provisional else None,
                          restored_bytes=None if resume_state is None else len(resume_state),
                          snapshots=self.snapshots)


class ShardLogic(StatefulBatchLogic[Any, Any, bytes]):
    """Feeds a shard's batch to its engine and reports counter deltas."""

    def __init__(self, engine: ShardEngine, stats: FlowStats | None, entity: str,
                 lifecycle: RunLifecycle | None = None,
                 provisional: ProvisionalRows | None = None, *,
                 gauges: StateGauges = STATE, restored_bytes: int | None = None,
                 snapshots: bool = True) -> None:
        self.engine = engine
        self.snapshots = snapshots
        self._measure_due = time.monotonic() + random.uniform(0, MEASURE_INTERVAL_S)
        self.provisional = provisional
        self.stats = stats
        self.entity = entity
        self.lifecycle = lifecycle
        self._seen = dict(engine.counts)
        self._gauges = gauges
        self._slot = gauges.slot(entity)
        self._sizes(restored_bytes)  # a restored shard starts with its snapshot's size

    def _sizes(self, snapshot_bytes: int | None = None) -> None:
        self._gauges_due = time.monotonic() + GAUGE_INTERVAL_S
        self._gauges.update(self._slot, keys=self.engine.state_size(),
                            buffered=len(self.engine.buffer), snapshot_bytes=snapshot_bytes)

    def _report(self, out: list[FeatureRow | Late]) -> tuple[list, bool]:
        """Counter deltas to the run's stats; the output as at most two items, a list of rows
        and a list of late records (one exchange item each, as the input: `dataflow.flow`)."""
        if self.stats is not None:
            now = self.engine.counts
            self.stats.add_entity(self.entity,
                                  **{k: now[k] - self._seen.get(k, 0) for k in now})
            self._seen = dict(now)
        if not out:
            return [], StatefulBatchLogic.RETAIN
        late = [r for r in out if type(r) is not FeatureRow]
        if not late:
            return [out], StatefulBatchLogic.RETAIN
        rows = [r for r in out if type(r) is FeatureRow]
        return [rows, late] if rows else [late], StatefulBatchLogic.RETAIN

    def on_batch(self, values: list[list[Event | Mark]]) -> tuple[list, bool]:
        """`values`: the lists the router made for this shard (`dataflow.flow`), in order."""
        values = values[0] if len(values) == 1 else [x for chunk in values for x in chunk]
        out = self.engine.ingest(values)
        if self.provisional is not None:
            out += self.provisional.ingest(values)
        if time.monotonic() >= self._gauges_due:
            self._sizes()
        return self._report(out)

    def on_eof(self) -> tuple[list, bool]:
        """The input really ended (not an abort): the sinks may commit for good."""
        out = self.engine.finish()
        if self.provisional is not None:
            out += self.provisional.finish()
        if self.lifecycle is not None:
            self.lifecycle.finished(self.engine.watermark())
        self._sizes()
        return self._report(out)

    def snapshot(self) -> bytes:
        if self.snapshots:
            blob = self.engine.snapshot()
            self._sizes(len(blob))
            return blob
        now = time.monotonic()
        if now >= self._measure_due:  # no recovery: estimate now and then (module docstring)
            self._measure_due = now + MEASURE_INTERVAL_S
            self._sizes(self.engine.estimated_snapshot_bytes())
        return NO_SNAPSHOT
