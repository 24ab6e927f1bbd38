"""The live dataflow, Kafka -> features -> Feast (`feast-bytewax run`, `dataflows/live.py`).

The flow is `flow.build_flow` with a `kafka.source.KafkaEventSource` and a wall clock, so the
watermark keeps moving while the stream is idle and idle keys decay on time. Brokers, topic
and watermark delay come from `--source` / `--watermark-delay` (or their
``FEAST_BYTEWAX_*`` variables), else from the event stream's `KafkaSource` in
`feast_repo/`. Feature rows go through Feast (`feature_store.yaml` of `--repo`); rejected
input and late events go to `--dead-letter-topic` / `--late-topic` (Kafka) or, without a
topic, to the `--dead-letters` JSON-lines file.

Stopping (SIGTERM or Ctrl-C):

- without `--recovery-dir`: the input ends cleanly (every shard and sink is flushed, the run
  prints its summary and exits 0); a second signal aborts at once. A clean stop is an end of
  input: open windows are finalized at the newest event time (the state is gone anyway);
- with `--recovery-dir`: the run aborts at once and a restart resumes state and offsets from
  the last snapshot (at most `--epoch-interval` old) and replays what followed it.

Metrics (``--metrics-port``, bound to ``--metrics-host``): everything in
`observability.metrics` plus Bytewax's own ``bytewax_kafka_consumer_lag``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main
from confluent_kafka.admin import AdminClient

from feast_bytewax.config import LiveConfig, parse_kafka_url
from feast_bytewax.dataflow.deadletters import DeadLetterSink
from feast_bytewax.dataflow.feast_sink import FeastSink
from feast_bytewax.dataflow.flow import build_flow
from feast_bytewax.dataflow.joins import Lookups, lookups_for, named_inputs, table_files
from feast_bytewax.dataflow.lifecycle import RunLifecycle
from feast_bytewax.dataflow.repo import check_repo, open_store
from feast_bytewax.dataflow.runtime import Signals, ensure_recovery_dir, gc_frozen, ticker
from feast_bytewax.errors import ConfigError
from feast_bytewax.features.inputs import TableSpec
from feast_bytewax.features.spec import FlowSpec, load_flow_spec
from feast_bytewax.kafka.deadletters import KafkaDeadLetterSink
from feast_bytewax.kafka.settings import kafka_options
from feast_bytewax.kafka.source import KafkaEventSource, KafkaSourceError, StopControl
from feast_bytewax.observability.freshness import FreshnessRecorder, StallMonitor
from feast_bytewax.observability.metrics import serve_metrics
from feast_bytewax.observability.slo import FreshnessSLO
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.stores.folder_names import new_run_id

log = logging.getLogger(__name__)


@dataclass
class LiveParts:
    """What `build_live_flow` built besides the flow (for the runner and tests)."""

    source: KafkaEventSource
    stop: StopControl
    recorder: FreshnessRecorder
    slo: FreshnessSLO | None
    dead_letters: str  # "kafka://.../topic" or the file path
    cfg: LiveConfig
    lookups: Lookups | None = None


@dataclass
class LiveResult:
    stats: FlowStats
    seconds: float
    stop_reason: str | None
    kafka_errors: dict[str, int]
    slo_breaches: int
    freshness_p99_s: float | None
    dead_letters: str
    lookups: str | None = None

    def summary(self) -> str:
        extra = f" in {self.seconds:.1f}s; stopped: {self.stop_reason or 'end of input'}"
        if self.lookups:
            extra += f"; {self.lookups}"
        if self.kafka_errors:
            extra += f"; kafka errors {self.kafka_errors}"
        if self.freshness_p99_s is not None:
            extra += f"; freshness p99 {self.freshness_p99_s:.3f}s"
        extra += f"; SLO breaches {self.slo_breaches}"
        return self.stats.summary() + extra


def with_declared_stream(cfg: LiveConfig, spec: FlowSpec) -> LiveConfig:
    """Fill what neither a flag nor the environment set from the repo's KafkaSource."""
    stream = spec.stream
    updates: dict[str, Any] = {}
    if cfg.source is None:
        if stream is None or not stream.brokers or not stream.topic:
            raise ConfigError("no --source given and feast_repo/ declares no KafkaSource with "
                              "brokers and a topic: pass --source kafka://HOST:PORT/TOPIC")
        updates["source"] = f"kafka://{','.join(stream.brokers)}/{stream.topic}"
    if ("watermark_delay" not in cfg.model_fields_set and stream is not None
            and stream.watermark_delay_s is not None):
        updates["watermark_delay"] = stream.watermark_delay_s
    return cfg.model_copy(update=updates) if updates else cfg


def check_topic(brokers: Sequence[str], topic: str, options: Mapping[str, str],
                timeout_s: float = 30.0) -> None:
    """Fail fast when a topic we will produce to is missing (auto-create may create it)."""
    client = AdminClient({"bootstrap.servers": ",".join(brokers), "log_level": "2", **options})
    try:
        md = client.list_topics(topic, timeout=timeout_s)
    except Exception as e:
        raise KafkaSourceError(
            f"cannot reach {','.join(brokers)} for topic {topic!r}: {e}") from e
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        why = "missing" if tmd is None else tmd.error.str()
        raise KafkaSourceError(f"dead-letter topic {topic!r}: {why} (create it first)")


def build_live_flow(cfg: LiveConfig, stats: FlowStats, spec: FlowSpec | None = None,
                    environ: Mapping[str, str] | None = None):
    """The live dataflow; returns ``(flow, LiveParts)``."""
    repo = check_repo(cfg.repo)
    if spec is None:
        spec = load_flow_spec(open_store(repo, check_online=cfg.online))
    cfg = with_declared_stream(cfg, spec)
    brokers, topic = parse_kafka_url(cfg.source)
    options = kafka_options(cfg.kafka_option, environ)
    stop = StopControl(cfg.max_events, cfg.idle_exit)
    source = KafkaEventSource(brokers, topic, start_from=cfg.start_from,
                              batch_size=cfg.batch_size, options=options, stop=stop,
                              tail=not cfg.stop_at_end)
    recorder = FreshnessRecorder(
        horizon_s=cfg.watermark_delay + cfg.flush_interval + cfg.epoch_interval + 300.0)
    monitor = StallMonitor()
    slo = (FreshnessSLO(cfg.freshness_slo, pending_age=monitor.pending_age)
           if cfg.freshness_slo else None)
    lifecycle = RunLifecycle()
    run = new_run_id()
    tables: dict[str, Any] = {}
    for view, topic in named_inputs(cfg.profiles_topic, spec, "--profiles-topic").items():
        tables[view] = KafkaEventSource(brokers, topic, start_from="earliest",
                                        batch_size=cfg.batch_size, options=options, stop=stop,
                                        tail=not cfg.stop_at_end)
    for view, files in table_files(cfg, spec, None, use_declared=False).items():
        if view in tables:
            raise ConfigError(f"joined view {view!r}: give its versions as --profiles or "
                              "--profiles-topic, not both")
        tables[view] = files.source(cfg.batch_size, None)

    provisional = cfg.online_rows == "provisional"

    def sink_for(spec_of):
        table = isinstance(spec_of, TableSpec)  # versions: not counted as fresh feature rows
        return FeastSink(repo, spec_of, run=run, mode="live", lifecycle=lifecycle,
                         outage_limit=cfg.store_outage_limit, monitor=monitor,
                         max_rows=cfg.flush_rows, max_interval=cfg.flush_interval,
                         online=cfg.online, offline=cfg.offline,
                         stats=None if table else stats,
                         on_flush=None if table else recorder.rows_readable,
                         provisional=provisional and not table,
                         online_interval=cfg.online_flush_interval)

    if cfg.dead_letter_topic:
        for t in {cfg.dead_letter_topic, cfg.late_topic or cfg.dead_letter_topic}:
            check_topic(brokers, t, options)
        dead = KafkaDeadLetterSink(brokers, cfg.dead_letter_topic, cfg.late_topic, options,
                                   recovery=cfg.recovery_dir)
        where = f"kafka://{','.join(brokers)}/{cfg.dead_letter_topic}"
        if cfg.late_topic:
            where += f" (late: {cfg.late_topic})"
    else:
        path = cfg.dead_letter_file
        path.parent.mkdir(parents=True, exist_ok=True)
        dead = DeadLetterSink(path, recovery=cfg.recovery_dir)
        where = str(path)
    lookups = lookups_for(cfg, spec, repo)
    flow = build_flow("live", cfg, spec, source, sink_for, dead, stats, live=True,
                      observe=recorder.observe_batch, lifecycle=lifecycle, tables=tables,
                      lookup=lookups, provisional=provisional)
    return flow, LiveParts(source, stop, recorder, slo, where, cfg, lookups)


def start_metrics(cfg: LiveConfig) -> None:
    """Serve the metrics when a port is set, on the configured address: 0.0.0.0 (the
    default) lets Prometheus scrape the pod; 127.0.0.1 keeps them to a sidecar or a tunnel.
    Shared by `run_live` and `dataflows/live.py`, so both runners bind the same way."""
    if cfg.metrics_port:
        serve_metrics(cfg.metrics_port, cfg.metrics_host)
        log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, cfg.metrics_port)


def watch_slo(slo: FreshnessSLO | None, every_s: float = 0.25) -> threading.Thread | None:
    """Check the SLO every `every_s` on a daemon thread for the rest of the process: what
    `run_live`'s ticker does, for `dataflows/live.py`, where Bytewax's runner owns the main
    thread and nothing else would ever evaluate the alert."""
    if slo is None:
        return None
    thread = threading.Thread(target=lambda: _check_forever(slo, every_s),
                              name="feast-bytewax-slo", daemon=True)
    thread.start()
    return thread


def _check_forever(slo: FreshnessSLO, every_s: float) -> None:
    while True:
        time.sleep(every_s)
        slo.check()


def run_live(cfg: LiveConfig, on_progress: Callable[[FlowStats, LiveParts], None] | None = None,
             handle_signals: bool = False, spec: FlowSpec | None = None) -> LiveResult:
    """Build and run the live flow in this process until a stop condition; return counters."""
    stats = FlowStats()
    flow, parts = build_live_flow(cfg, stats, spec)
    cfg = parts.cfg
    start_metrics(cfg)
    recovery = None
    if cfg.recovery_dir is not None:
        ensure_recovery_dir(cfg.recovery_dir)
        recovery = RecoveryConfig(str(cfg.recovery_dir))
    log.info("live run: %s -> Feast repo %s; dead letters -> %s", cfg.source, cfg.repo,
             parts.dead_letters)
    slo = parts.slo

    def tick() -> None:
        if slo is not None:
            slo.check()
        if on_progress is not None:
            on_progress(stats, parts)

    t0 = time.perf_counter()
    signals = Signals(parts.stop, abort_first=recovery is not None) if handle_signals else None
    try:
        with signals or contextlib.nullcontext(), ticker(0.25, tick), \
                gc_frozen(cfg.gc_interval):
            cli_main(flow, workers_per_process=cfg.workers,
                     epoch_interval=timedelta(seconds=cfg.epoch_interval),
                     recovery_config=recovery)
    except (KeyboardInterrupt, BytewaxRuntimeError):
        if signals is None or signals.aborted is None:
            raise
        parts.stop.request_stop(signals.aborted)
    finally:
        if parts.lookups is not None:
            parts.lookups.close()
    if slo is not None:
        slo.check()
    return LiveResult(
        stats=stats, seconds=time.perf_counter() - t0, stop_reason=parts.stop.reason,
        kafka_errors=dict(parts.source.errors.counts), slo_breaches=slo.breaches if slo else 0,
        freshness_p99_s=slo.last_p99 if slo else None, dead_letters=parts.dead_letters,
        lookups=parts.lookups.summary() if parts.lookups is not None else None,
    )

