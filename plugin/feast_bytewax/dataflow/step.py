"""The Bytewax face of `ShardEngine`: config dataclass -> `build(resume_state)` -> logic
with `snapshot()`, as Bytewax's own windowing operators are laid out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bytewax.operators import StatefulBatchLogic

from feast_bytewax.engine.shard import EngineConfig, ShardEngine
from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import EndOfInput, Event, FeatureRow, Late
from feast_bytewax.timeutil import from_us

HELD_ROW_WAIT_US = 100_000


@dataclass(frozen=True)
class FeatureStepConfig:
    """What every shard's logic is built from (picklable: workers may be processes)."""

    spec: EngineSpec
    engine: EngineConfig
    stats: FlowStats | None = None

    def build(self, resume_state: bytes | None) -> ShardLogic:
        return ShardLogic(ShardEngine(self.spec, self.engine, resume_state), self.stats,
                          self.spec.join_key)


class ShardLogic(StatefulBatchLogic[Any, Any, bytes]):
    """Feeds a shard's batch to its engine and reports counter deltas."""

    def __init__(self, engine: ShardEngine, stats: FlowStats | None, entity: str) -> None:
        self.engine = engine
        self.stats = stats
        self.entity = entity
        self._seen = dict(engine.counts)

    def _report(self, out: list[FeatureRow | Late]) -> tuple[list, bool]:
        if self.stats is not None:
            now = self.engine.counts
            self.stats.add_entity(self.entity,
                                  **{k: now[k] - self._seen.get(k, 0) for k in now})
            self._seen = dict(now)
        return out, StatefulBatchLogic.RETAIN

    def on_batch(self, values: list[Event | EndOfInput]) -> tuple[list, bool]:
        events = []
        for v in values:
            if type(v) is EndOfInput:
                hint = self.engine.end_hint
                self.engine.end_hint = v.max_ts if hint is None else max(hint, v.max_ts)
            else:
                events.append(v)
        return self._report(self.engine.ingest(events))

    def on_notify(self) -> tuple[list, bool]:
        return self._report(self.engine.tick())

    def on_eof(self) -> tuple[list, bool]:
        return self._report(self.engine.finish())

    def notify_at(self) -> datetime | None:
        """Live runs only: the wall time at which the watermark reaches the next due item."""
        eng = self.engine
        clock = eng.config.clock
        if clock is None or eng.max_seen is None or eng.max_seen_wall is None:
            return None
        cands = []
        due = eng.next_due()
        if due is not None:
            lag = due - (eng.max_seen - eng.config.watermark_delay)
            cands.append(eng.max_seen_wall + max(lag, 0))
        if eng.open_rows:  # rows held at the watermark go out once it moves on
            cands.append(clock() + HELD_ROW_WAIT_US)
        return from_us(min(cands)) if cands else None

    def snapshot(self) -> bytes:
        return self.engine.snapshot()
