"""Kafka -> the live flow -> Redis, end to end (issue 11; issue 3 item 7's per-event push
baseline too).

Issue 11's figures, in one run, for today's main (the base) and the code measured:

    .venv/bin/python -m bench.kafka_redis_bench [--against c5a0d23] [--rev REV]
        [--events 300000] [--max-repeat 3] [--rates auto] [--rate-seconds 20]

measures, for the base revision and for the working tree (or ``--rev``), alternating the two
within the run (bench/kafka_redis_issue11.py): max events/s on one worker (median of
``--max-repeat`` runs, interleaved, the same events for both); freshness p50 / p99 at half
the new revision's max (both revisions offered the SAME rate; event time -> readable in
Redis); offline rows == the reference for every phase; events/s with 2 processes vs 1.
Every flow runs the product's defaults of its revision (watermark delay from the repo's
KafkaSource, flush intervals, online rows mode ...): the bench sets no LiveConfig field
that tunes the flow unless ``--delay`` / ``--flush`` / ``--epoch`` / ``--batch-size`` /
``--live NAME=VALUE`` override it (for both revisions). Prints a markdown table (new, base,
new / base, the issue's targets); writes bench/out/kafka_redis_issue11.json.

One revision only (what each of those runs is):

    .venv/bin/python -m bench.kafka_redis_bench --against none [--rev REV] [--events N]
        [--max-repeat 3] [--max-first 0] [--rates auto,20000] [--cluster]
        [--baseline-events 1000] [--profile] [--no-check] [--corrupt-check]

Everything runs on this machine and is started and stopped here:

- Kafka: librdkafka's mock cluster in its own process (`_broker` below; topics created with
  explicit partition counts, `--partitions`, through ctypes `rd_kafka_mock_topic_create`), so
  that the flow's process holds only the flow. Producers are separate processes too
  (`_produce`): JSON events from `feast_bytewax.datagen.generate` (users, types, amounts,
  categories), key = user_id, linger 5 ms, lz4 batches (each mock partition keeps only
  ~5 MiB: compression and 8 partitions keep every pre-produced event; the bench checks the
  low watermarks). The mock broker answers a fetch only when `fetch.wait.max.ms` (500 ms)
  runs out, not when data arrives as Kafka does (0-500 ms of added latency, p50 ~270 ms
  measured), so the flow's consumers get ``fetch.wait.max.ms=10`` (`--kafka-option`): an
  environment correction, not tuning. The producer writes the event time it stamped on
  each message (``--stamps``), so every phase knows exactly which events it produced.
- Redis: a real `redis-server` on a free loopback port (tests/services.py), emptied
  (FLUSHALL) before every phase.
- Feast: a repo configured like feature_store.redis.yaml (FastRedisProvider +
  FastRedisOnlineStore on that server; the parquet-folder offline store), applied once and
  copied fresh for every phase: each phase has its own clean offline store.

Phases, each on its own topic; the flow is `feast_bytewax.dataflow.live.build_live_flow` run
by Bytewax's `cli_main` with ONE worker (as `feast-bytewax run` does; recovery off):

1. **max** (`--max-repeat` times): `--events` events pre-produced, stamped `--stamp-rate`
   (50k) events per second of event time ending now, then consumed as fast as possible.
   events/s = the steady rate (10% -> 90% of the events read); the median is "max".
2. **rate R** for each of `--rates` (``auto`` = half the median max): a producer process
   paces R events/s for `--rate-seconds`, each stamped with the wall clock when produced
   (produced live); it starts when the flow first polls Kafka. Freshness = the wall time
   a row became readable in Redis (the sink's flush returned) minus its event time, for
   the latest row per key of every flush (`observability.freshness.FreshnessRecorder`,
   every sample kept), after `--warmup` seconds. Backlog = events offered so far - events
   read.
3. **cluster** (`--cluster`): 1 process vs 2 processes of `dataflows.live` under
   `bytewax.run` over one pre-produced topic (bench/kafka_redis_cluster.py).
4. **baseline**: `--baseline-events` events read from Kafka by a plain consumer; per event a
   naive feature computation (the user's five features recomputed from their kept history)
   and one `store.push(push_source, one-row frame, to=ONLINE_AND_OFFLINE)`; then, for
   reference, `--baseline-online-events` pushes `to=ONLINE` only.
5. `--profile`: one more max run (`--profile-events`) sampled by py-spy
   (``.venv/bin/pip install py-spy``); prints the share of samples per part of the flow
   (the first frame from the leaf up that belongs to source / validate / engine / sink /
   ...) and the top functions by own time. py-spy slows the run: read shares, not rates.

After every max, rate and cluster run its offline rows are compared with the reference for
exactly the events it produced (bench/kafka_redis_checks.py): ``offline == reference: yes
(N rows)`` or ``NO (k mismatches ...)``; ``--corrupt-check`` drops a row and changes a value
before comparing, to show the check fails.

Every run also reports the CPU used meanwhile by the flow process, the mock broker, the
producer, redis-server and the rest of the machine, and the worker thread's time on a CPU
and waiting for one (/proc schedstat): on a shared machine that says how much of a core
the flow got. Prints markdown tables; writes bench/out/kafka_redis.json (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.run_bench import machine_busy_s

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PUSH_SOURCE = "user_features_push"
HOUR_US = 3_600_000_000


# ---------------------------------------------------------------------------------------
# Kafka: mock cluster process and producer processes
# ---------------------------------------------------------------------------------------


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent_kafka bundles (same .so, so same mock cluster code)."""
    import glob

    import confluent_kafka

    base = Path(confluent_kafka.__file__).resolve().parent
    found = sorted(glob.glob(str(base.parent / "confluent_kafka.libs" / "librdkafka*.so*")))
    lib = ctypes.CDLL(found[0] if found else "librdkafka.so.1")
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.rd_kafka_conf_new.restype = vp
    lib.rd_kafka_conf_set.argtypes = [vp, cp, cp, cp, ctypes.c_size_t]
    lib.rd_kafka_new.restype = vp
    lib.rd_kafka_new.argtypes = [i, vp, cp, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = vp
    lib.rd_kafka_mock_cluster_new.argtypes = [vp, i]
    lib.rd_kafka_mock_cluster_bootstraps.restype = cp
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [vp]
    lib.rd_kafka_mock_topic_create.restype = i
    lib.rd_kafka_mock_topic_create.argtypes = [vp, cp, i, i]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [vp]
    lib.rd_kafka_destroy.argtypes = [vp]
    return lib


def broker_main() -> int:
    """`_broker`: a mock cluster; prints ``bootstrap HOST:PORT``, then reads commands from
    stdin (``topic NAME PARTITIONS`` -> ``ok NAME``) until EOF."""
    lib = _librdkafka()
    err = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    lib.rd_kafka_conf_set(conf, b"log_level", b"3", err, 512)
    rk = lib.rd_kafka_new(0, conf, err, 512)
    if not rk:
        print(f"error rd_kafka_new: {err.value.decode()}", flush=True)
        return 1
    cluster = lib.rd_kafka_mock_cluster_new(rk, 1)
    print("bootstrap", lib.rd_kafka_mock_cluster_bootstraps(cluster).decode(), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "topic":
            rc = lib.rd_kafka_mock_topic_create(cluster, parts[1].encode(), int(parts[2]), 1)
            print(("ok " if rc == 0 else f"error {rc} ") + parts[1], flush=True)
    lib.rd_kafka_mock_cluster_destroy(cluster)
    lib.rd_kafka_destroy(rk)
    return 0


class Broker:
    """The `_broker` child process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.kafka_redis_bench", "_broker"], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "bootstrap":
            self.close()
            raise RuntimeError(f"mock Kafka did not start: {line}")
        self.bootstrap = line[1]

    def topic(self, name: str, partitions: int) -> str:
        self.proc.stdin.write(f"topic {name} {partitions}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != f"ok {name}":
            raise RuntimeError(f"creating topic {name}: {answer!r}")
        return name

    def low_watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-wm",
                      "log_level": 3})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    for p in sorted(parts)}
        finally:
            c.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class _Payloads:
    """JSON messages of generated events; the timestamp is given at encoding time."""

    def __init__(self, n: int, users: int, seed: int) -> None:
        from feast_bytewax.datagen.generate import generate_columns

        cols = generate_columns(n, users, seed=seed, late_fraction=0.0, jitter_s=0.0)
        self.users = [cols.user_ids[u] for u in cols.user_idx.tolist()]
        self.keys = [u.encode() for u in self.users]
        types = [json.dumps(t) for t in cols.event_types]
        cats = [json.dumps(c) for c in cols.categories] + ['""']
        self.head = [
            f'{{"event_id": {i}, "user_id": "{u}", "event_type": {types[t]}, '
            f'"amount": {a!r}, "category": {cats[c]}, "event_timestamp": "'
            for i, u, t, a, c in zip(range(n), self.users, cols.type_idx.tolist(),
                                     cols.amount.tolist(), cols.category_idx.tolist(),
                                     strict=True)
        ]
        self._sec = -1
        self._prefix = ""

    def message(self, i: int, ts_us: int) -> bytes:
        sec, frac = divmod(ts_us, 1_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f'{self.head[i]}{self._prefix}.{frac:06d}Z"}}'.encode()


def produce_main(argv: list[str]) -> int:
    """`_produce`: produce `--events` events to `--topic`.

    ``--rate 0``: as fast as possible, event i stamped ``end - (n - 1 - i) / stamp_rate``
    (end = now). ``--rate R``: waits for a line on stdin, then paces R events/s, each stamped
    with the wall clock when produced. Prints a JSON summary line."""
    from confluent_kafka import Producer

    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--stamp-rate", type=float, default=50_000.0)
    p.add_argument("--stamps", type=Path, help="write the event time (us) of every event sent")
    a = p.parse_args(argv)
    n = a.events
    stamps = np.zeros(n, dtype=np.int64)
    payloads = _Payloads(n, a.users, a.seed)
    producer = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": 5,
                         "compression.type": "lz4", "batch.num.messages": 10_000,
                         "queue.buffering.max.messages": 1_000_000, "log_level": 3})
    # No per-message delivery callback (it costs the producer ~1 us of Python per event):
    # flush() counts what was not delivered, and each phase checks every event was read.
    failed = [0]

    def send(i: int, ts: int) -> None:
        stamps[i] = ts
        while True:
            try:
                producer.produce(a.topic, payloads.message(i, ts), payloads.keys[i])
                return
            except BufferError:
                producer.poll(0.005)

    behind_max = 0.0
    if a.rate <= 0:
        print("ready", flush=True)
        end = time.time_ns() // 1000
        step = 1e6 / a.stamp_rate
        t0 = time.perf_counter()
        for i in range(n):
            send(i, end - round((n - 1 - i) * step))
            if i % 10_000 == 0:
                producer.poll(0)
    else:
        print("ready", flush=True)
        sys.stdin.readline()  # go
        t0 = time.perf_counter()
        sent = 0
        while sent < n:
            elapsed = time.perf_counter() - t0
            due = min(n, int(elapsed * a.rate) + 1)
            if due <= sent:
                producer.poll(0)
                time.sleep(min(0.001, max(0.0, sent / a.rate - elapsed)))
                continue
            behind_max = max(behind_max, (due - sent) / a.rate)
            for i in range(sent, due):
                send(i, time.time_ns() // 1000)
            sent = due
            producer.poll(0)
    produced_s = time.perf_counter() - t0
    left = producer.flush(60)
    if a.stamps:
        np.save(a.stamps, stamps)
    print(json.dumps({"events": n, "produce_seconds": round(produced_s, 3),
                      "rate": round(n / produced_s, 1), "undelivered": left + failed[0],
                      "max_behind_s": round(behind_max, 4),
                      "cpu_s": round(time.process_time(), 3)}), flush=True)
    return 0


def start_producer(bootstrap: str, topic: str, n: int, args, rate: float = 0.0,
                   seed: int = 7, stamps: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench.kafka_redis_bench", "_produce", "--bootstrap",
           bootstrap, "--topic", topic, "--events", str(n), "--users", str(args.users),
           "--seed", str(seed), "--rate", str(rate), "--stamp-rate", str(args.stamp_rate),
           *(("--stamps", str(stamps)) if stamps else ())]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("producer did not start")
    return proc


def finish_producer(proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"producer failed ({proc.returncode}): {out[-2000:]}")
    result = json.loads(lines[-1])
    if result["undelivered"]:
        raise RuntimeError(f"producer: {result['undelivered']} messages not delivered")
    return result


def preproduce(broker: Broker, topic: str, n: int, args, seed: int,
               stamps: Path | None = None) -> dict:
    """Produce n events before the flow starts and check the mock kept every one."""
    result = finish_producer(start_producer(broker.bootstrap, topic, n, args, seed=seed,
                                            stamps=stamps))
    marks = broker.low_watermarks(topic)
    lost = sum(lo for lo, _ in marks.values())
    total = sum(hi - lo for lo, hi in marks.values())
    if lost or total != n:
        raise RuntimeError(f"mock Kafka kept {total} of {n} events on {topic} (dropped {lost}): "
                           "use more --partitions")
    return result


# ---------------------------------------------------------------------------------------
# The live flow, one phase
# ---------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (and its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def redis_cpu_s() -> float:
    if not _REDIS_CLIENT:
        return 0.0
    info = _REDIS_CLIENT[0].info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class CpuBudget:
    """CPU seconds used during a phase by the bench process (the flow), the mock broker,
    redis-server, a producer, and everything else on the machine."""

    def __init__(self, broker_pid: int, producer_pid: int | None = None) -> None:
        self.broker_pid, self.producer_pid = broker_pid, producer_pid
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        return {"wall": time.perf_counter(), "flow_process": proc_cpu_s(os.getpid()),
                "broker": proc_cpu_s(self.broker_pid),
                "producer": proc_cpu_s(self.producer_pid) if self.producer_pid else 0.0,
                "redis": redis_cpu_s(), "machine": machine_busy_s()}

    def stop(self, producer_cpu_s: float | None = None) -> dict[str, float]:
        end = self._read()
        d = {k: end[k] - self.start[k] for k in end}
        if producer_cpu_s is not None:  # the producer exited: its own figure
            d["producer"] = producer_cpu_s
        d["others"] = d["machine"] - d["flow_process"] - d["broker"] - d["producer"] \
            - d["redis"]
        wall = d.pop("wall")
        return {"wall_s": round(wall, 2), **{f"{k}_cores": round(v / wall, 2)
                                              for k, v in d.items()}}


class FreshnessSamples:
    """Every freshness sample of a phase, with the time it was taken: while the `with` block
    runs, taps `observe` of the freshness histogram the flow's `FreshnessRecorder` feeds
    (readable wall time - row time, for the latest row per key of every flush), so the bench
    reads exactly what the SLO alert and Prometheus read, unbucketed."""

    def __init__(self, histogram) -> None:
        self.histogram = histogram
        self.times: list[float] = []
        self.vals: list[float] = []
        self.lock = threading.Lock()

    def __enter__(self) -> FreshnessSamples:
        original = self.histogram.observe

        def observe(value: float, *a, **k):
            with self.lock:
                self.times.append(time.perf_counter())
                self.vals.append(value)
            return original(value, *a, **k)

        self.histogram.observe = observe  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        del self.histogram.observe

    def samples(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return np.array(self.times), np.array(self.vals, dtype=np.float64)

    def values(self, after: float | None = None) -> np.ndarray:
        t, v = self.samples()
        return v if after is None else v[t >= after]


def quantiles(v: np.ndarray) -> dict[str, float | None]:
    if not v.size:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    p50, p99 = np.quantile(v, [0.5, 0.99], method="inverted_cdf")
    return {"n": int(v.size), "p50": round(float(p50), 4), "p99": round(float(p99), 4),
            "max": round(float(v.max()), 4)}


def run_phase(name: str, broker: Broker, topic: str, n: int, repo: Path, spec, args,
              producer: subprocess.Popen | None = None, pyspy_out: Path | None = None) -> dict:
    """One live run over `topic` until `n` records are read; samples progress every 0.1 s."""
    # imported here, not at the top: main() first pins which feast_bytewax is measured
    from bytewax.run import cli_main

    from bench.kafka_redis_cluster import live_overrides, live_settings
    from feast_bytewax.config import LiveConfig
    from feast_bytewax.dataflow.live import build_live_flow
    from feast_bytewax.dataflow.runtime import gc_frozen
    from feast_bytewax.observability.metrics import FRESHNESS_SECONDS, KAFKA_LAG
    from feast_bytewax.observability.stats import FlowStats

    # the product's defaults unless --delay / --flush / --live ... override a setting
    overrides = live_overrides(args)
    cfg = LiveConfig(repo=repo, source=f"kafka://{broker.bootstrap}/{topic}",
                     dead_letters=repo / "data" / f"dead-{name}.jsonl",
                     max_events=n, idle_exit=args.idle_exit,
                     kafka_option=tuple(args.kafka_option), **overrides)
    stats = FlowStats()
    fresh = FreshnessSamples(FRESHNESS_SECONDS)
    flow, parts = build_live_flow(cfg, stats, spec)
    epoch = parts.cfg.epoch_interval
    samples: list[tuple[float, int, int, float, float, int, int]] = []
    worker = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")

    def sched() -> tuple[int, int]:
        """The worker thread's (this one: cli_main runs the single worker here) time on a
        CPU and time runnable but waiting for one, in ns."""
        try:
            on_cpu, waiting, _ = worker.read_text().split()
            return int(on_cpu), int(waiting)
        except (OSError, ValueError):
            return 0, 0
    done = threading.Event()
    marks: dict[str, float] = {}
    spy: list[subprocess.Popen] = []

    def lag() -> float:
        total = 0.0
        for metric in KAFKA_LAG.collect():
            for s in metric.samples:
                if s.labels.get("topic") == topic:
                    total += s.value
        return total

    def sample() -> None:
        while not done.wait(0.1):
            now = time.perf_counter()
            d = stats.as_dict()
            samples.append((now, d["consumed"], d["rows_online"], lag(),
                            time.process_time(), *sched()))
            if "polling" not in marks and parts.stop.last_activity is not None:
                marks["polling"] = now
                if producer is not None:  # the flow is up: start the live producer
                    producer.stdin.write("go\n")
                    producer.stdin.flush()
                    marks["go"] = time.perf_counter()
            if "first" not in marks and d["consumed"]:
                marks["first"] = now
                if pyspy_out is not None:
                    spy.append(subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                         str(os.getpid()), "--rate", "200", "--format", "raw",
                         "--full-filenames", "--output", str(pyspy_out)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    ticker = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    evalsha0 = _evalsha_calls()
    parts0 = _part_files(repo)
    budget = CpuBudget(broker.proc.pid, producer.pid if producer is not None else None)
    cpu0, t0 = time.process_time(), time.perf_counter()
    ticker.start()
    try:
        # as `run_live` does (a revision before `gc_interval` has its own fixed GC policy)
        gc_every = getattr(parts.cfg, "gc_interval", None)
        with fresh, gc_frozen() if gc_every is None else gc_frozen(gc_every):
            cli_main(flow, workers_per_process=1, epoch_interval=timedelta(seconds=epoch))
    finally:
        t_end = time.perf_counter()
        cpu = time.process_time() - cpu0
        cpu_budget = budget.stop()
        done.set()
        ticker.join()
        for s in spy:
            s.send_signal(signal.SIGINT)
            try:
                _, err = s.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()
            else:
                if s.returncode not in (0, -signal.SIGINT):
                    print(f"py-spy: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
    d = stats.as_dict()
    if not stats.balanced() or d["consumed"] != n:
        raise RuntimeError(f"{name}: {stats.summary()} (expected {n} consumed; stop: "
                           f"{parts.stop.reason})")
    first = marks.get("first", t0)
    steady = steady_cpu = None
    lo, hi = 0.1 * n, 0.9 * n
    a = next((s for s in samples if s[1] >= lo), None)
    b = next((s for s in samples if s[1] >= hi), None)
    if a is not None and b is not None and b[0] > a[0]:
        steady = (b[1] - a[1]) / (b[0] - a[0])
        steady_cpu = (b[4] - a[4])
    out = {
        "phase": name, "settings": live_settings(parts.cfg), "overrides": overrides,
        "events": n, "consumed": d["consumed"], "late": d["late"],
        "rejected": d["rejected"], "corrections": d["corrections"], "rows": d["rows"],
        "rows_offline": d["rows_offline"],
        "rows_online": d["rows_online"], "seconds_total": round(t_end - t0, 3),
        "seconds_first_to_end": round(t_end - first, 3),
        "startup_s": round(first - t0, 3),
        "events_per_s_end_to_end": round(n / (t_end - first), 1),
        "events_per_s_steady": round(steady, 1) if steady else None,
        "events_per_cpu_s_steady": (round((b[1] - a[1]) / steady_cpu, 1)
                                    if steady and steady_cpu > 0 else None),
        # the worker thread in the steady window: share of wall time on a CPU, share spent
        # runnable but waiting for a CPU (other processes), events per second on a CPU
        "worker_on_cpu_share": (round((b[5] - a[5]) / 1e9 / (b[0] - a[0]), 3)
                                if steady else None),
        "worker_runqueue_share": (round((b[6] - a[6]) / 1e9 / (b[0] - a[0]), 3)
                                  if steady else None),
        "events_per_worker_cpu_s": (round((b[1] - a[1]) / ((b[5] - a[5]) / 1e9), 1)
                                    if steady and b[5] > a[5] else None),
        "cpu_s": round(cpu, 3),
        "evalsha_calls": _evalsha_calls() - evalsha0,
        "offline_part_files": _part_files(repo) - parts0,
        "cpu_budget": cpu_budget,
        "max_lag": max((s[3] for s in samples), default=0.0),
        "freshness": quantiles(fresh.values()),
    }
    if "go" in marks:
        go = marks["go"]
        out["go_to_first_s"] = round(first - go, 3)
        warm = go + args.warmup
        out["freshness_after_warmup"] = quantiles(fresh.values(after=warm))
        times, vals = fresh.samples()
        secs = np.floor(times - go).astype(np.int64) if times.size else times
        out["freshness_by_second"] = [
            [int(sec), int(v.size), round(float(np.median(v)), 3), round(float(v.max()), 3)]
            for sec in np.unique(secs) for v in [vals[secs == sec]]]
        # lag in events: offered so far (rate x time) - consumed, sampled
        out["_go"] = go
        out["_samples"] = samples
    return out


def phase_max(broker: Broker, repo: Path, spec, args, name: str, n: int, seed: int,
              pyspy_out: Path | None = None) -> dict:
    topic = broker.topic(f"{name}-events", args.partitions)
    stamps = repo.parent / f"{name}.stamps.npy"
    prod = preproduce(broker, topic, n, args, seed, stamps)
    res = run_phase(name, broker, topic, n, repo, spec, args, pyspy_out=pyspy_out)
    res.update(producer=prod, seed=seed, stamps_file=str(stamps))
    return res


def phase_rate(broker: Broker, repo: Path, spec, args, rate: float, seed: int,
               name: str) -> dict:
    n = int(rate * args.rate_seconds)
    topic = broker.topic(f"{name}-events", args.partitions)
    stamps = repo.parent / f"{name}.stamps.npy"
    producer = start_producer(broker.bootstrap, topic, n, args, rate=rate, seed=seed,
                              stamps=stamps)
    try:
        res = run_phase(name, broker, topic, n, repo, spec, args, producer=producer)
    except RuntimeError as e:
        lost = sum(lo for lo, _ in broker.low_watermarks(topic).values())
        if lost:  # the flow fell so far behind that the mock's partitions overflowed
            raise RuntimeError(f"{e}; mock Kafka dropped {lost} unread events of {topic} "
                               "(each partition keeps ~5 MiB): lower --rate-seconds") from e
        raise
    finally:
        if producer.poll() is None and producer.stdin and not producer.stdin.closed:
            with contextlib.suppress(Exception):
                producer.stdin.write("go\n")
                producer.stdin.flush()
    prod = finish_producer(producer)
    samples, go = res.pop("_samples"), res.pop("_go")
    behind = [(t - go, min(rate * (t - go), n) - consumed) for t, consumed, *_ in samples
              if t >= go]
    steady = [x for x in samples if x[0] >= go + args.warmup]
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        a, b = steady[0], steady[-1]
        res["worker_on_cpu_share"] = round((b[5] - a[5]) / 1e9 / (b[0] - a[0]), 3)
        res["worker_runqueue_share"] = round((b[6] - a[6]) / 1e9 / (b[0] - a[0]), 3)
    res["offered_rate"] = rate
    res.update(producer=prod, seed=seed, stamps_file=str(stamps))
    res["achieved_rate"] = prod["rate"]
    # backlog = offered so far - consumed (events produced but not yet validated)
    res["max_backlog_events"] = round(max((b for _, b in behind), default=0.0))
    res["max_backlog_after_warmup"] = round(max((b for t, b in behind if t >= args.warmup),
                                                default=0.0))
    go_to_end = res["seconds_first_to_end"] + res["go_to_first_s"]
    res["consumed_rate"] = round(n / go_to_end, 1)
    res["drain_s"] = round(go_to_end - prod["produce_seconds"], 3)
    res["kept_up"] = res["max_backlog_after_warmup"] <= rate * 1.0 and res["drain_s"] <= 2.0
    return res


# ---------------------------------------------------------------------------------------
# Baseline: per-event push of a naive per-event feature computation
# ---------------------------------------------------------------------------------------


class NaiveFeatures:
    """The five features recomputed from scratch per event over the user's kept history
    (exact as-of-event windows; no panes, no watermark: the per-event approach)."""

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[int, str, float, str]]] = {}

    def update(self, user: str, t: int, kind: str, amount: float, category: str) -> dict:
        h = self.history.setdefault(user, [])
        h.append((t, kind, amount, category))
        day = t - 24 * HOUR_US
        while h and h[0][0] <= day:
            h.pop(0)
        purchases_1h = [a for ts, k, a, _ in h if k == "purchase" and ts > t - HOUR_US]
        purchases_30m = sum(1 for ts, k, _, _ in h
                            if k == "purchase" and ts > t - HOUR_US // 2)
        max_24h = max((a for _, k, a, _ in h if k == "purchase"), default=float("nan"))
        failed = sum(1 for ts, k, _, _ in h if k == "login_failed" and ts > t - HOUR_US // 6)
        cats: set[str] = set()
        last = t
        for ts, k, _, c in reversed(h):
            if k != "view":
                continue
            if last - ts > HOUR_US // 2:
                break
            cats.add(c)
            last = ts
        return {
            "failed_logins_10m": failed,
            "purchase_count_30m": purchases_30m,
            "avg_amount_1h": (sum(purchases_1h) / len(purchases_1h)) if purchases_1h
            else float("nan"),
            "max_amount_24h": max_24h,
            "distinct_categories_session": len(cats),
        }


def _push_loop(broker: Broker, topic: str, repo: Path, n: int, warm: int, mode) -> dict:
    """Read n + warm events from `topic`; per event: naive features, one push (`mode`)."""
    import pandas as pd
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from feast import FeatureStore

    from feast_bytewax.ingest.timestamps import parse_timestamp_us

    store = FeatureStore(repo_path=str(repo))
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench-baseline",
                         "enable.auto.commit": False, "log_level": 3})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    naive = NaiveFeatures()
    push_s: list[float] = []
    seen = 0
    t0 = cpu0 = 0.0
    try:
        while seen < n + warm:
            msg = consumer.poll(5.0)
            if msg is None:
                raise RuntimeError(f"baseline: only {seen} of {n + warm} events read")
            if msg.error():
                continue
            if seen == warm:
                t0, cpu0 = time.perf_counter(), time.process_time()
            rec = json.loads(msg.value())
            t = parse_timestamp_us(rec["event_timestamp"])
            values = naive.update(rec["user_id"], t, rec["event_type"], float(rec["amount"]),
                                  rec.get("category") or "")
            df = pd.DataFrame({"user_id": [rec["user_id"]],
                               "event_timestamp": [pd.Timestamp(t, unit="us", tz="UTC")],
                               **{k: [v] for k, v in values.items()}})
            s = time.perf_counter()
            store.push(PUSH_SOURCE, df, to=mode)
            if seen >= warm:
                push_s.append(time.perf_counter() - s)
            seen += 1
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        consumer.close()
    lat = np.array(push_s)
    return {
        "events": n, "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds, 1), "events_per_cpu_s": round(n / cpu, 1),
        "push_ms": {k: (round(v * 1e3, 2) if isinstance(v, float) else v)
                    for k, v in quantiles(lat).items()},
        "push_share": round(float(lat.sum()) / seconds, 3),
    }


def phase_baseline(broker: Broker, repo: Path, args, seed: int) -> dict:
    """Per-event push to online + offline (the baseline), then, for reference, a shorter
    run of per-event pushes to the online store only."""
    import pyarrow.parquet as pq
    from feast.data_source import PushMode

    warm = 20
    n = args.baseline_events
    topic = broker.topic("baseline-events", 1)
    prod = preproduce(broker, topic, n + warm, args, seed)
    folder = repo / "data" / "offline" / "user_features"
    before = set(folder.glob("*.parquet")) if folder.exists() else set()
    redis_before = _evalsha_calls()
    out = _push_loop(broker, topic, repo, n, warm, PushMode.ONLINE_AND_OFFLINE)
    new = set(folder.glob("*.parquet")) - before
    out.update(phase="baseline", producer=prod, offline_part_files=len(new),
               rows_offline=sum(pq.read_metadata(f).num_rows for f in new) * n // (n + warm),
               evalsha_calls=_evalsha_calls() - redis_before)
    out["rows_online"] = n  # one key per event (its three views' fields in one hash)
    if args.baseline_online_events:
        m = args.baseline_online_events
        topic2 = broker.topic("baseline-online-events", 1)
        preproduce(broker, topic2, m + warm, args, seed + 1)
        out["online_only"] = _push_loop(broker, topic2, repo, m, warm, PushMode.ONLINE)
    return out


_REDIS_CLIENT: list = []


def _part_files(repo: Path) -> int:
    folder = repo / "data" / "offline" / "user_features"
    return sum(1 for _ in folder.glob("*.parquet")) if folder.exists() else 0


def _evalsha_calls() -> int:
    if not _REDIS_CLIENT:
        return 0
    stats = _REDIS_CLIENT[0].info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# ---------------------------------------------------------------------------------------
# py-spy profile: time per part of the flow
# ---------------------------------------------------------------------------------------

# Frames are scanned from the leaf up; the first one matching a part names the sample (parts
# in this order: routing before the engine folder it lives in).
PARTS = (
    ("source (Kafka)", ("feast_bytewax/kafka/", "bytewax/connectors/kafka",
                        "confluent_kafka")),
    ("validate + event-time stamping", ("feast_bytewax/ingest/validate.py",
                                        "feast_bytewax/ingest/partitions.py")),
    ("routing / branch lambdas", ("feast_bytewax/dataflow/flow.py",
                                  "feast_bytewax/engine/routing.py")),
    ("engine (feature step)", ("feast_bytewax/engine/", "feast_bytewax/features/aggregators.py",
                               "feast_bytewax/features/sketches.py",
                               "feast_bytewax/dataflow/step.py")),
    ("sink (Feast -> Redis + parquet)", ("feast_bytewax/dataflow/feast_sink.py",
                                         "feast_bytewax/dataflow/writer.py",
                                         "feast_bytewax/stores/")),
    ("freshness recorder", ("feast_bytewax/observability/freshness.py", "FreshnessSamples")),
    ("counters (FlowStats)", ("feast_bytewax/observability/stats.py",
                              "feast_bytewax/observability/metrics.py", "prometheus_client")),
    ("bytewax operators (Python side)", ("/bytewax/",)),
)
RUST = "bytewax runtime (Rust: scheduling, exchange; leaf = cli_main's caller)"


def _frame_part(frame: str) -> str | None:
    for part, needles in PARTS:
        if any(n in frame for n in needles):
            return part
    return None


def summarize_pyspy(path: Path, top: int = 25) -> dict:
    """Collapsed py-spy stacks -> samples per part and per leaf function."""
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = stack.split(";")
        if any("run_phase.<locals>.sample" in f for f in frames):
            continue  # the bench's own sampler thread
        total += k
        part = next((p for p in map(_frame_part, reversed(frames)) if p), None)
        if part is None:
            part = RUST if frames[-1].startswith("run_phase ") else "other"
        parts[part] += k
        leaf = frames[-1]
        leaf = leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf
        leaf = leaf.replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "")
        leaves[f"{leaf} [{part}]"] += k
    return {
        "samples": total,
        "parts": {p: round(100 * c / total, 1) for p, c in parts.most_common()},
        "top_leaf": [(f, round(100 * c / total, 1)) for f, c in leaves.most_common(top)],
    }


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def report(results: dict) -> str:
    from bench.kafka_redis_checks import verdict
    from bench.kafka_redis_cluster import cluster_report

    if not results["phases"]:
        return "\n".join(cluster_report(results["cluster"])) if results.get("cluster") else ""
    first = results["phases"][0]
    lines = [
        f"Flow settings: {first.get('settings')} (set here: {first.get('overrides') or 'none'})",
        "",
        "| run | offered events/s | events/s | events/CPU-s | freshness p50 / p99 / max (s) "
        "| backlog max (events) | worker thread on CPU / waiting for CPU "
        "| offline rows/event | online key-writes/event | vs baseline | offline == reference |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    b = results.get("baseline")
    base = b["events_per_s"] if b else None
    for r in results["phases"]:
        ev = r["consumed"]
        if r["phase"].startswith("rate"):  # paced, produced live
            fr = r["freshness_after_warmup"]
            rate = r["consumed_rate"]
            offered = _f(r["achieved_rate"])
            fresh = f"{_f(fr['p50'], 3)} / {_f(fr['p99'], 3)} / {_f(fr['max'], 3)}"
            backlog = _f(r["max_backlog_after_warmup"])
            cpu = _f(ev / r["cpu_s"])
        else:  # a run too short for a steady window: first record -> end
            rate = r["events_per_s_steady"] or r["events_per_s_end_to_end"]
            offered = f"max ({ev:,} pre-produced)"
            fresh = "n/a (pre-produced backlog)"
            backlog = _f(r["max_lag"])
            cpu = _f(r["events_per_cpu_s_steady"])
        busy = (f"{r['worker_on_cpu_share']:.0%} / {r['worker_runqueue_share']:.0%}"
                if r.get("worker_on_cpu_share") is not None else "-")
        ratio = f"{rate / base:,.0f}x" if base else "-"
        lines.append(
            f"| {r['phase']} | {offered} | {_f(rate)} | {cpu} | {fresh} | {backlog} | {busy} | "
            f"{r['rows_offline'] / ev:.3f} | {r['rows_online'] / ev:.3f} | {ratio} | "
            f"{verdict(r.get('offline_check'))} |")
    if b:
        lines.append(
            f"| baseline: per-event push, online+offline | max ({b['events']:,} pre-produced) "
            f"| {_f(b['events_per_s'], 1)} | {_f(b['events_per_cpu_s'], 1)} | push p50 "
            f"{b['push_ms']['p50']} ms / p99 {b['push_ms']['p99']} ms | - | - | "
            f"{b['rows_offline'] / b['events']:.3f} | {b['rows_online'] / b['events']:.3f} | "
            "1x | - |")
        o = b.get("online_only")
        if o:
            lines.append(
                f"| (reference) per-event push, online only | max ({o['events']:,} "
                f"pre-produced) | {_f(o['events_per_s'], 1)} | {_f(o['events_per_cpu_s'], 1)} "
                f"| push p50 {o['push_ms']['p50']} ms / p99 {o['push_ms']['p99']} ms | - | - "
                f"| 0 | 1.000 | {o['events_per_s'] / base:.1f}x | - |")
    lines += [
        "",
        "CPU during each flow run (cores = CPU seconds / wall seconds; others = the rest of "
        "the machine, other jobs included; 2 cores in all):",
        "",
        "| run | wall s | flow process | mock broker | producer | redis-server | others "
        "| Redis EVALSHA calls | offline part files |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["phases"]:
        c = r["cpu_budget"]
        lines.append(
            f"| {r['phase']} | {c['wall_s']} | {c['flow_process_cores']} | "
            f"{c['broker_cores']} | {c['producer_cores']} | {c['redis_cores']} | "
            f"{c['others_cores']} | {r['evalsha_calls']:,} | {r['offline_part_files']:,} |")
    if results.get("cluster"):
        lines += ["", *cluster_report(results["cluster"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_broker"]:
        return broker_main()
    if argv[:1] == ["_produce"]:
        return produce_main(argv[1:])
    warnings.filterwarnings("ignore")
    import logging

    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", default="c5a0d23",
                   help="base revision: every measurement is made for it and for the working "
                        "tree (or --rev), alternating (bench.kafka_redis_issue11); 'none': "
                        "measure one revision only (--baseline-events, --profile and "
                        "--cluster apply to that mode only)")
    p.add_argument("--events", type=int, default=300_000, help="events of a max run")
    p.add_argument("--max-repeat", type=int, default=3, help="max runs (median used)")
    p.add_argument("--max-first", type=int, default=0,
                   help="index of the first max run (its seed: 7 + 100 x index)")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--rates", default="auto",
                   help="offered rates, comma-separated; auto = half the measured max")
    p.add_argument("--rate-seconds", type=float, default=20.0)
    p.add_argument("--stamp-rate", type=float, default=50_000.0,
                   help="event-time density of pre-produced events (events per second)")
    p.add_argument("--delay", type=float, help="watermark delay, s (default: the product's)")
    p.add_argument("--flush", type=float, help="sink flush interval, s (default: the product's)")
    p.add_argument("--epoch", type=float, help="epoch interval, s (default: the product's)")
    p.add_argument("--batch-size", type=int, help="records per read (default: the product's)")
    p.add_argument("--live", action="append", metavar="NAME=VALUE",
                   help="any other LiveConfig field (e.g. online_rows=provisional)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds after the producer starts excluded from freshness")
    p.add_argument("--idle-exit", type=float, default=20.0)
    p.add_argument("--kafka-option", action="append", default=None, metavar="KEY=VALUE",
                   help="librdkafka setting for the flow's consumers (default "
                        "fetch.wait.max.ms=10: the mock broker holds every fetch for the "
                        "full wait instead of answering when data arrives, as Kafka does)")
    p.add_argument("--baseline-events", type=int, default=1000)
    p.add_argument("--baseline-online-events", type=int, default=300,
                   help="per-event pushes to the online store only, for reference (0: skip)")
    p.add_argument("--cluster", action="store_true",
                   help="the cluster phase: 1 process vs 2 (bench.kafka_redis_cluster)")
    p.add_argument("--no-cluster", action="store_true",
                   help="with --against: skip the cluster measurement")
    p.add_argument("--cluster-events", type=int, help="events of the cluster phase "
                                                      "(default --events)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the offline == reference checks")
    p.add_argument("--corrupt-check", action="store_true",
                   help="drop one offline row and change one value before each check (shows "
                        "that the check reports NO)")
    p.add_argument("--profile", action="store_true", help="py-spy run of the max phase")
    p.add_argument("--profile-events", type=int, default=300_000)
    p.add_argument("--rev", help="measure plugin/ as of this git revision (e.g. HEAD), "
                                 "exported to bench/out/src-SHA, not the working tree")
    p.add_argument("--out", type=Path, default=OUT / "kafka_redis.json")
    args = p.parse_args(argv)
    if args.kafka_option is None:
        args.kafka_option = ["fetch.wait.max.ms=10"]
    if args.against and args.against.lower() != "none":
        from bench.kafka_redis_issue11 import compare

        return compare(args)
    if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
        p.error("--profile needs py-spy next to this interpreter (.venv/bin/pip install py-spy)")

    sys.path.insert(0, str(ROOT))
    from bench.run_bench import pin_source

    code, definitions = pin_source(argparse.Namespace(rev=args.rev, out=OUT),
                                   ("feature_store.redis.yaml", "dataflows"))
    import feast_bytewax

    if not args.rev and not Path(feast_bytewax.__file__).resolve().is_relative_to(
            ROOT / "plugin"):
        code = f"feast_bytewax from {Path(feast_bytewax.__file__).parent} (PYTHONPATH)"
    from bench.kafka_redis_checks import check_phase, verdict
    from bench.kafka_redis_cluster import phase_cluster
    from feast_bytewax.dataflow.repo import apply_repo
    from tests.services import running_redis

    started = time.perf_counter()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()},
                               "code": code, "feast_bytewax": feast_bytewax.__file__,
                               "phases": []}
    print(f"measuring {code}: {feast_bytewax.__file__}", flush=True)
    broker = Broker()
    try:
        with running_redis() as redis_server, tempfile.TemporaryDirectory() as tmp:
            os.environ["FEAST_REDIS"] = redis_server.connection_string
            template = Path(tmp) / "template"  # feast_repo/ + the Redis yaml measured
            shutil.copytree(definitions / "feast_repo", template / "feast_repo",
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(definitions / "feature_store.redis.yaml",
                        template / "feature_store.yaml")
            spec = apply_repo(template)  # the compiled FlowSpec of every entity
            _REDIS_CLIENT.append(redis_server.client())
            print(f"mock Kafka {broker.bootstrap}, redis {redis_server.connection_string}, "
                  f"repos under {tmp}", flush=True)

            def fresh_repo(name: str) -> Path:
                """A copy of the applied repo (empty offline store) and an emptied Redis."""
                repo = Path(tmp) / name / "repo"
                shutil.copytree(template, repo)
                redis_server.flushall()
                return repo

            def checked(res: dict, repo: Path) -> None:
                if not args.no_check:
                    res["offline_check"] = check_phase(res, repo, spec, args)
                    print(f"  {res['phase']}: offline == reference: "
                          f"{verdict(res['offline_check'])}", flush=True)

            rates = []
            for k in range(args.max_first, args.max_first + args.max_repeat):
                name = f"max{k + 1}"
                repo = fresh_repo(name)
                res = phase_max(broker, repo, spec, args, name, args.events, seed=7 + 100 * k)
                results["phases"].append(res)
                rates.append(res["events_per_s_steady"] or res["events_per_s_end_to_end"])
                print(f"{name}: {rates[-1]:,.0f} events/s steady "
                      f"({res['events_per_worker_cpu_s'] or 0:,.0f} per worker CPU-second), "
                      f"{res['events_per_s_end_to_end']:,.0f} first record -> end", flush=True)
                checked(res, repo)
            max_rate = float(np.median(rates)) if rates else None
            results["max_rate_median"] = max_rate
            names: Counter[str] = Counter()
            for i, item in enumerate(x for x in args.rates.split(",") if x.strip()):
                if item.strip() == "auto" and max_rate is None:
                    p.error("--rates auto needs a max run (--max-repeat >= 1)")
                rate = round(max_rate / 2, -2) if item.strip() == "auto" else float(item)
                name = f"rate{int(rate)}"
                names[name] += 1
                if names[name] > 1:
                    name += f"-{names[name]}"
                repo = fresh_repo(name)
                res = phase_rate(broker, repo, spec, args, rate, seed=11 + i, name=name)
                results["phases"].append(res)
                fr = res["freshness_after_warmup"]
                print(f"rate {rate:,.0f}: consumed {res['consumed_rate']:,.0f}/s, "
                      f"freshness p50 {fr['p50']} p99 {fr['p99']} max {fr['max']}, backlog "
                      f"max {res['max_backlog_after_warmup']:,}, kept up {res['kept_up']}",
                      flush=True)
                checked(res, repo)
            if args.cluster:
                results["cluster"] = phase_cluster(broker, fresh_repo, spec, args, definitions)
            if args.baseline_events:
                results["baseline"] = phase_baseline(broker, fresh_repo("baseline"), args,
                                                     seed=13)
                print(f"baseline: {results['baseline']['events_per_s']:,.0f} events/s",
                      flush=True)
            if args.profile:
                spy = OUT / "kafka_redis_pyspy.txt"
                OUT.mkdir(parents=True, exist_ok=True)
                res = phase_max(broker, fresh_repo("profile"), spec, args, "profile",
                                args.profile_events, seed=17, pyspy_out=spy)
                results["profile_run"] = res
                if spy.exists():
                    results["profile"] = summarize_pyspy(spy)
            with contextlib.closing(redis_server.client()) as c:
                results["redis_keys"] = c.dbsize()
                results["redis_cmdstats"] = {k: v.get("calls") for k, v in
                                             c.info("commandstats").items()}
    finally:
        broker.close()
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print()
    print(report(results))
    if "profile" in results:
        prof = results["profile"]
        print(f"\npy-spy ({prof['samples']} samples, profile run "
              f"{results['profile_run']['events_per_s_steady']} events/s):")
        for part, pct in prof["parts"].items():
            print(f"  {pct:5.1f}%  {part}")
        print("top functions by own time:")
        for f, pct in prof["top_leaf"]:
            print(f"  {pct:5.1f}%  {f}")
    print(f"\n{results['seconds']} s in all; details in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
