"""The event-time knobs of a shard engine, apart from the engine that runs them: a flow
builds them once from its settings (`dataflow.flow.engine_config`) and every shard's logic
is built from them (they are pickled to the workers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Event-time knobs, in microseconds, and the number of input partitions whose frontiers
    make the watermark (events without a partition count as partition 0)."""

    watermark_delay: int = 5_000_000
    allowed_lateness: int = 0
    partitions: int = 1
    emit_from: int | None = None  # a range replay's start: every key gets a row there
    dedup: bool = True  # False: fed only another engine's non-duplicates (engine.provisional)

    def __post_init__(self) -> None:
        if self.watermark_delay < 0:
            raise ValueError(f"watermark_delay must be >= 0 us, got {self.watermark_delay}")
        if self.allowed_lateness < 0:
            raise ValueError(f"allowed_lateness must be >= 0 us, got {self.allowed_lateness}")
        if self.partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {self.partitions}")
