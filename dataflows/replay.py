"""The file replay flow for Bytewax's runner, configured by environment variables.

    FEAST_BYTEWAX_EVENTS=data/events.parquet python -m bytewax.run dataflows.replay -s 30

Same flow as `feast-bytewax replay` (feast_bytewax.dataflow.replay.build_replay_flow)
without its summary line. Without recovery (no ``-r``) the shards skip the per-epoch state
snapshot (`feast_bytewax.dataflow.step`). Bytewax's runner owns workers (``-w``,
``-i``/``-a`` for processes) and recovery (``-r DIR -s S -b 0``).

Every setting of `feast-bytewax replay` is a ``FEAST_BYTEWAX_<NAME>`` variable here (the
same model, `feast_bytewax.config.ReplayConfig`; `feast-bytewax replay --help` lists them):

- ``FEAST_BYTEWAX_EVENTS``: parquet file, folder of parquet files, or JSON-lines file,
  local or ``s3://bucket/prefix`` (default: the archive of the repo's KafkaSource);
  ``FEAST_BYTEWAX_S3_ENDPOINT`` (else ``FEAST_S3_ENDPOINT``, ``AWS_ENDPOINT_URL_S3``,
  ``AWS_ENDPOINT_URL``) for an S3-compatible store
- ``FEAST_BYTEWAX_START`` / ``FEAST_BYTEWAX_END``: ISO-8601 with offset; only events in
  [start, end)
- ``FEAST_BYTEWAX_REPO``: Feast repo root holding feature_store.yaml (default ``.``)
- ``FEAST_BYTEWAX_SHARDS``, ``FEAST_BYTEWAX_WATERMARK_DELAY``,
  ``FEAST_BYTEWAX_ALLOWED_LATENESS``, ``FEAST_BYTEWAX_MAX_FUTURE`` (seconds),
  ``FEAST_BYTEWAX_BATCH_SIZE``, ``FEAST_BYTEWAX_FLUSH_ROWS``, ``FEAST_BYTEWAX_FLUSH_INTERVAL``
  (seconds), ``FEAST_BYTEWAX_ONLINE`` / ``FEAST_BYTEWAX_OFFLINE`` (``0`` to skip a store)
- ``FEAST_BYTEWAX_DEAD_LETTERS``: dead-letter JSON-lines file (default
  ``data/dead_letters.jsonl`` under the repo)
"""

from feast_bytewax.config import ReplayConfig, load
from feast_bytewax.dataflow.replay import build_replay_flow
from feast_bytewax.dataflow.runtime import exit_on_user_error, manage_gc, with_runner_recovery
from feast_bytewax.observability.stats import FlowStats

with exit_on_user_error():  # a bad setting: one line, exit 2 (not a traceback)
    cfg = with_runner_recovery(load(ReplayConfig))
    stats = FlowStats()
    flow, dead_letter_path, _lookups = build_replay_flow(cfg, stats)
    manage_gc(cfg.gc_interval)  # for the rest of the process: Bytewax's runner runs the flow
