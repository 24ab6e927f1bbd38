"""Run a feature dataflow in this process: `feast apply`, replay a file, report.

The same `build_flow` serves `python -m bytewax.run dataflows.replay` and the CLI; this
module only opens the Feast repo, picks the sinks and runs Bytewax with sensible knobs
(a long epoch when recovery is off: Bytewax snapshots every key at every epoch end).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from feast_bytewax.config import FlowConfig
from feast_bytewax.observability.metrics import FlowStats

REPLAY_EPOCH = timedelta(seconds=30)


def open_store(repo_path: str | Path):
    """A `FeatureStore` on the repo (import deferred: `import feast` takes seconds)."""
    from feast import FeatureStore

    quiet_feast_warnings()
    return FeatureStore(repo_path=str(repo_path))


def quiet_feast_warnings() -> None:
    """Feast warns on every StreamFeatureView construction that they are experimental; we
    know. (Feast installs its own 'once' filter at import, so this must run after it.)"""
    import warnings

    import feast.stream_feature_view  # noqa: F401

    warnings.filterwarnings("ignore", message="Stream feature views are experimental")


def apply_repo(repo_path: str | Path) -> None:
    """`feast apply` in-process for the repo (the same code path as the CLI)."""
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total

    quiet_feast_warnings()
    repo = Path(repo_path).resolve()
    if str(repo) not in sys.path:  # as the feast CLI does: definitions import each other
        sys.path.insert(0, str(repo))
    cwd = os.getcwd()
    try:
        apply_total(load_repo_config(repo, repo / "feature_store.yaml"), repo,
                    skip_source_validation=True)
    finally:
        os.chdir(cwd)


@dataclass
class ReplayResult:
    stats: FlowStats
    seconds: float
    dead_letter_path: Path


@contextmanager
def gc_frozen():
    """Full GC passes over millions of long-lived state objects cost ~2x; freeze them."""
    gc.collect()
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def build_replay_flow(
    cfg: FlowConfig,
    events: str | Path,
    stats: FlowStats,
    start: datetime | None = None,
    end: datetime | None = None,
    spec=None,
    s3_endpoint: str | None = None,
):
    """The replay dataflow over a parquet file/folder or JSON-lines file, local or a URI
    (``s3://bucket/prefix``; `s3_endpoint` else the environment gives the endpoint)."""
    from feast_bytewax.dataflow.deadletters import DeadLetterSink
    from feast_bytewax.dataflow.flow import build_flow
    from feast_bytewax.dataflow.feast_sink import FeastSink
    from feast_bytewax.ingest.files import EventFileSource
    from feast_bytewax.features.spec import load_spec

    repo = Path(cfg.repo_path).resolve()
    if spec is None:
        spec = load_spec(open_store(repo))
    sink = FeastSink(repo, spec, max_rows=cfg.flush_rows, max_interval=cfg.flush_interval_s,
                     online=cfg.write_online, offline=cfg.write_offline, stats=stats)
    dead_path = cfg.dead_letter_path if cfg.dead_letter_path.is_absolute() \
        else repo / cfg.dead_letter_path
    dead_path.parent.mkdir(parents=True, exist_ok=True)
    source = EventFileSource(events, batch_size=cfg.batch_size, start=start, end=end,
                             s3_endpoint_override=s3_endpoint)
    flow = build_flow("replay", cfg, spec, source, sink, DeadLetterSink(dead_path), stats)
    return flow, dead_path


def run_replay(
    cfg: FlowConfig,
    events: str | Path,
    workers: int = 1,
    start: datetime | None = None,
    end: datetime | None = None,
    on_progress: Callable[[FlowStats], None] | None = None,
    s3_endpoint: str | None = None,
) -> ReplayResult:
    """Replay a file (or folder, local or ``s3://``) through the dataflow into Feast;
    returns the run's counters."""
    import time

    from bytewax.run import cli_main

    stats = FlowStats()
    flow, dead_path = build_replay_flow(cfg, events, stats, start, end,
                                        s3_endpoint=s3_endpoint)
    done = threading.Event()
    ticker = None
    if on_progress is not None:
        def tick() -> None:
            while not done.wait(0.25):
                on_progress(stats)
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    t0 = time.perf_counter()
    try:
        with gc_frozen():
            cli_main(flow, workers_per_process=workers, epoch_interval=REPLAY_EPOCH)
    finally:
        done.set()
        if ticker is not None:
            ticker.join()
    return ReplayResult(stats, time.perf_counter() - t0, dead_path)


def describe(result: Any) -> str:
    """The one-line summary `replay` ends with."""
    return f"{result.stats.summary()} in {result.seconds:.1f}s"
