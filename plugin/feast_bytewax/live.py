"""`feast-bytewax run`: the live dataflow, Kafka -> features -> Feast, from the project root.

    feast-bytewax run --source kafka://HOST:PORT[,HOST:PORT]/TOPIC [knobs]

The flow is `flow.build_flow` with a `kafka.KafkaEventSource` and a wall clock
(`timeutil.utc_now_us`), so the watermark keeps moving while the stream is idle and idle
keys decay on time. Feature rows go through Feast (`feature_store.yaml` of `--repo`); rejected
input and late events go to `--dead-letter-topic` / `--late-topic` (Kafka) or, without a topic,
to the `--dead-letters` JSON-lines file.

Run-specific knobs (see `add_run_arguments`): `--start-from earliest|latest`,
`--kafka-option KEY=VALUE` (repeated; librdkafka settings, e.g. ``security.protocol=SASL_SSL``;
secrets better in ``FEAST_BYTEWAX_KAFKA_OPT_SASL_PASSWORD``-style variables, see
`kafka.kafka_options`), `--metrics-port` (Prometheus), `--freshness-slo SECONDS`,
`--recovery-dir DIR` (Bytewax recovery: state and offsets survive a crash; created with one
partition when empty), `--epoch-interval SECONDS`, and stop conditions for tests and batch
use: `--max-events N`, `--idle-exit SECONDS`, `--stop-at-end`.

Stopping (SIGTERM or Ctrl-C):

- without `--recovery-dir`: the input ends cleanly (every shard and sink is flushed, the run
  prints its summary and exits 0); a second signal aborts at once. A clean stop is an end of
  input: open windows are finalized at the newest event time (the state is gone anyway);
- with `--recovery-dir`: the run aborts at once and a restart resumes state and offsets from
  the last snapshot (at most `--epoch-interval` old) and replays what followed it: exact
  features, at-least-once outputs (online writes are idempotent overwrites; the offline
  store and the dead-letter topics may get duplicates of those rows). Finalizing windows at
  a stop would instead turn events that arrive after the restart into corrections or late.

Metrics (``--metrics-port``): everything in `metrics.py` (consumed, processed, late,
rejected, corrections, rows, rows pushed offline/online, push seconds, freshness since event
time and since arrival, the SLO's p99/breaches, Kafka errors, dead letters produced, per-
partition ``feast_bytewax_kafka_lag``) plus Bytewax's own ``bytewax_kafka_consumer_lag``
(librdkafka statistics, every second once a partition has read something).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast_bytewax.config import FlowConfig

log = logging.getLogger("feast_bytewax.live")

DEFAULT_EPOCH_S = 2.0
ARRIVAL_SAMPLE_PER_BATCH = 64
ARRIVAL_MAX_TRACKED = 200_000


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


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
        from feast_bytewax.kafka import START_OFFSETS, parse_kafka_url

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
    from feast_bytewax.cli import flow_config
    from feast_bytewax.kafka import kafka_options

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
    from feast_bytewax.kafka import kafka_options

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


# ---------------------------------------------------------------------------------------
# Freshness
# ---------------------------------------------------------------------------------------


class FreshnessRecorder:
    """Measures, per row that became readable, its freshness:

    - since event time: readable wall time - the row's timestamp (`FRESHNESS_SECONDS`, and
      the SLO monitor if any);
    - since arrival: readable wall time - the wall time its event was validated
      (`FRESHNESS_ARRIVAL_SECONDS`), for rows caused by an event. Arrivals are sampled (the
      first `sample_per_batch` events of each validated batch, at most `max_tracked` waiting)
      and looked up by (key, event time); they live in this process only, so with several
      worker processes a row flushed on another process is simply not measured.

    Only the latest row per key of a flush is online-readable (the sink coalesces), so only
    those are measured. Thread-safe (validators and sinks run on worker threads).
    """

    def __init__(self, slo: Any = None, *, sample_per_batch: int = ARRIVAL_SAMPLE_PER_BATCH,
                 max_tracked: int = ARRIVAL_MAX_TRACKED, horizon_s: float = 600.0,
                 clock: Callable[[], int] | None = None) -> None:
        from feast_bytewax.timeutil import utc_now_us

        self.slo = slo
        self.sample_per_batch = sample_per_batch
        self.max_tracked = max_tracked
        self.horizon_us = int(horizon_s * 1e6)
        self.clock = clock or utc_now_us
        self._arrivals: dict[tuple[str, int], int] = {}
        self._order: deque[tuple[int, tuple[str, int]]] = deque()
        self._lock = threading.Lock()
        self.rows_measured = 0
        self.arrivals_measured = 0

    def observe_batch(self, batch: Sequence[Any], now_us: int) -> None:
        """`flow.make_validator` hook: remember when sampled events arrived."""
        from feast_bytewax.events import Event

        picked = []
        for x in batch:
            if type(x) is Event:
                picked.append((x.user_id, x.event_timestamp))
                if len(picked) >= self.sample_per_batch:
                    break
        if not picked:
            return
        with self._lock:
            self._prune(now_us)
            for key in picked:
                if len(self._arrivals) >= self.max_tracked:
                    break
                self._arrivals[key] = now_us
                self._order.append((now_us, key))

    def _prune(self, now_us: int) -> None:
        order, arrivals = self._order, self._arrivals
        while order and (now_us - order[0][0] > self.horizon_us):
            t, key = order.popleft()
            if arrivals.get(key) == t:
                del arrivals[key]

    def rows_readable(self, rows: Sequence[Any], now_us: int | None = None) -> None:
        """Rows a flush just made readable (in flush order)."""
        from feast_bytewax.metrics import FRESHNESS_ARRIVAL_SECONDS, FRESHNESS_SECONDS

        if not rows:
            return
        now_us = self.clock() if now_us is None else now_us
        latest: dict[str, Any] = {}
        for r in rows:
            prev = latest.get(r.key)
            if prev is None or r.event_timestamp >= prev.event_timestamp:
                latest[r.key] = r
        fresh = [(now_us - r.event_timestamp) / 1e6 for r in latest.values()]
        since_arrival = []
        with self._lock:
            if self._arrivals:
                for r in rows:
                    t = self._arrivals.pop((r.key, r.event_timestamp), None)
                    if t is not None and r.cause == "event" and latest[r.key] is r:
                        since_arrival.append((now_us - t) / 1e6)
        for v in fresh:
            FRESHNESS_SECONDS.observe(v)
        for v in since_arrival:
            FRESHNESS_ARRIVAL_SECONDS.observe(v)
        self.rows_measured += len(fresh)
        self.arrivals_measured += len(since_arrival)
        if self.slo is not None:
            self.slo.observe(fresh)


def _observed_sink_classes():
    """`FeastSink` / `FeastWriter` subclasses reporting flushed rows to a recorder (built
    lazily: importing sinks pulls pandas/pyarrow)."""
    from feast_bytewax.sinks import FeastSink, FeastWriter

    class ObservedFeastWriter(FeastWriter):
        def __init__(self, *args: Any, recorder: FreshnessRecorder, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.recorder = recorder

        def flush(self) -> int:
            rows = self._buffer
            try:
                n = super().flush()
            except Exception:
                # Bytewax 0.21 can turn a sink exception into a Rust panic that never prints
                # the Python error: say what failed before it does.
                log.exception("Feast write of %d rows failed; the run stops", len(rows))
                raise
            if n:
                self.recorder.rows_readable(rows)
            return n

    class LiveFeastSink(FeastSink):
        def __init__(self, *args: Any, recorder: FreshnessRecorder, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.recorder = recorder

        def build_writer(self) -> FeastWriter:
            from feast_bytewax.spec import load_spec

            store = self.open_store()
            spec = self.spec if self.spec is not None else load_spec(store, self.join_key)
            return ObservedFeastWriter(
                store, spec, max_rows=self.max_rows, max_interval=self.max_interval,
                online=self.online, offline=self.offline, stats=self.stats,
                recorder=self.recorder,
            )

    return ObservedFeastWriter, LiveFeastSink


# ---------------------------------------------------------------------------------------
# The flow
# ---------------------------------------------------------------------------------------


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

    from feast_bytewax.kafka import KafkaSourceError

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
    from feast_bytewax.deadletter import DeadLetterSink
    from feast_bytewax.flow import build_flow
    from feast_bytewax.kafka import (
        KafkaDeadLetterSink,
        KafkaEventSource,
        StopControl,
        parse_kafka_url,
    )
    from feast_bytewax.runner import open_store
    from feast_bytewax.spec import load_spec
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


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


@dataclass
class LiveResult:
    stats: Any
    seconds: float
    stop_reason: str | None
    kafka_errors: dict[str, int]
    slo_breaches: int
    freshness_p99_s: float | None
    dead_letters: str

    def summary(self) -> str:
        extra = f" in {self.seconds:.1f}s; stopped: {self.stop_reason or 'end of input'}"
        if self.kafka_errors:
            extra += f"; kafka errors {self.kafka_errors}"
        if self.freshness_p99_s is not None:
            extra += f"; freshness p99 {self.freshness_p99_s:.3f}s"
        extra += f"; SLO breaches {self.slo_breaches}"
        return self.stats.summary() + extra


def consumer_lag() -> dict[str, float]:
    """The per-partition lag gauge of this process, as ``{"topic/partition": lag}``."""
    from feast_bytewax.metrics import KAFKA_LAG

    out = {}
    for metric in KAFKA_LAG.collect():
        for s in metric.samples:
            out[f"{s.labels['topic']}/{s.labels['partition']}"] = s.value
    return out


def ensure_recovery_dir(path: Path, partitions: int = 1) -> None:
    """Create Bytewax recovery partitions in an empty or missing directory."""
    from bytewax.recovery import init_db_dir

    path.mkdir(parents=True, exist_ok=True)
    if not any(path.iterdir()):
        init_db_dir(path, partitions)
        log.info("initialised %d recovery partition(s) in %s", partitions, path)


class _Signals:
    """SIGINT/SIGTERM: the first one stops cleanly (end of input), or aborts when
    `abort_first` (recovery on: resume from the last snapshot); a second one aborts."""

    def __init__(self, stop: Any, abort_first: bool = False) -> None:
        self.stop = stop
        self.abort_first = abort_first
        self.previous: dict[int, Any] = {}
        self.count = 0
        self.aborted: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1 and not self.abort_first:
            log.warning("%s: stopping after flushing everything (again to abort)", name)
            self.stop.request_stop(f"signal {name}")
            return
        self.aborted = f"signal {name}: aborted" + (
            "; a restart resumes from the last recovery snapshot" if self.abort_first else "")
        log.warning(self.aborted)
        raise KeyboardInterrupt

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def run_live(opts: LiveOptions, on_progress: Callable[[Any, LiveParts], None] | None = None,
             handle_signals: bool = False, spec: Any = None) -> LiveResult:
    """Build and run the live flow in this process until a stop condition; return counters."""
    import contextlib

    from bytewax.errors import BytewaxRuntimeError
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from feast_bytewax.metrics import FlowStats, FreshnessSLO, serve_metrics
    from feast_bytewax.runner import gc_frozen  # full GC passes over long-lived state: ~2x

    stats = FlowStats()
    slo = FreshnessSLO(opts.freshness_slo_s) if opts.freshness_slo_s else None
    flow, parts = build_live_flow(opts, stats, slo, spec)
    if opts.metrics_port:
        serve_metrics(opts.metrics_port)
        log.info("metrics on http://0.0.0.0:%d/metrics", opts.metrics_port)
    recovery = None
    if opts.recovery_dir is not None:
        ensure_recovery_dir(opts.recovery_dir)
        recovery = RecoveryConfig(str(opts.recovery_dir))
    log.info("live run: %s -> Feast repo %s; dead letters -> %s", opts.source,
             opts.cfg.repo_path, parts.dead_letters)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(0.25):
            if slo is not None:
                slo.check()
            if on_progress is not None:
                on_progress(stats, parts)

    ticker = threading.Thread(target=tick, name="feast-bytewax-live-ticker", daemon=True)
    ticker.start()
    t0 = time.perf_counter()
    signals = _Signals(parts.stop, abort_first=recovery is not None) if handle_signals \
        else None
    try:
        with signals or contextlib.nullcontext(), gc_frozen():
            cli_main(flow, workers_per_process=opts.workers,
                     epoch_interval=timedelta(seconds=opts.epoch_interval_s),
                     recovery_config=recovery)
    except (KeyboardInterrupt, BytewaxRuntimeError):
        if signals is None or signals.aborted is None:
            raise
        parts.stop.request_stop(signals.aborted)
    finally:
        done.set()
        ticker.join()
    if slo is not None:
        slo.check()
    return LiveResult(
        stats=stats, seconds=time.perf_counter() - t0, stop_reason=parts.stop.reason,
        kafka_errors=dict(parts.source.errors.counts), slo_breaches=slo.breaches if slo else 0,
        freshness_p99_s=slo.last_p99 if slo else None, dead_letters=parts.dead_letters,
    )


def _progress_line(stats: Any, parts: LiveParts, started: float):
    from rich.text import Text

    d = stats.as_dict()
    rate = d["consumed"] / max(time.perf_counter() - started, 1e-9)
    lag = consumer_lag()
    text = (f"consumed {d['consumed']:,}  processed {d['processed']:,}  late {d['late']:,}  "
            f"rejected {d['rejected']:,}  rows {d['rows']:,}  online {d['rows_online']:,}  "
            f"({rate:,.0f} events/s)  lag {sum(lag.values()):,.0f}")
    slo = parts.slo
    if slo is not None and slo.last_p99 is not None:
        state = "BREACH" if slo.breached else "ok"
        text += f"  fresh p99 {slo.last_p99:.2f}s [{state}]"
    return Text(text, style="bold red" if slo is not None and slo.breached else "")


def main(args: argparse.Namespace) -> int:
    """`feast-bytewax run` (cli.py routes here)."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = options_from_args(args)
    console = Console(stderr=True)
    show = not args.quiet and console.is_terminal
    started = time.perf_counter()
    if show:
        with Live(Text("starting..."), console=console, refresh_per_second=4,
                  transient=True) as live:
            result = run_live(
                opts, lambda s, p: live.update(_progress_line(s, p, started)),
                handle_signals=True)
    else:
        result = run_live(opts, handle_signals=True)
    print(result.summary())
    if result.stats.rejected or result.stats.late:
        print(f"dead letters: {result.dead_letters}")
    if result.stop_reason and "aborted" in result.stop_reason:
        return 0  # a requested abort: counts in flight are not settled, nothing to check
    return 0 if result.stats.balanced() else 1
