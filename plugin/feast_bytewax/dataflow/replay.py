"""Replay an event file (or folder, local or ``s3://``) through the dataflow into Feast.

The same `build_replay_flow` serves `feast-bytewax replay`, the demo and `python -m
bytewax.run dataflows.replay`; this module opens the Feast repo, compiles its definitions,
picks the sinks and runs Bytewax with sensible knobs (a long epoch when recovery is off:
Bytewax snapshots every key at every epoch end).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax.run import cli_main

from feast_bytewax.config import ReplayConfig
from feast_bytewax.dataflow.deadletters import DeadLetterSink
from feast_bytewax.dataflow.feast_sink import FeastSink
from feast_bytewax.dataflow.flow import build_flow
from feast_bytewax.dataflow.repo import check_repo, open_store
from feast_bytewax.dataflow.runtime import gc_frozen, ticker
from feast_bytewax.errors import ConfigError
from feast_bytewax.features.spec import FlowSpec, load_flow_spec
from feast_bytewax.ingest.files import EventFileSource, resolve_event_files
from feast_bytewax.observability.stats import FlowStats


@dataclass
class ReplayResult:
    stats: FlowStats
    seconds: float
    dead_letter_path: Path

    def describe(self) -> str:
        """The one-line summary `replay` ends with."""
        return f"{self.stats.summary()} in {self.seconds:.1f}s"


def events_path(cfg: ReplayConfig, spec: FlowSpec) -> str:
    """`--events`, else the archive (batch source) of the declared event stream."""
    if cfg.events:
        return cfg.events
    if spec.stream is not None and spec.stream.archive:
        archive = spec.stream.archive
        return archive if "://" in archive else str(cfg.resolve(Path(archive)))
    raise ConfigError("no --events given and feast_repo/ declares no event archive (the "
                      "KafkaSource's batch_source): pass --events PATH")


def build_replay_flow(cfg: ReplayConfig, stats: FlowStats, spec: FlowSpec | None = None):
    """The replay dataflow and its dead-letter file, for `cfg.events` (else the archive)."""
    repo = check_repo(cfg.repo)
    if spec is None:
        spec = load_flow_spec(open_store(repo))
    path = events_path(cfg, spec)
    try:  # before the dataflow starts: inside it, a missing file is a Rust panic
        resolve_event_files(path, cfg.s3_endpoint)
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"--events {path}: cannot read it ({e}); give a parquet file, a "
                          "folder of parquet parts or a JSON-lines file") from None

    def sink_for(entity):
        return FeastSink(repo, entity, max_rows=cfg.flush_rows, max_interval=cfg.flush_interval,
                         online=cfg.online, offline=cfg.offline, stats=stats)

    dead_path = cfg.dead_letter_file
    dead_path.parent.mkdir(parents=True, exist_ok=True)
    source = EventFileSource(path, batch_size=cfg.batch_size, start=cfg.start, end=cfg.end,
                             columns=spec.schema.columns, s3_endpoint_override=cfg.s3_endpoint)
    flow = build_flow("replay", cfg, spec, source, sink_for, DeadLetterSink(dead_path), stats)
    return flow, dead_path


def run_replay(cfg: ReplayConfig, on_progress: Callable[[FlowStats], None] | None = None,
               spec: FlowSpec | None = None) -> ReplayResult:
    """Replay the events through the dataflow into Feast; returns the run's counters."""
    stats = FlowStats()
    flow, dead_path = build_replay_flow(cfg, stats, spec)
    t0 = time.perf_counter()
    with ticker(0.25, None if on_progress is None else lambda: on_progress(stats)), \
            gc_frozen():
        cli_main(flow, workers_per_process=cfg.workers,
                 epoch_interval=timedelta(seconds=cfg.epoch_interval))
    return ReplayResult(stats, time.perf_counter() - t0, dead_path)
