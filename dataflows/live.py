"""The live Kafka flow for Bytewax's runner, configured by environment variables.

    FEAST_BYTEWAX_SOURCE=kafka://HOST:PORT/TOPIC python -m bytewax.run dataflows.live \
        -w 2 -s 2 [-r RECOVERY_DIR]

Same flow as `feast-bytewax run` (see feast_bytewax/live.py). Bytewax's runner owns workers
(``-w``, ``-i``/``-a`` for processes), the epoch/snapshot interval (``-s``: sink flush and
recovery snapshot; without it Bytewax uses 10 s) and recovery (``-r DIR``, initialised with
``python -m bytewax.recovery DIR N``). Stop with Ctrl-C (abort: with recovery a restart
resumes from the last snapshot); the clean-stop signal handling of `feast-bytewax run` is not
installed here.

Variables (all optional except FEAST_BYTEWAX_SOURCE):

- ``FEAST_BYTEWAX_SOURCE``: ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``
- ``FEAST_BYTEWAX_REPO``: Feast repo root holding feature_store.yaml (default ``.``)
- ``FEAST_BYTEWAX_SHARDS``, ``FEAST_BYTEWAX_WATERMARK_DELAY``, ``FEAST_BYTEWAX_ALLOWED_LATENESS``,
  ``FEAST_BYTEWAX_MAX_FUTURE`` (seconds), ``FEAST_BYTEWAX_BATCH_SIZE``,
  ``FEAST_BYTEWAX_FLUSH_ROWS``, ``FEAST_BYTEWAX_FLUSH_INTERVAL`` (seconds),
  ``FEAST_BYTEWAX_NO_ONLINE`` / ``FEAST_BYTEWAX_NO_OFFLINE`` (``1`` to skip a store)
- ``FEAST_BYTEWAX_START_FROM``: ``earliest`` (default) or ``latest``
- ``FEAST_BYTEWAX_DEAD_LETTER_TOPIC``, ``FEAST_BYTEWAX_LATE_TOPIC``: Kafka dead letters;
  without a topic they go to the JSON-lines file ``FEAST_BYTEWAX_DEAD_LETTERS`` (default
  ``data/dead_letters.jsonl`` under the repo; with several processes give each its own)
- ``FEAST_BYTEWAX_KAFKA_OPT_<NAME>``: librdkafka settings, NAME upper-case with dots as
  underscores (``FEAST_BYTEWAX_KAFKA_OPT_SECURITY_PROTOCOL=SASL_SSL``,
  ``FEAST_BYTEWAX_KAFKA_OPT_SASL_PASSWORD=...``)
- ``FEAST_BYTEWAX_METRICS_PORT``: Prometheus port (one per process)
- ``FEAST_BYTEWAX_FRESHNESS_SLO``: seconds; p99 freshness over a minute above it is logged as
  an alert and counted
- ``FEAST_BYTEWAX_MAX_EVENTS``, ``FEAST_BYTEWAX_IDLE_EXIT`` (seconds),
  ``FEAST_BYTEWAX_STOP_AT_END=1``: stop conditions (per process)
"""

import os

from feast_bytewax.dataflow.live import build_live_flow, options_from_env
from feast_bytewax.observability.metrics import FlowStats, FreshnessSLO, serve_metrics

options = options_from_env(os.environ)
stats = FlowStats()
slo = FreshnessSLO(options.freshness_slo_s) if options.freshness_slo_s else None
flow, parts = build_live_flow(options, stats, slo)
if options.metrics_port:
    serve_metrics(options.metrics_port)
