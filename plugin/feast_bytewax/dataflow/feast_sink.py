"""Feature rows -> Feast from Bytewax: the sink around `feast_bytewax.dataflow.writer.FeastWriter`.

`FeastSink` is the Bytewax 0.21 output: a `FixedPartitionedSink` whose partitions each own a
`FeastWriter` and a `FeatureStore` built on the worker from a repo path. It flushes in
`snapshot()`, i.e. at every epoch end, so everything before a recovery snapshot is durable in
Feast (Bytewax's at-least-once contract: rows after the last snapshot are replayed on resume,
and the online write is an idempotent overwrite; offline, replayed rows are appended again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from feast import FeatureStore

from feast_bytewax.dataflow.writer import (
    DEFAULT_MAX_INTERVAL_S,
    DEFAULT_MAX_ROWS,
    FeastWriter,
    nonnegative_seconds,
)
from feast_bytewax.features.spec import EngineSpec, load_spec
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import FeatureRow

log = logging.getLogger(__name__)


class FeastSinkPartition(StatefulSinkPartition[FeatureRow, None]):
    """One partition: a `FeastWriter`. Flushes on size/interval, at every snapshot (epoch end)
    and on close. Keeps no resume state (returns None): delivery is at-least-once."""

    def __init__(self, writer: FeastWriter) -> None:
        self.writer = writer

    def write_batch(self, values: list[FeatureRow]) -> None:
        with _logged("write"):
            self.writer.write(values)

    def snapshot(self) -> None:
        with _logged("flush"):
            self.writer.flush()
        return None

    def close(self) -> None:
        with _logged("close"):
            self.writer.close()


@contextmanager
def _logged(what: str):
    """Bytewax 0.21 turns an exception raised in a sink into a Rust panic that never shows
    the Python error: log it (with its traceback) before it propagates."""
    try:
        yield
    except Exception:
        log.exception("feast-bytewax: Feast %s failed", what)
        raise


class FeastSink(FixedPartitionedSink[FeatureRow, None]):
    """Bytewax output writing `FeatureRow`s to Feast (offline + online) in micro-batches.

    Items are `(key: str, FeatureRow)` 2-tuples (a keyed stream); the partition gets the rows.
    The key only routes: bytewax sends it to partition `adler32(key) % partitions`. Use the
    entity key (`row.key`) or anything derived from it only (e.g. the engine's shard key), so
    all rows of one entity land on one partition and its online writes stay in order.
    Use it as `op.output("feast", keyed_rows, FeastSink("path/to/repo"))`.

    Args:
        repo_path: the Feast repo (directory of feature_store.yaml); each partition opens its
            own `FeatureStore` on the worker that builds it (nothing Feast is pickled).
        spec: the `EngineSpec` the rows follow; default: compiled from the registry on the
            worker (`spec.load_spec(store, join_key)`).
        partitions: number of partitions, spread over workers (default 1).
        max_rows / max_interval / online / offline / stats / on_flush: passed to each
            `FeastWriter` (`on_flush(rows)` sees every flushed batch: freshness metrics).
        fs_yaml_file: a feature_store.yaml other than `repo_path/feature_store.yaml`.
        join_key: the entity to compile the spec for when `spec` is None.
    """

    def __init__(
        self,
        repo_path: str | Path,
        spec: EngineSpec | None = None,
        *,
        partitions: int = 1,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_interval: float | timedelta = DEFAULT_MAX_INTERVAL_S,
        online: bool = True,
        offline: bool = True,
        fs_yaml_file: str | Path | None = None,
        join_key: str | None = None,
        stats: FlowStats | None = None,
        on_flush: Callable[[list[FeatureRow]], None] | None = None,
    ) -> None:
        if not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions must be a positive int, got {partitions!r}")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
        self.repo_path = str(repo_path)
        self.spec = spec
        self.partitions = partitions
        self.max_rows = max_rows
        self.max_interval = nonnegative_seconds(max_interval, "max_interval")
        self.online = online
        self.offline = offline
        self.fs_yaml_file = None if fs_yaml_file is None else str(fs_yaml_file)
        self.join_key = join_key
        self.stats = stats
        self.on_flush = on_flush

    def list_parts(self) -> list[str]:
        return [f"feast-{i}" for i in range(self.partitions)]

    def open_store(self) -> Any:
        fs_yaml = None if self.fs_yaml_file is None else Path(self.fs_yaml_file)
        return FeatureStore(repo_path=self.repo_path, fs_yaml_file=fs_yaml)

    def build_writer(self) -> FeastWriter:
        store = self.open_store()
        spec = self.spec if self.spec is not None else load_spec(store, self.join_key)
        return FeastWriter(
            store, spec, max_rows=self.max_rows, max_interval=self.max_interval,
            online=self.online, offline=self.offline, stats=self.stats, on_flush=self.on_flush,
        )

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> FeastSinkPartition:
        return FeastSinkPartition(self.build_writer())
