"""Replay an event file (or folder, local or ``s3://``) through the dataflow into Feast.

The same `build_replay_flow` serves `feast-bytewax replay`, the demo and `python -m
bytewax.run dataflows.replay`; this module opens the Feast repo, compiles its definitions,
picks the sinks and runs Bytewax with sensible knobs (a long epoch when recovery is off:
Bytewax snapshots every key at every epoch end).

A replay is one run of the offline commit log (`stores.commits`): its rows become visible
together when it ends, and they replace its time range, so replaying a day again (after a
fix, a new feature, or just twice) leaves one copy of that day, and readers never see a
half-done replay. The range is [--start, --end) if given, else the input's, up to the
newest event time the engine accepted. With --start, the events of the longest window
before it are read too (the state needs them) but no row before --start is written; every
key with a value at --start gets a row stamped exactly then, so the stored step function is
right from the range's first instant whatever was stored before it. The
run's id is derived from the input and the definitions, so every process of a multi-process
replay agrees on it. With --recovery-dir, a crashed replay restarted with the same command
resumes and ends as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main

from feast_bytewax.config import ReplayConfig
from feast_bytewax.dataflow.deadletters import DeadLetterSink
from feast_bytewax.dataflow.feast_sink import FeastSink
from feast_bytewax.dataflow.flow import build_flow
from feast_bytewax.dataflow.joins import Lookups, lookups_for, table_files
from feast_bytewax.dataflow.lifecycle import RunLifecycle
from feast_bytewax.dataflow.repo import check_repo, open_store
from feast_bytewax.dataflow.runtime import ensure_recovery_dir, gc_frozen, ticker
from feast_bytewax.errors import ConfigError
from feast_bytewax.features.inputs import TableSpec
from feast_bytewax.features.spec import FlowSpec, load_flow_spec
from feast_bytewax.ingest.files import EventFileSource, resolve_event_files
from feast_bytewax.ingest.inventory import event_time_range, input_identity
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.stores.folder_names import new_run_id
from feast_bytewax.timeutil import from_us, to_us


@dataclass
class ReplayResult:
    stats: FlowStats
    seconds: float
    dead_letter_path: Path
    lookups: Lookups | None = None

    def describe(self) -> str:
        """The one-line summary `replay` ends with."""
        text = f"{self.stats.summary()} in {self.seconds:.1f}s"
        if self.lookups is not None and self.lookups.steps:
            text += f"; {self.lookups.summary()}"
        return text


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
        spec = load_flow_spec(open_store(repo, check_online=cfg.online))
    path = events_path(cfg, spec)
    try:  # before the dataflow starts: inside it, a missing file is a Rust panic
        files = resolve_event_files(path, cfg.s3_endpoint)
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"--events {path}: cannot read it ({e}); give a parquet file, a "
                          "folder of parquet parts or a JSON-lines file") from None
    dead_path = cfg.dead_letter_file
    if any(Path(f.path) == dead_path.resolve() for f in files if f.local):
        raise ConfigError(f"--events {path} is the dead-letter file this replay appends to: "
                          "give the replay another --dead-letters file")
    start_us = to_us(cfg.start) if cfg.start is not None else None
    end_us = to_us(cfg.end) if cfg.end is not None else None
    lo = start_us
    if lo is None:
        span = event_time_range(files)
        lo = span[0] if span is not None else None
    replace = (lo, end_us - 1 if end_us is not None else None)
    lookback = max(e.lookback_us for e in spec.entities)
    read_from = None if start_us is None else from_us(start_us - lookback)
    tables = table_files(cfg, spec, cfg.s3_endpoint, use_declared=True)
    digest = hashlib.sha256(repr((input_identity(files), start_us, end_us,
                                  [e.fingerprint for e in spec.entities],
                                  sorted((v, t.identity) for v, t in tables.items()))).encode())
    run = new_run_id(digest.hexdigest())
    lifecycle = RunLifecycle()
    # a table's versions are read whole (an event at --start needs the version before it):
    # its rows replace the versions' own time range
    table_range = {t.table.view: t.time_range() for t in tables.values()}

    def sink_for(spec_of):
        if isinstance(spec_of, TableSpec):
            return FeastSink(repo, spec_of, run=run, mode="replay",
                             replace=table_range.get(spec_of.view) or (None, None),
                             lifecycle=lifecycle, outage_limit=cfg.store_outage_limit,
                             max_rows=cfg.flush_rows, max_interval=cfg.flush_interval,
                             online=cfg.online, offline=cfg.offline)
        return FeastSink(repo, spec_of, run=run, mode="replay", replace=replace,
                         write_from=start_us, lifecycle=lifecycle,
                         outage_limit=cfg.store_outage_limit, max_rows=cfg.flush_rows,
                         max_interval=cfg.flush_interval, online=cfg.online,
                         offline=cfg.offline, stats=stats)

    dead_path.parent.mkdir(parents=True, exist_ok=True)
    source = EventFileSource(path, batch_size=cfg.batch_size, start=read_from, end=cfg.end,
                             columns=spec.schema.columns, s3_endpoint_override=cfg.s3_endpoint)
    dead = DeadLetterSink(dead_path, recovery=cfg.recovery_dir)
    lookups = lookups_for(cfg, spec, repo)
    flow = build_flow("replay", cfg, spec, source, sink_for, dead, stats, lifecycle=lifecycle,
                      emit_from=start_us,
                      tables={v: t.source(cfg.batch_size, cfg.s3_endpoint)
                              for v, t in tables.items()},
                      lookup=lookups)
    return flow, dead_path, lookups


def run_replay(cfg: ReplayConfig, on_progress: Callable[[FlowStats], None] | None = None,
               spec: FlowSpec | None = None) -> ReplayResult:
    """Replay the events through the dataflow into Feast; returns the run's counters."""
    stats = FlowStats()
    flow, dead_path, lookups = build_replay_flow(cfg, stats, spec)
    recovery = None
    if cfg.recovery_dir is not None:
        ensure_recovery_dir(cfg.recovery_dir)
        recovery = RecoveryConfig(str(cfg.recovery_dir))
    t0 = time.perf_counter()
    with ticker(0.25, None if on_progress is None else lambda: on_progress(stats)), \
            gc_frozen(cfg.gc_interval):
        try:
            cli_main(flow, workers_per_process=cfg.workers,
                     epoch_interval=timedelta(seconds=cfg.epoch_interval),
                     recovery_config=recovery)
        finally:
            if lookups is not None:
                lookups.close()
    return ReplayResult(stats, time.perf_counter() - t0, dead_path, lookups)
