"""Feature rows -> Feast from Bytewax: the sink around `feast_bytewax.dataflow.writer`.

`FeastSink` is the Bytewax 0.21 output: a `FixedPartitionedSink` whose partitions each own a
`FeastWriter` and a `FeatureStore` built on the worker from a repo path. At every snapshot
(epoch end) a partition flushes and commits its offline parts (`FeastWriter.checkpoint`, as
its two steps `flush` and `commit`, so that a failure says which: "Feast write failed" or
"Feast commit failed"), and that commit state is its Bytewax resume state: Bytewax resumes
a partition with the state of the last epoch it fully committed, and the writer then deletes
what it wrote after it, so the rows replayed after a crash replace them instead of doubling
them (exactly-once effect; online writes are idempotent overwrites anyway).

A partition closing at the real end of the input (`RunLifecycle.ended`, set by the feature
steps' `on_eof`) commits for good (a replay: replacing its time range); a close during an
abort commits nothing (a restart resumes, a rerun replaces).

A store error that outlasts the outage limit, or any other error while writing, stops the
run the way the probe of Bytewax 0.21 showed to be clean (`dataflow.runtime.fatal_stop`):
one line saying what failed, the run's summary, exit code 3, no Rust panic; with recovery a
restart resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from feast import FeatureStore

from feast_bytewax.dataflow.frames import nonnegative_seconds
from feast_bytewax.dataflow.lifecycle import RunLifecycle
from feast_bytewax.dataflow.retry import StoreRetry, one_line
from feast_bytewax.dataflow.runtime import fatal_stop
from feast_bytewax.dataflow.writer import DEFAULT_MAX_INTERVAL_S, DEFAULT_MAX_ROWS, FeastWriter
from feast_bytewax.errors import FeastBytewaxError
from feast_bytewax.features.spec import EngineSpec, load_spec
from feast_bytewax.observability.freshness import StallMonitor
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import FeatureRow, unbatch
from feast_bytewax.stores.folder_names import new_run_id, writer_id


class FeastSinkPartition(StatefulSinkPartition[FeatureRow, dict]):
    """One partition: a `FeastWriter`; its resume state is the writer's commit state."""

    def __init__(self, writer: FeastWriter, lifecycle: RunLifecycle,
                 stats: FlowStats | None, replace: tuple[int | None, int | None]) -> None:
        self.writer = writer
        self.lifecycle = lifecycle
        self.stats = stats
        self.replace = replace

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except FeastBytewaxError as e:
            fatal_stop(f"Feast {what} failed: {e}", self.stats)
        except Exception as e:  # a bug or a definition the store rejects: stop, clearly
            fatal_stop(f"Feast {what} failed: {one_line(e)}", self.stats, trace=True)

    def write_batch(self, values: list[list[FeatureRow] | FeatureRow]) -> None:
        rows = unbatch(values)
        self._guard("write", lambda: self.writer.write(rows))

    def snapshot(self) -> dict:
        """`FeastWriter.checkpoint` in its two steps, each named for what can fail: the
        flush writes (online and offline), the commit records the offline parts."""
        self._guard("write", self.writer.flush)
        return {"txns": self._guard("commit", self.writer.commit)}

    def close(self) -> None:
        """At the real end of the input a replay replaces [lo, hi]: hi is its end, else the
        final watermark (the newest event time the engine accepted: an outlier clock, held
        back as a dead letter, never widens it)."""
        lo, hi = self.replace
        if hi is None:
            hi = self.lifecycle.end_us
        replace = (lo, hi) if lo is not None and hi is not None and lo <= hi else None
        self._guard("close", lambda: self.writer.close(self.lifecycle.ended.is_set(), replace))


class FeastSink(FixedPartitionedSink[FeatureRow, dict]):
    """Bytewax output writing `FeatureRow`s to Feast (offline + online) in micro-batches.

    Items are `(key: str, FeatureRow or a list of them)` 2-tuples (a keyed stream: the
    dataflow sends lists, `records.unbatch`); the partition gets the rows.
    Key on the entity key or anything derived from it only (e.g. the engine's shard key), so
    all rows of one entity land on one partition and its online writes stay in order.

    Args:
        repo_path: the Feast repo (directory of feature_store.yaml); each partition opens its
            own `FeatureStore` on the worker that builds it (nothing Feast is pickled).
        spec: the `EngineSpec` the rows follow; default: compiled from the registry on the
            worker (`spec.load_spec(store, join_key)`).
        partitions: number of partitions, spread over workers (default 1).
        run: the run's id in the offline commit log (all processes of one replay must agree:
            `dataflow.replay` derives it from the input); default: a fresh one.
        mode / write_from: see `FeastWriter` (``live`` or ``replay``).
        replace: ``(lo_us, hi_us)`` a replay replaces when it ends; ``hi_us`` None: the final
            watermark.
        lifecycle: the run's `RunLifecycle` (whether the input ended); default: never.
        outage_limit: seconds a store may fail before the run stops (`StoreRetry`).
        monitor: where waiting rows are reported during a store stall (the SLO reads it).
        max_rows / max_interval / online / offline / stats / on_flush / provisional /
            online_interval: passed to each `FeastWriter` (`on_flush(rows)` sees every
            flushed batch: freshness metrics).
        fs_yaml_file: a feature_store.yaml other than `repo_path/feature_store.yaml`.
        join_key: the entity to compile the spec for when `spec` is None.
    """

    def __init__(
        self,
        repo_path: str | Path,
        spec: EngineSpec | None = None,
        *,
        partitions: int = 1,
        run: str | None = None,
        mode: str = "live",
        replace: tuple[int | None, int | None] = (None, None),
        write_from: int | None = None,
        lifecycle: RunLifecycle | None = None,
        outage_limit: float = 600.0,
        monitor: StallMonitor | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_interval: float | timedelta = DEFAULT_MAX_INTERVAL_S,
        online: bool = True,
        offline: bool = True,
        fs_yaml_file: str | Path | None = None,
        join_key: str | None = None,
        stats: FlowStats | None = None,
        on_flush: Callable[[list[FeatureRow]], None] | None = None,
        provisional: bool = False,
        online_interval: float | None = None,
    ) -> None:
        if not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions must be a positive int, got {partitions!r}")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
        self.repo_path = str(repo_path)
        self.spec = spec
        self.partitions = partitions
        self.run = run or new_run_id()
        self.mode = mode
        self.replace = replace
        self.write_from = write_from
        self.lifecycle = lifecycle or RunLifecycle()
        self.outage_limit = outage_limit
        self.monitor = monitor
        self.max_rows = max_rows
        self.max_interval = nonnegative_seconds(max_interval, "max_interval")
        self.online = online
        self.offline = offline
        self.fs_yaml_file = None if fs_yaml_file is None else str(fs_yaml_file)
        self.join_key = join_key
        self.stats = stats
        self.on_flush = on_flush
        self.provisional = provisional
        self.online_interval = online_interval

    def list_parts(self) -> list[str]:
        return [f"feast-{i}" for i in range(self.partitions)]

    def open_store(self) -> Any:
        fs_yaml = None if self.fs_yaml_file is None else Path(self.fs_yaml_file)
        return FeatureStore(repo_path=self.repo_path, fs_yaml_file=fs_yaml)

    def build_writer(self, for_part: str = "feast-0", resume: dict | None = None) -> FeastWriter:
        store = self.open_store()
        spec = self.spec if self.spec is not None else load_spec(store, self.join_key)
        return FeastWriter(
            store, spec, max_rows=self.max_rows, max_interval=self.max_interval,
            online=self.online, offline=self.offline,
            writer=writer_id(self.run, for_part.rsplit('-', 1)[-1]), mode=self.mode,
            resume=resume, write_from=self.write_from,
            retry=StoreRetry(self.outage_limit, monitor=self.monitor),
            stats=self.stats, on_flush=self.on_flush, provisional=self.provisional,
            online_interval=self.online_interval,
        )

    def build_part(self, step_id: str, for_part: str,
                   resume_state: dict | None) -> FeastSinkPartition:
        resume = None if resume_state is None else resume_state.get("txns")
        try:
            writer = self.build_writer(for_part, resume)
        except FeastBytewaxError as e:
            fatal_stop(f"cannot open the Feast repo {self.repo_path}: {e}", self.stats)
        except Exception as e:
            fatal_stop(f"cannot open the Feast repo {self.repo_path}: {one_line(e)}",
                       self.stats, trace=True)
        return FeastSinkPartition(writer, self.lifecycle, self.stats, self.replace)
