"""What Bytewax's exchange costs per item: events keyed over 32 shards into a stateful step
that only counts them, sent one item per event (the flow before bfba807) or one list per
shard and batch (`dataflow.flow` since), with records pickled by the slotted-dataclass
default or by their fields (`records.pickled_by_fields`), on 1 process and on 2 (`-i/-a` on
loopback). All variants run in the same invocation; the report gives seconds and ratios.

    .venv/bin/python -m bench.exchange_bench [--events 400000] [--repeats 3]

The module is also the dataflow (`bench.exchange_bench:flow`), configured by the
environment: EXCHANGE_EVENTS, EXCHANGE_GROUPED (1/0), EXCHANGE_FIELD_PICKLE (1/0).
Start-up (a 2-process cluster connecting) is measured with 2,000 events and subtracted.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import MISSING, field, fields, make_dataclass
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from feast_bytewax.records import Event

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 32
BATCH = 1000


# `records.Event`'s own fields, pickled the slotted-dataclass way (no field-values __reduce__)
DefaultPickled = make_dataclass(
    "DefaultPickled",
    [(f.name, f.type) if f.default is MISSING else (f.name, f.type, field(default=f.default))
     for f in fields(Event)],
    slots=True)
DefaultPickled.__module__ = __name__  # pickled by name, as a class statement is


class _Part(StatefulSourcePartition):
    def __init__(self, index: int, n: int, cls: type) -> None:
        self.i, self.n, self.index, self.cls = 0, n, index, cls

    def next_batch(self) -> list:
        if self.i >= self.n:
            raise StopIteration
        start, self.i = self.i, min(self.n, self.i + BATCH)
        return [self.cls(k, f"u{k * 7919 % 5000:06d}", "purchase", 1.5, "books",
                         1_700_000_000_000_000 + k, f"p{self.index}:{k}", None, self.index,
                         1_700_000_000_000_000 + k) for k in range(start, self.i)]

    def snapshot(self) -> None:
        return None


class _Source(FixedPartitionedSource):
    def __init__(self, n: int, cls: type) -> None:
        self.n, self.cls = n, cls

    def list_parts(self) -> list[str]:
        return ["0", "1"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        return _Part(int(for_part), self.n // 2, self.cls)


def _shard(e) -> str:
    return str(zlib.crc32(e.user_id.encode()) % SHARDS)


def route_items(batch: list) -> list:
    return [(_shard(e), e) for e in batch]


def route_grouped(batch: list) -> list:
    groups: dict[str, list] = {}
    for e in batch:
        groups.setdefault(_shard(e), []).append(e)
    return list(groups.items())


class _Count(StatefulBatchLogic):
    def __init__(self, grouped: bool) -> None:
        self.n, self.grouped = 0, grouped

    def on_batch(self, values: list) -> tuple[list, bool]:
        self.n += sum(len(v) for v in values) if self.grouped else len(values)
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list, bool]:
        return [self.n], StatefulBatchLogic.DISCARD

    def snapshot(self) -> None:
        return None


class _PrintPart(StatelessSinkPartition):
    def write_batch(self, items: list) -> None:
        for _, n in items:
            print("counted", n, flush=True)


class _Print(DynamicSink):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PrintPart:
        return _PrintPart()


def build(n: int, grouped: bool, field_pickle: bool) -> Dataflow:
    flow = Dataflow("exchange_bench")
    src = op.input("in", flow, _Source(n, Event if field_pickle else DefaultPickled))
    keyed = op.flat_map_batch("route", src, route_grouped if grouped else route_items)
    counts = op.stateful_batch("count", keyed, lambda _: _Count(grouped))
    op.output("out", counts, _Print())
    return flow


flow = build(int(os.environ.get("EXCHANGE_EVENTS", "0")),
             os.environ.get("EXCHANGE_GROUPED") == "1",
             os.environ.get("EXCHANGE_FIELD_PICKLE") == "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(n: int, grouped: bool, field_pickle: bool, processes: int) -> float:
    """Wall seconds of one run; checks every event was counted once."""
    env = {**os.environ, "EXCHANGE_EVENTS": str(n), "EXCHANGE_GROUPED": str(int(grouped)),
           "EXCHANGE_FIELD_PICKLE": str(int(field_pickle)),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugin")])}
    cmd = [sys.executable, "-m", "bytewax.run", "bench.exchange_bench:flow"]
    addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(processes))
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd + (["-i", str(i), "-a", addresses] if processes > 1 else []),
                              env=env, stdout=subprocess.PIPE, text=True)
             for i in range(processes)]
    outs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError(f"exit codes {[p.returncode for p in procs]}")
    counted = sum(int(line.split()[1]) for out in outs for line in out.splitlines()
                  if line.startswith("counted "))
    if counted != n:
        raise RuntimeError(f"counted {counted} of {n} events")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    variants = [("items, default pickle", False, False), ("items, field pickle", False, True),
                ("lists, default pickle", True, False), ("lists, field pickle", True, True)]
    print(f"{args.events:,} events, {SHARDS} shards, batches of {BATCH}; median of "
          f"{args.repeats}, start-up subtracted")
    for processes in (1, 2):
        startup = statistics.median(run(2_000, True, True, processes)
                                    for _ in range(args.repeats))
        times = {}
        for _ in range(args.repeats):  # interleaved: the machine's noise hits every variant
            for name, grouped, fp in variants:
                times.setdefault(name, []).append(
                    run(args.events, grouped, fp, processes) - startup)
        base = statistics.median(times[variants[0][0]])
        print(f"\n{processes} process(es), start-up {startup:.2f} s")
        print("| variant | s | us per event | vs items, default pickle |")
        print("| --- | ---: | ---: | ---: |")
        for name, *_ in variants:
            s = statistics.median(times[name])
            print(f"| {name} | {s:.2f} | {s / args.events * 1e6:.2f} | {s / base:.2f} |")


if __name__ == "__main__":
    main()
