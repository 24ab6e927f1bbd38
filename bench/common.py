"""Shared helpers for the bench children: spec, input, sinks, memory measurement.

Nothing here imports Feast: the parent compiles the spec once and pickles it, so the
children's peak RSS holds only what their contender needs.
"""

from __future__ import annotations

import pickle
import statistics
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from feast_bytewax.config import FlowConfig
from feast_bytewax.dataflow.flow import partition_policy
from feast_bytewax.features.spec import EngineSpec, FlowSpec
from feast_bytewax.ingest.files import EventFileSource
from feast_bytewax.ingest.partitions import EventTimeSource
from feast_bytewax.records import Event, Mark

CFG = FlowConfig()  # shards 32, watermark delay 5 s, allowed lateness 600 s, batch 1000
BATCH = CFG.batch_size  # rows per source batch


def load_spec(path: str | Path) -> EngineSpec:
    with open(path, "rb") as f:
        return pickle.load(f)


def validated_source(path: str | Path, spec: EngineSpec,
                     batch_size: int = BATCH) -> EventTimeSource:
    """The events file as the replay dataflow reads it: `EventFileSource` (one partition per
    file) inside `EventTimeSource` (validation; each event stamped with its partition's
    event-time frontier; a `Mark` of the partition's progress after a batch, and at its end)."""
    return EventTimeSource(EventFileSource(path, batch_size=batch_size),
                           partition_policy(CFG, FlowSpec((spec,)), live=False))


def iter_validated(src: EventTimeSource) -> Iterator[list[Event | Mark]]:
    """Every batch of `src`, partition after partition, as the dataflow's input step gets it:
    `Event`s and `Mark`s (a rejection is an error: generated parquet has none)."""
    for name in src.partitions():
        part = src.build_part("bench", name, None)
        try:
            while True:
                try:
                    items = part.next_batch()
                except StopIteration:
                    break
                bad = [x for x in items if type(x) is not Event and type(x) is not Mark]
                if bad:
                    raise ValueError(f"{len(bad)} rejected records, e.g. {bad[0]!r}")
                if items:
                    yield items
        finally:
            part.close()


# -- counting sink -------------------------------------------------------------------------
class Counter:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def add(self, k: int) -> None:
        with self.lock:
            self.n += k


class _CountPartition(StatelessSinkPartition):
    def __init__(self, counter: Counter, classify: Callable[[Any], str] | None,
                 by_kind: dict[str, int]):
        self.counter = counter
        self.classify = classify
        self.by_kind = by_kind

    def write_batch(self, items: list) -> None:
        # (key, record) items, or (key, [records]) from our dataflow (`records.unbatch`)
        items = [(k, r) for k, v in items for r in (v if type(v) is list else (v,))]
        self.counter.add(len(items))
        if self.classify is not None:
            for x in items:
                k = self.classify(x)
                self.by_kind[k] = self.by_kind.get(k, 0) + 1


class CountingSink(DynamicSink):
    """Counts what reaches it (optionally per kind); writes nothing."""

    def __init__(self, classify: Callable[[Any], str] | None = None) -> None:
        self.counter = Counter()
        self.classify = classify
        self.by_kind: dict[str, int] = {}

    @property
    def n(self) -> int:
        return self.counter.n

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountPartition:
        return _CountPartition(self.counter, self.classify, self.by_kind)


# -- memory --------------------------------------------------------------------------------
_SKIP_TYPES = (type, FunctionType, BuiltinFunctionType, MethodType, ModuleType)


def deep_size(root: Any, seen: set[int]) -> int:
    """Bytes of every object reachable from `root` (sys.getsizeof each, container contents,
    instance __dict__ and __slots__), skipping objects already in `seen` and adding the rest
    to it: with one `seen` set over all keys, an object shared by several keys is paid for
    once, by the first key that reaches it. Code (classes, functions, bound methods,
    modules) and the singletons None/True/False are not state and are not counted."""
    total = 0
    stack = [root]
    while stack:
        o = stack.pop()
        i = id(o)
        if i in seen:
            continue
        seen.add(i)
        if o is None or o is True or o is False or isinstance(o, _SKIP_TYPES):
            continue
        total += sys.getsizeof(o)
        t = type(o)
        if t is dict:
            stack.extend(o.keys())
            stack.extend(o.values())
        elif t in (list, tuple, set, frozenset) or isinstance(o, list | tuple | set | frozenset):
            stack.extend(o)
        elif t in (int, float, str, bytes) or isinstance(o, int | float | str | bytes):
            continue
        else:
            d = getattr(o, "__dict__", None)
            if d is not None:
                stack.append(d)
            for cls in t.__mro__:
                for name in cls.__dict__.get("__slots__", ()):
                    if name in ("__dict__", "__weakref__"):
                        continue
                    with suppress(AttributeError):  # an unset slot
                        stack.append(getattr(o, name))
    return total


def shared_baseline(objs: Iterable[Any]) -> set[int]:
    """A `seen` set pre-filled with objects every key shares (so no key pays for them)."""
    seen: set[int] = set()
    for o in objs:
        deep_size(o, seen)
    return seen


def distribution(sizes: list[int]) -> dict[str, float]:
    if not sizes:
        return {"keys": 0}
    s = sorted(sizes)
    q = statistics.quantiles(s, n=10) if len(s) > 1 else [s[0]] * 9
    return {
        "keys": len(s),
        "median": statistics.median(s),
        "p90": q[8],
        "mean": sum(s) / len(s),
        "max": s[-1],
        "total": sum(s),
    }


def vm_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    return out


def rss() -> int:
    return vm_status()["VmRSS"]
