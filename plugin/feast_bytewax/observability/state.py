"""State-size gauges of the shard engines: the pattern's "monitor checkpoint size".

A process runs one `dataflow.step.ShardLogic` per routing shard of each entity (a Bytewax
key), so a gauge that each logic set itself would show whichever shard wrote last. Each
logic owns a `StateSlot` here instead, and the gauges show, per entity, the sum over the
slots of this process (Prometheus sums the processes: `sum by (entity)`):

- `feast_bytewax_active_keys`: keys with state;
- `feast_bytewax_buffered_events`: events waiting for the watermark;
- `feast_bytewax_snapshot_bytes`: bytes of each shard's last recovery snapshot (taken at
  every epoch under `--recovery-dir`; the restored one after a restart; without recovery
  an estimate from a sample of the state, every 5 minutes per shard);
- `feast_bytewax_state_bytes_per_key`: those bytes over the keys the snapshots held, what a
  key costs in the recovery store (and, roughly, in memory).

Totals are kept incrementally (an update is O(1) whatever the number of shards), under one
lock: the workers of a process are threads. `reset` starts a new generation when a flow is
built (`dataflow.flow.build_flow`): the gauges describe the flow this process runs, and the
slots of an earlier run's logics (a test or a demo running flows one after another) no
longer count, even if one of them reported late.

Without `--recovery-dir` the bytes are what a recovery store would hold (`dataflow.step`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import Gauge

from feast_bytewax.observability.metrics import (
    ACTIVE_KEYS,
    BUFFERED,
    SNAPSHOT_BYTES,
    STATE_BYTES_PER_KEY,
)


class StateSlot:
    """One logic's last reported sizes (written only through `StateGauges.update`)."""

    __slots__ = ("buffered", "entity", "generation", "keys", "snapshot_bytes",
                 "snapshot_keys")

    def __init__(self, entity: str, generation: int) -> None:
        self.entity = entity
        self.generation = generation
        self.keys = 0
        self.buffered = 0
        self.snapshot_bytes = 0
        self.snapshot_keys = 0


class StateGauges:
    """Per-entity sums of the slots, mirrored to the state-size gauges."""

    FIELDS = ("keys", "buffered", "snapshot_bytes", "snapshot_keys")

    def __init__(self, *, active_keys: Gauge = ACTIVE_KEYS, buffered: Gauge = BUFFERED,
                 snapshot_bytes: Gauge = SNAPSHOT_BYTES,
                 bytes_per_key: Gauge = STATE_BYTES_PER_KEY) -> None:
        self._gauges = (active_keys, buffered, snapshot_bytes, bytes_per_key)
        self._totals: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._generation = 0

    def reset(self, entities: Iterable[str] = ()) -> None:
        """A new flow: every total back to 0 (and `entities` shown at 0 before any shard
        reports); slots handed out before are ignored from now on."""
        with self._lock:
            self._generation += 1
            for entity in {*self._totals, *entities}:
                self._totals[entity] = dict.fromkeys(self.FIELDS, 0)
                self._publish(entity)

    def slot(self, entity: str) -> StateSlot:
        """A new slot for one logic of `entity` (its gauges show 0 until it reports)."""
        with self._lock:
            self._totals.setdefault(entity, dict.fromkeys(self.FIELDS, 0))
            self._publish(entity)
            return StateSlot(entity, self._generation)

    def update(self, slot: StateSlot, *, keys: int, buffered: int,
               snapshot_bytes: int | None = None) -> None:
        """Record a logic's sizes now; with `snapshot_bytes`, the snapshot just taken (its key
        count is `keys`)."""
        new = {"keys": keys, "buffered": buffered}
        if snapshot_bytes is not None:
            new["snapshot_bytes"] = snapshot_bytes
            new["snapshot_keys"] = keys
        with self._lock:
            if slot.generation != self._generation:
                return  # a logic of an earlier flow
            totals = self._totals.setdefault(slot.entity, dict.fromkeys(self.FIELDS, 0))
            for name, value in new.items():
                totals[name] += value - getattr(slot, name)
                setattr(slot, name, value)
            self._publish(slot.entity)

    def totals(self, entity: str) -> dict[str, float]:
        """The entity's sums as the gauges show them (keys, buffered, snapshot bytes, bytes
        per key)."""
        with self._lock:
            t = dict(self._totals.get(entity) or dict.fromkeys(self.FIELDS, 0))
        return {"keys": t["keys"], "buffered": t["buffered"],
                "snapshot_bytes": t["snapshot_bytes"], "bytes_per_key": self._per_key(t)}

    @staticmethod
    def _per_key(t: dict[str, int]) -> float:
        return t["snapshot_bytes"] / t["snapshot_keys"] if t["snapshot_keys"] else 0.0

    def _publish(self, entity: str) -> None:
        t = self._totals[entity]
        active, buffered, snap, per_key = self._gauges
        active.labels(entity=entity).set(t["keys"])
        buffered.labels(entity=entity).set(t["buffered"])
        snap.labels(entity=entity).set(t["snapshot_bytes"])
        per_key.labels(entity=entity).set(self._per_key(t))


STATE = StateGauges()  # the process-wide one the shard logics report to
