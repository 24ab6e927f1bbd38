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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast_bytewax.dataflow.live_flow import LiveParts, build_live_flow, check_topic
from feast_bytewax.observability.freshness import (
    ARRIVAL_MAX_TRACKED,
    ARRIVAL_SAMPLE_PER_BATCH,
    FreshnessRecorder,
)
from feast_bytewax.dataflow.live_options import (
    DEFAULT_EPOCH_S,
    LiveOptions,
    add_run_arguments,
    options_from_args,
    options_from_env,
)

log = logging.getLogger("feast_bytewax.dataflow.live")

__all__ = [
    "ARRIVAL_MAX_TRACKED",
    "ARRIVAL_SAMPLE_PER_BATCH",
    "DEFAULT_EPOCH_S",
    "FreshnessRecorder",
    "LiveOptions",
    "LiveParts",
    "LiveResult",
    "add_run_arguments",
    "build_live_flow",
    "check_topic",
    "consumer_lag",
    "ensure_recovery_dir",
    "main",
    "options_from_args",
    "options_from_env",
    "run_live",
]


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
    from feast_bytewax.observability.metrics import KAFKA_LAG

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

    from feast_bytewax.observability.metrics import FlowStats, FreshnessSLO, serve_metrics
    from feast_bytewax.dataflow.replay import gc_frozen  # full GC passes over long-lived state: ~2x

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
