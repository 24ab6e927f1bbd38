"""The file replay flow for Bytewax's runner, configured by environment variables.

    FEAST_BYTEWAX_EVENTS=data/events.parquet python -m bytewax.run dataflows.replay -s 30

Same flow as `feast-bytewax replay` (feast_bytewax.dataflow.replay.build_replay_flow) without its
summary line. Use a long ``-s`` (epoch) when recovery is off: Bytewax snapshots every
shard's state at each epoch end.

Variables (all optional except FEAST_BYTEWAX_EVENTS):

- ``FEAST_BYTEWAX_EVENTS``: parquet file, folder of parquet files, or JSON-lines file,
  local or ``s3://bucket/prefix`` (endpoint of an S3-compatible store: ``FEAST_S3_ENDPOINT``,
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``)
- ``FEAST_BYTEWAX_START`` / ``FEAST_BYTEWAX_END``: ISO-8601 with offset; only events in
  [start, end) (parquet)
- ``FEAST_BYTEWAX_REPO``: Feast repo root holding feature_store.yaml (default ``.``)
- ``FEAST_BYTEWAX_SHARDS``, ``FEAST_BYTEWAX_WATERMARK_DELAY``, ``FEAST_BYTEWAX_ALLOWED_LATENESS``,
  ``FEAST_BYTEWAX_MAX_FUTURE`` (seconds), ``FEAST_BYTEWAX_BATCH_SIZE``,
  ``FEAST_BYTEWAX_FLUSH_ROWS``, ``FEAST_BYTEWAX_FLUSH_INTERVAL`` (seconds),
  ``FEAST_BYTEWAX_NO_ONLINE`` / ``FEAST_BYTEWAX_NO_OFFLINE`` (``1`` to skip a store)
- ``FEAST_BYTEWAX_DEAD_LETTERS``: dead-letter JSON-lines file (default
  ``data/dead_letters.jsonl`` under the repo)
"""

import os
from datetime import UTC, datetime

from feast_bytewax.config import flow_config_from_env
from feast_bytewax.observability.metrics import FlowStats
from feast_bytewax.dataflow.replay import build_replay_flow


def _aware(name: str) -> datetime | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    dt = datetime.fromisoformat(raw)
    if dt.tzinfo is None:
        raise ValueError(f"{name}={raw!r} has no UTC offset (add Z or +00:00)")
    return dt.astimezone(UTC)


_events = os.environ.get("FEAST_BYTEWAX_EVENTS", "").strip()
if not _events:
    raise ValueError("FEAST_BYTEWAX_EVENTS is not set (parquet file/folder or JSON lines)")
cfg = flow_config_from_env(os.environ)
stats = FlowStats()
flow, dead_letter_path = build_replay_flow(cfg, _events, stats,
                                           _aware("FEAST_BYTEWAX_START"),
                                           _aware("FEAST_BYTEWAX_END"))
