"""Run settings, validated once at the edge (pydantic, unknown keys refused)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from feast_bytewax.engine.shard import EngineConfig
from feast_bytewax.engine.routing import DEFAULT_SHARDS
from feast_bytewax.timeutil import US_PER_S


class FlowConfig(BaseModel):
    """Knobs shared by replay and live runs. Times are seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo_path: Path = Field(Path("."), description="Feast repo root (holds feature_store.yaml)")
    shards: int = Field(DEFAULT_SHARDS, ge=1, le=4096,
                        description="routing shards; fixed so results don't depend on workers")
    watermark_delay_s: float = Field(5.0, ge=0, description="bounded out-of-orderness")
    allowed_lateness_s: float = Field(600.0, ge=0,
                                      description="behind the watermark but still applied")
    max_future_s: float = Field(300.0, ge=0,
                                description="events further ahead of the wall clock are rejected")
    batch_size: int = Field(1000, ge=1, description="source batch size")
    flush_rows: int = Field(10_000, ge=1, description="sink flush when this many rows wait")
    flush_interval_s: float = Field(1.0, gt=0, description="sink flush at least this often")
    write_online: bool = True
    write_offline: bool = True
    dead_letter_path: Path = Field(Path("data/dead_letters.jsonl"),
                                   description="rejected and late records (JSON lines)")

    def engine_config(self, clock=None) -> EngineConfig:
        return EngineConfig(
            watermark_delay=round(self.watermark_delay_s * US_PER_S),
            allowed_lateness=round(self.allowed_lateness_s * US_PER_S),
            clock=clock,
        )


# FlowConfig field -> FEAST_BYTEWAX_* variable (for `python -m bytewax.run dataflows.*`).
ENV_FIELDS = {
    "repo_path": "REPO",
    "shards": "SHARDS",
    "watermark_delay_s": "WATERMARK_DELAY",
    "allowed_lateness_s": "ALLOWED_LATENESS",
    "max_future_s": "MAX_FUTURE",
    "batch_size": "BATCH_SIZE",
    "flush_rows": "FLUSH_ROWS",
    "flush_interval_s": "FLUSH_INTERVAL",
    "dead_letter_path": "DEAD_LETTERS",
}


def flow_config_from_env(environ) -> FlowConfig:
    """`FlowConfig` from ``FEAST_BYTEWAX_<NAME>`` variables (`ENV_FIELDS`; unset ones keep
    their defaults) plus ``FEAST_BYTEWAX_NO_ONLINE`` / ``FEAST_BYTEWAX_NO_OFFLINE`` = 1."""
    values: dict = {}
    for name, var in ENV_FIELDS.items():
        raw = environ.get("FEAST_BYTEWAX_" + var, "").strip()
        if raw:
            values[name] = raw  # pydantic converts and validates
    for name, var in (("write_online", "NO_ONLINE"), ("write_offline", "NO_OFFLINE")):
        if environ.get("FEAST_BYTEWAX_" + var, "").strip().lower() in ("1", "true", "yes"):
            values[name] = False
    return FlowConfig(**values)
