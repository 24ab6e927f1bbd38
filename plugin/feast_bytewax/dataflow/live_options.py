"""Options of the live run (`feast-bytewax run`): `LiveOptions`, the command-line
arguments and the environment variables (`dataflows/live.py`). See `feast_bytewax.dataflow.live`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feast_bytewax.config import FlowConfig

DEFAULT_EPOCH_S = 2.0


@dataclass
class LiveOptions:
    """Everything a live run needs besides the Feast repo's own configuration."""

    source: str
    cfg: FlowConfig = field(default_factory=FlowConfig)
    start_from: str = "earliest"
    kafka_options: dict[str, str] = field(default_factory=dict)
    dead_letter_topic: str | None = None
    late_topic: str | None = None
    metrics_port: int | None = None
    freshness_slo_s: float | None = None
    recovery_dir: Path | None = None
    epoch_interval_s: float = DEFAULT_EPOCH_S
    max_events: int | None = None
    idle_exit_s: float | None = None
    stop_at_end: bool = False
    workers: int = 1

    def __post_init__(self) -> None:
        from feast_bytewax.kafka.source import START_OFFSETS, parse_kafka_url

        parse_kafka_url(self.source)  # fail early on a malformed URL
        if self.start_from not in START_OFFSETS:
            raise ValueError(f"start_from must be one of {sorted(START_OFFSETS)}")
        if self.epoch_interval_s <= 0:
            raise ValueError("epoch_interval_s must be > 0")
        if self.freshness_slo_s is not None and self.freshness_slo_s <= 0:
            raise ValueError("freshness_slo_s must be > 0")
        if self.late_topic and not self.dead_letter_topic:
            raise ValueError("--late-topic needs --dead-letter-topic (rejected input must go "
                             "to Kafka too)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The `run`-only arguments (cli.py adds the shared flow arguments)."""
    p.add_argument("--start-from", choices=("earliest", "latest"), default="earliest",
                   help="where partitions without recovery state start (default earliest)")
    p.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                   help="librdkafka setting for every client (repeatable), e.g. "
                        "security.protocol=SASL_SSL; env FEAST_BYTEWAX_KAFKA_OPT_<NAME> too")
    p.add_argument("--dead-letter-topic", default=None,
                   help="Kafka topic for rejected input (default: the --dead-letters file)")
    p.add_argument("--late-topic", default=None,
                   help="Kafka topic for late events (default: the dead-letter topic)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on this port")
    p.add_argument("--freshness-slo", type=float, default=None, metavar="SECONDS",
                   help="alert when the p99 freshness over a minute exceeds this")
    p.add_argument("--recovery-dir", type=Path, default=None,
                   help="Bytewax recovery directory (state + offsets survive restarts)")
    p.add_argument("--epoch-interval", type=float, default=DEFAULT_EPOCH_S, metavar="SECONDS",
                   help="snapshot/flush interval (default 2)")
    p.add_argument("--max-events", type=int, default=None,
                   help="stop after reading this many records")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="stop after this long without a record")
    p.add_argument("--stop-at-end", action="store_true",
                   help="stop when every partition reaches its end")


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None
                      ) -> LiveOptions:
    from feast_bytewax.cli.main import flow_config
    from feast_bytewax.kafka.source import kafka_options

    return LiveOptions(
        source=args.source, cfg=flow_config(args), start_from=args.start_from,
        kafka_options=kafka_options(args.kafka_option, environ),
        dead_letter_topic=args.dead_letter_topic, late_topic=args.late_topic,
        metrics_port=args.metrics_port, freshness_slo_s=args.freshness_slo,
        recovery_dir=args.recovery_dir, epoch_interval_s=args.epoch_interval,
        max_events=args.max_events, idle_exit_s=args.idle_exit, stop_at_end=args.stop_at_end,
        workers=args.workers,
    )


def options_from_env(environ: Mapping[str, str]) -> LiveOptions:
    """`LiveOptions` from ``FEAST_BYTEWAX_*`` variables (see dataflows/live.py)."""
    from feast_bytewax.config import flow_config_from_env
    from feast_bytewax.kafka.source import kafka_options

    def get(name: str, conv: Callable[[str], Any] = str, default: Any = None) -> Any:
        raw = environ.get("FEAST_BYTEWAX_" + name, "").strip()
        return conv(raw) if raw else default

    source = get("SOURCE")
    if not source:
        raise ValueError("FEAST_BYTEWAX_SOURCE is not set (kafka://HOST:PORT/TOPIC)")
    return LiveOptions(
        source=source, cfg=flow_config_from_env(environ),
        start_from=get("START_FROM", default="earliest"),
        kafka_options=kafka_options((), environ),
        dead_letter_topic=get("DEAD_LETTER_TOPIC"), late_topic=get("LATE_TOPIC"),
        metrics_port=get("METRICS_PORT", int), freshness_slo_s=get("FRESHNESS_SLO", float),
        max_events=get("MAX_EVENTS", int), idle_exit_s=get("IDLE_EXIT", float),
        stop_at_end=get("STOP_AT_END", lambda s: s.lower() in ("1", "true", "yes"), False),
    )
