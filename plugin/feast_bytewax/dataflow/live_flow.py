"""The live dataflow: Kafka source, `flow.build_flow`, Feast sinks with freshness,
dead letters to Kafka or a file (`build_live_flow`). See `feast_bytewax.dataflow.live`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feast_bytewax.observability.freshness import FreshnessRecorder, _observed_sink_classes
from feast_bytewax.dataflow.live_options import LiveOptions


@dataclass
class LiveParts:
    """What `build_live_flow` built besides the flow (for the runner and tests)."""

    source: Any
    stop: Any
    recorder: FreshnessRecorder
    slo: Any
    dead_letters: str  # "kafka://.../topic" or the file path


def check_topic(brokers: Sequence[str], topic: str, options: Mapping[str, str],
                timeout_s: float = 30.0) -> None:
    """Fail fast when a topic we will produce to is missing (auto-create may create it)."""
    from confluent_kafka.admin import AdminClient

    from feast_bytewax.kafka.source import KafkaSourceError

    client = AdminClient({"bootstrap.servers": ",".join(brokers), **options})
    try:
        md = client.list_topics(topic, timeout=timeout_s)
    except Exception as e:
        raise KafkaSourceError(f"cannot reach {','.join(brokers)} for topic {topic!r}: {e}")\
            from e
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        why = "missing" if tmd is None else tmd.error.str()
        raise KafkaSourceError(f"dead-letter topic {topic!r}: {why} (create it first)")


def build_live_flow(opts: LiveOptions, stats: Any, slo: Any = None, spec: Any = None):
    """The live dataflow; returns ``(flow, LiveParts)``."""
    from feast_bytewax.dataflow.deadletters import DeadLetterSink
    from feast_bytewax.dataflow.flow import build_flow
    from feast_bytewax.kafka.source import (
        KafkaDeadLetterSink,
        KafkaEventSource,
        StopControl,
        parse_kafka_url,
    )
    from feast_bytewax.dataflow.replay import open_store
    from feast_bytewax.features.spec import load_spec
    from feast_bytewax.timeutil import utc_now_us

    cfg = opts.cfg
    brokers, topic = parse_kafka_url(opts.source)
    repo = Path(cfg.repo_path).resolve()
    if spec is None:
        spec = load_spec(open_store(repo))
    stop = StopControl(opts.max_events, opts.idle_exit_s)
    source = KafkaEventSource(
        brokers, topic, start_from=opts.start_from, batch_size=cfg.batch_size,
        options=opts.kafka_options, stop=stop, tail=not opts.stop_at_end,
    )
    recorder = FreshnessRecorder(
        slo, horizon_s=cfg.watermark_delay_s + cfg.flush_interval_s + opts.epoch_interval_s
        + 300.0)
    _, live_sink = _observed_sink_classes()
    sink = live_sink(repo, spec, max_rows=cfg.flush_rows, max_interval=cfg.flush_interval_s,
                     online=cfg.write_online, offline=cfg.write_offline, stats=stats,
                     recorder=recorder)
    if opts.dead_letter_topic:
        for t in {opts.dead_letter_topic, opts.late_topic or opts.dead_letter_topic}:
            check_topic(brokers, t, opts.kafka_options)
        dead = KafkaDeadLetterSink(brokers, opts.dead_letter_topic, opts.late_topic,
                                   opts.kafka_options)
        where = f"kafka://{','.join(brokers)}/{opts.dead_letter_topic}"
        if opts.late_topic:
            where += f" (late: {opts.late_topic})"
    else:
        path = cfg.dead_letter_path if cfg.dead_letter_path.is_absolute() \
            else repo / cfg.dead_letter_path
        path.parent.mkdir(parents=True, exist_ok=True)
        dead = DeadLetterSink(path)
        where = str(path)
    flow = build_flow("live", cfg, spec, source, sink, dead, stats, clock=utc_now_us,
                      observe=recorder.observe_batch)
    return flow, LiveParts(source, stop, recorder, slo, where)
