"""The live Kafka flow for Bytewax's runner, configured by environment variables.

    python -m bytewax.run dataflows.live -w 2 -s 2 [-r RECOVERY_DIR -b 0]

Same flow as `feast-bytewax run` (feast_bytewax.dataflow.live.build_live_flow). Bytewax's
runner owns workers (``-w``, ``-i``/``-a`` for processes), the epoch/snapshot interval
(``-s``: sink flush and recovery snapshot, whole seconds; without it Bytewax uses 10 s) and
recovery (``-r DIR -s S -b 0``, initialised with ``python -m bytewax.recovery DIR N``). Stop
with Ctrl-C (abort: with recovery a restart resumes from the last snapshot); the clean-stop
signal handling of `feast-bytewax run` is not installed here.

Every setting of `feast-bytewax run` is a ``FEAST_BYTEWAX_<NAME>`` variable here (the same
model, `feast_bytewax.config.LiveConfig`; `feast-bytewax run --help` lists them). None is
required when the repo declares its event stream (a `KafkaSource` with brokers and topic):

- ``FEAST_BYTEWAX_SOURCE``: ``kafka://HOST:PORT[,HOST:PORT]/TOPIC`` (default: the KafkaSource)
- ``FEAST_BYTEWAX_REPO``: Feast repo root holding feature_store.yaml (default ``.``)
- ``FEAST_BYTEWAX_SHARDS``, ``FEAST_BYTEWAX_WATERMARK_DELAY`` (default: the KafkaSource's),
  ``FEAST_BYTEWAX_ALLOWED_LATENESS``, ``FEAST_BYTEWAX_MAX_FUTURE`` (seconds),
  ``FEAST_BYTEWAX_BATCH_SIZE``, ``FEAST_BYTEWAX_FLUSH_ROWS``, ``FEAST_BYTEWAX_FLUSH_INTERVAL``
  (seconds), ``FEAST_BYTEWAX_ONLINE`` / ``FEAST_BYTEWAX_OFFLINE`` (``0`` to skip a store)
- ``FEAST_BYTEWAX_START_FROM``: ``earliest`` (default) or ``latest``
- ``FEAST_BYTEWAX_DEAD_LETTER_TOPIC``, ``FEAST_BYTEWAX_LATE_TOPIC``: Kafka dead letters;
  without a topic they go to the JSON-lines file ``FEAST_BYTEWAX_DEAD_LETTERS`` (default
  ``data/dead_letters.jsonl`` under the repo; with several processes give each its own)
- ``FEAST_BYTEWAX_KAFKA_OPT_<NAME>``: librdkafka settings, NAME upper-case with dots as
  underscores (``FEAST_BYTEWAX_KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL``,
  ``FEAST_BYTEWAX_KAFKA_OPT_SASL_PASSWORD=...``)
- ``FEAST_BYTEWAX_METRICS_PORT``: Prometheus port (one per process), bound to
  ``FEAST_BYTEWAX_METRICS_HOST`` (default ``0.0.0.0``; ``127.0.0.1``: this host only)
- ``FEAST_BYTEWAX_FRESHNESS_SLO``: seconds; p99 freshness over a minute above it (or rows
  waiting longer than it) is logged as an alert and counted (checked every 0.25 s on a
  daemon thread, as `feast-bytewax run` does)
- ``FEAST_BYTEWAX_MAX_EVENTS``, ``FEAST_BYTEWAX_IDLE_EXIT`` (seconds),
  ``FEAST_BYTEWAX_STOP_AT_END=1``: stop conditions (per process)
"""

from feast_bytewax.config import LiveConfig, load
from feast_bytewax.dataflow.live import build_live_flow, start_metrics, watch_slo
from feast_bytewax.dataflow.runtime import exit_on_user_error, manage_gc, with_runner_recovery
from feast_bytewax.observability.stats import FlowStats

with exit_on_user_error():  # a bad setting: one line, exit 2 (not a traceback)
    cfg = with_runner_recovery(load(LiveConfig))
    stats = FlowStats()
    flow, parts = build_live_flow(cfg, stats)
    start_metrics(parts.cfg)
    watch_slo(parts.slo)
    manage_gc(cfg.gc_interval)  # for the rest of the process: Bytewax's runner runs the flow
