"""Sinks that wait, end to end: `feast-bytewax run` (the real command, in a subprocess) from
librdkafka's mock Kafka cluster into a repo on a real redis-server that the test owns, while
events flow in real time; then the store goes away.

- Redis shut down mid-run (its data saved) and started again 30 s later: the run survives,
  pauses its input, logs one incident line and one recovery line, fires the freshness SLO
  during the stall, and ends with every row (offline: row for row the brute-force reference;
  online: the reference's value for every user).
- Redis paused (SIGSTOP) for 30 s: the same, with socket timeouts in the connection string;
  and with the shipped connection string, whether the stall is noticed at all (the writes'
  default socket timeout, and how many tries redis-py makes inside one store attempt).
- Redis down for longer than --store-outage-limit: exit code 3, one error line, the summary,
  no panic and no traceback; with --recovery-dir a restart resumes and ends complete.
- The offline folder unwritable for a while (embedded SQLite online store).

The redis-server of each test is its own (a free loopback port, `--dir` in the test's temp
directory) so that it can be shut down with SHUTDOWN SAVE and started again with its data.
Every wait has a deadline; every child process is stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feast_bytewax.dataflow.retry import StoreRetry
from feast_bytewax.datagen.generate import generate_events
from tests import reference as ref
from tests.conftest import make_feast_repo
from tests.e2e.checks import (
    as_json,
    as_ref,
    check_rows,
    close,
    free_port,
    offline_rows,
    summary_numbers,
)
from tests.e2e.repos import ROOT, apply, copy_repo
from tests.services import find_redis_server, free_loopback_port
from tests.support.tcp import LoopbackServer

pytestmark = pytest.mark.e2e

SPEC = ref.shipped_spec()
TIMEOUTS = ",socket_timeout=2,socket_connect_timeout=2"
STALL_S = 30.0


# ---------------------------------------------------------------------------------------
# A redis-server of our own that can be shut down and started again with its data
# ---------------------------------------------------------------------------------------


class OwnRedis:
    """redis-server on a fixed free loopback port, data in `directory`/dump.rdb."""

    def __init__(self, directory: Path) -> None:
        self.binary = find_redis_server()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_loopback_port()
        self.process: subprocess.Popen | None = None
        self.paused = False
        self.log = directory / "redis.log"

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           socket_connect_timeout=2)

    def start(self, timeout: float = 20.0) -> None:
        import redis

        assert self.process is None or self.process.poll() is not None
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.directory), "--dbfilename", "dump.rdb", "--save", "",
                 "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "notice"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                with contextlib.closing(self.client()) as c:
                    if c.ping():
                        return
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                time.sleep(0.05)
        raise AssertionError(f"redis-server on {self.port} not up in {timeout:.0f}s")

    def shutdown_save(self, timeout: float = 20.0) -> None:
        """SHUTDOWN SAVE: the data goes to dump.rdb, the server exits, the port is closed."""
        import redis

        with contextlib.closing(self.client()) as c, contextlib.suppress(
                redis.exceptions.ConnectionError):
            c.shutdown(save=True)
        self.process.wait(timeout)
        assert (self.directory / "dump.rdb").exists()

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            if self.paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path):
    server = OwnRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


# ---------------------------------------------------------------------------------------
# Events in real time, the run as a child process, its metrics
# ---------------------------------------------------------------------------------------


def live_events(n: int, users: int, seconds: float, seed: int, lead_s: float = 1.0) -> list:
    """Generated events (in order, no late ones) with their times squeezed into
    [now + lead, now + lead + seconds]: produced at their own time, they are current."""
    events = list(generate_events(n, users, start=datetime(2024, 1, 1, tzinfo=UTC),
                                  duration=timedelta(minutes=10), seed=seed,
                                  late_fraction=0.0, jitter_s=0.0))
    first, last = events[0]["event_timestamp"], events[-1]["event_timestamp"]
    span = (last - first).total_seconds() or 1.0
    start = datetime.now(UTC) + timedelta(seconds=lead_s)
    out = []
    for e in events:
        offset = (e["event_timestamp"] - first).total_seconds() * seconds / span
        out.append({**e, "event_timestamp": start + timedelta(microseconds=int(offset * 1e6))})
    stamps = [e["event_timestamp"] for e in out]
    assert stamps == sorted(stamps)
    return out


class PacedProducer(threading.Thread):
    """Produces each event (key = user) when the wall clock reaches its event time."""

    def __init__(self, cluster, topic: str, events: list[dict],
                 partition: int | None = None) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.cluster, self.topic, self.events = cluster, topic, events
        self.kwargs = {} if partition is None else {"partition": partition}
        self.errors: list[str] = []
        self.produced = 0
        self.left = -1

    def run(self) -> None:
        producer = self.cluster.producer()

        def on_delivery(err, msg):
            if err is not None:
                self.errors.append(str(err))

        for e in self.events:
            wait = (e["event_timestamp"] - datetime.now(UTC)).total_seconds()
            if wait > 0:
                time.sleep(wait)
            while True:
                try:
                    producer.produce(self.topic, key=e["user_id"].encode(), value=as_json(e),
                                     on_delivery=on_delivery, **self.kwargs)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
            self.produced += 1
        self.left = producer.flush(30)


class Run:
    """`python -m feast_bytewax.cli.main run ...` with stdout/stderr read line by line
    (each line with the monotonic time it arrived)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feast_bytewax.cli.main", "run", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, **env}, cwd=ROOT)
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._readers = [threading.Thread(target=self._read, args=(s, into), daemon=True)
                         for s, into in ((self.proc.stdout, self.out),
                                         (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, into) -> None:
        for line in stream:
            into.append((time.monotonic(), line.rstrip("\n")))

    @property
    def stdout(self) -> str:
        return "\n".join(line for _, line in self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.err)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the run did not end within {timeout:.0f}s; stderr:\n"
                                 + self.stderr[-4000:]) from None
        for t in self._readers:
            t.join(10)
        return rc

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        for t in self._readers:
            t.join(5)

    def lines(self, text: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in self.err if text in line]

    def tail(self) -> str:
        return f"stdout:\n{self.stdout[-2000:]}\nstderr:\n{self.stderr[-5000:]}"


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str]):
    run = Run(args, env)
    try:
        yield run
    finally:
        run.stop()


def scrape(port: int) -> dict[str, float] | None:
    """The run's Prometheus samples, keyed `name{labels}` as exposed; None if unreachable."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return None
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def value(samples: dict[str, float] | None, key: str) -> float:
    return 0.0 if not samples else samples.get(key, 0.0)


CONSUMED = "feast_bytewax_consumed_total"
ROWS_ONLINE = "feast_bytewax_rows_online_total"
BREACHED = "feast_bytewax_freshness_slo_breached"
STALLED = 'feast_bytewax_store_stalled{store="%s"}'
INCIDENTS = 'feast_bytewax_store_incidents_total{store="%s"}'


def wait_for(what: str, condition, timeout: float, run: Run | None = None,
             every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if run is not None and not run.alive():
            raise AssertionError(f"the run ended while waiting for {what} "
                                 f"(rc={run.proc.returncode})\n{run.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s"
                                 + (f"\n{run.tail()}" if run else ""))
        time.sleep(every)


# Live knobs for a fresh stream: a watermark delay of 1 s (0 would make events late by
# the consumer's own latency jitter: the live watermark moves with the wall clock), fetches
# that do not wait 500 ms for more bytes, flushes every 0.1 s: the p99 freshness is ~1.5 s
# on a loaded 2-core machine, inside the 2 s SLO of the tests.
FRESH = ("--watermark-delay", "1", "--flush-interval", "0.1",
         "--kafka-option", "fetch.wait.max.ms=20")


def run_args(repo: Path, bootstrap: str, topic: str, *extra: str) -> list[str]:
    return ["--repo", str(repo), "--source", f"kafka://{bootstrap}/{topic}", "--shards", "4",
            "--quiet", *extra]


def redis_repo(tmp_path: Path, connection_string: str, monkeypatch) -> tuple[Path, dict]:
    """A repo on the shipped feature_store.redis.yaml, applied; FEAST_REDIS set here (for
    the test's own reads) and returned for the child."""
    repo = copy_repo(tmp_path / "repo", (ROOT / "feature_store.redis.yaml").read_text())
    env = {"FEAST_REDIS": connection_string}
    monkeypatch.setenv("FEAST_REDIS", connection_string)
    apply(repo)
    return repo, env


def online_rows(repo: Path, users: list[str]) -> dict[str, tuple[int, tuple]]:
    """{user: (timestamp us, values in SPEC order)} as Feast serves them."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    result = store.get_online_features(
        features=[f"{f.view}:{f.name}" for f in SPEC.features],
        entity_rows=[{SPEC.join_key: u} for u in users],
    ).to_dict(include_event_timestamps=True)
    out = {}
    for i, user in enumerate(users):
        stamps = {result[f"{n}__ts"][i] for n in SPEC.feature_names}
        assert len(stamps) == 1, (user, stamps)  # one row per key writes every view
        out[user] = (stamps.pop(), tuple(result[n][i] for n in SPEC.feature_names))
    return out


def check_online(repo: Path, events: list[dict]) -> int:
    """Every user's online row is not older than its newest offline row (the offline rows are
    checked row for row by `check_rows`) and holds the reference's value at its own time:
    nothing online is stale or lost. A provisional online row can be stamped later than the
    event behind it: a restore writes every key again at the restored watermark, and a
    correction is stamped at the provisional watermark (`engine.provisional`). Feast keeps the
    stamp in whole seconds, so the value is checked at both ends of that second."""
    users = sorted({e["user_id"] for e in events})
    latest = {k: rows[-1] for k, rows in offline_rows(repo).items()}
    assert sorted(latest) == users
    got = online_rows(repo, users)
    bad = []
    for user in users:
        t_us, offline_values = latest[user]
        ts_s, values = got[user]
        ends = {max(t_us, ts_s * 1_000_000), max(t_us, (ts_s + 1) * 1_000_000 - 1)}
        wants = [ref.value_at(SPEC, events, user, t) for t in sorted(ends)]
        if ts_s < t_us // 1_000_000 or not any(
                all(close(a, b) for a, b in zip(values, want, strict=True)) for want in wants):
            bad.append((user, ts_s, values, t_us, offline_values, wants))
    assert not bad, bad[:5]
    return len(users)


def common_output_checks(run: Run) -> None:
    both = run.stdout + "\n" + run.stderr
    assert "panicked" not in both, run.tail()
    assert "Traceback" not in both, run.tail()


# ---------------------------------------------------------------------------------------
# a. Redis shut down for 30 s mid-run, then started again with its data
# ---------------------------------------------------------------------------------------


def outage_run(kafka_mock, own_redis, tmp_path, monkeypatch, *, go_down, come_back,
               connection_suffix: str, seed: int):
    """The shared scenario of a and b: events flow, the store goes away for STALL_S, comes
    back; returns (run, events, samples during the stall, times)."""
    repo, env = redis_repo(tmp_path, own_redis.connection_string + connection_suffix,
                           monkeypatch)
    topic = kafka_mock.new_topic("outage")
    port = free_port()
    n = 2100
    seconds = 72.0
    args = run_args(repo, kafka_mock.bootstrap, topic, *FRESH,
                    "--freshness-slo", "2", "--metrics-port", str(port),
                    "--max-events", str(n), "--idle-exit", "60",
                    "--store-outage-limit", "300")
    with running(args, env) as run:
        # the run is up (metrics served, consumer started) before events start flowing, so
        # that normal freshness is well inside the 2 s SLO
        wait_for("metrics", lambda: scrape(port) is not None, 90, run)
        time.sleep(3.0)
        events = live_events(n, 50, seconds, seed)
        producer = PacedProducer(kafka_mock, topic, events)
        producer.start()
        wait_for("rows online", lambda: value(scrape(port), ROWS_ONLINE) > 100
                 and value(scrape(port), CONSUMED) >= 300, 60, run)
        # the first flushes of a run are slow (a warm-up breach of the 2 s SLO is common on
        # a loaded machine): the store goes away once the SLO has been fine for 3 s
        quiet_since: list[float | None] = [None]

        def slo_quiet() -> bool:
            s = scrape(port)
            if value(s, BREACHED) == 0 and value(s, STALLED % "online") == 0:
                quiet_since[0] = quiet_since[0] or time.monotonic()
                return time.monotonic() - quiet_since[0] >= 3
            quiet_since[0] = None
            return False

        wait_for("3 s without a freshness SLO breach", slo_quiet, 45, run)
        before = scrape(port)
        down_at = time.monotonic()  # the store goes away during go_down()
        go_down()
        samples = []
        while time.monotonic() - down_at < STALL_S:
            s = scrape(port)
            samples.append((time.monotonic(), s))
            assert run.alive(), run.tail()
            time.sleep(0.5)
        up_at = time.monotonic()  # ...and is back during come_back()
        come_back()
        wait_for("the recovery line", lambda: run.lines("online store is back"), 90, run)
        wait_for("stall gauge down", lambda: value(scrape(port), STALLED % "online") == 0,
                 30, run)
        after = scrape(port)
        producer.join(120)
        assert not producer.is_alive() and producer.left == 0 and not producer.errors
        rc = run.wait(120)
    return dict(run=run, rc=rc, repo=repo, events=events, samples=samples, before=before,
                after=after, down_at=down_at, up_at=up_at)


def check_outage(o: dict) -> None:
    run, events = o["run"], o["events"]
    assert o["rc"] == 0, run.tail()
    common_output_checks(run)
    # no breach before the stall (normal freshness is well inside the SLO)...
    assert value(o["before"], BREACHED) == 0, run.tail()
    assert value(o["before"], STALLED % "online") == 0
    # ...during the stall: the input pauses, the gauge and the SLO say so
    stalled = [(t, s) for t, s in o["samples"] if value(s, STALLED % "online") == 1]
    assert stalled, "feast_bytewax_store_stalled{store=online} never 1 during the stall"
    assert any(value(s, BREACHED) == 1 for _, s in stalled), \
        "the freshness SLO was not breached while the store was stalled"
    consumed = {value(s, CONSUMED) for _, s in stalled}
    assert len(consumed) == 1, f"input kept being read during the stall: {sorted(consumed)}"
    breach = [(t, line) for t, line in run.lines("FRESHNESS SLO BREACH")
              if "rows waiting" in line]
    assert breach, run.tail()
    assert o["down_at"] < breach[0][0] < o["up_at"], "the SLO alert came after the stall"
    # one incident: one line when it starts, one when it ends, one count
    failed, back = run.lines("online store write failed"), run.lines("online store is back")
    assert len(failed) == 1 and len(back) == 1, run.tail()
    print(f"incident line {failed[0][0] - o['down_at']:.1f} s after the store went away")
    assert o["down_at"] < failed[0][0] < o["up_at"] < back[0][0]
    assert value(o["after"], INCIDENTS % "online") == 1
    assert not run.lines("offline store write failed")
    # nothing lost: every record read once, every row the reference's
    line = run.out[0][1]
    nums = summary_numbers(line)
    n = len(events)
    assert nums["consumed"] == nums["processed"] == n, line
    assert nums["late"] == nums["rejected"] == nums["corrections"] == 0, line
    good = [as_ref(e) for e in events]
    assert check_rows(o["repo"], good) == nums["rows"] == nums["pushed_offline"]
    check_online(o["repo"], good)


def test_redis_shut_down_for_30s_mid_run_then_restarted(kafka_mock, own_redis, tmp_path,
                                                        monkeypatch):
    o = outage_run(kafka_mock, own_redis, tmp_path, monkeypatch,
                   go_down=own_redis.shutdown_save, come_back=own_redis.start,
                   connection_suffix="", seed=41)
    check_outage(o)


# ---------------------------------------------------------------------------------------
# b. Redis paused (SIGSTOP) for 30 s, then continued
# ---------------------------------------------------------------------------------------


def test_redis_paused_for_30s_with_socket_timeouts(kafka_mock, own_redis, tmp_path,
                                                  monkeypatch):
    """With `socket_timeout` in the connection string a write to a frozen server fails
    after the timeout (one try per store attempt), and the stall is the same incident as a
    server that is down."""
    o = outage_run(kafka_mock, own_redis, tmp_path, monkeypatch,
                   go_down=own_redis.pause, come_back=own_redis.resume,
                   connection_suffix=TIMEOUTS, seed=43)
    check_outage(o)


def one_row(spec):
    """One current FeatureRow for user u1 (1 for every feature)."""
    from feast_bytewax.records import FeatureRow

    values = tuple(1 if f.dtype == "int64" else 1.0 for f in spec.features)
    return FeatureRow("u1", int(time.time() * 1e6), values, "event")


def test_redis_writes_have_a_socket_timeout_by_default(own_redis, tmp_path, monkeypatch):
    """Without a socket timeout a write to a frozen Redis (SIGSTOP, a network partition
    without a reset) blocks forever: no error, so no incident line, no stall gauge, no SLO
    alert, and --store-outage-limit never ends the run. The shipped connection string is
    `${FEAST_REDIS}` = host:port, so the store must set a timeout when none is given."""
    from feast import FeatureStore

    from feast_bytewax.dataflow.writer import FeastWriter
    from feast_bytewax.features.spec import load_spec

    repo, _ = redis_repo(tmp_path, own_redis.connection_string, monkeypatch)
    store = FeatureStore(repo_path=str(repo))
    spec = load_spec(store)
    writer = FeastWriter(store, spec, max_interval=3600, offline=False)
    writer.write([one_row(spec)])
    writer.flush()  # a real write: the client and its connection exist now
    online_store = writer._provider.online_store
    client = online_store._client  # Feast's cached redis-py client (what writes use)
    pool = client.connection_pool
    connections = [*pool._available_connections, *pool._in_use_connections]
    assert connections
    timeouts = {k: pool.connection_kwargs.get(k)
                for k in ("socket_timeout", "socket_connect_timeout")}
    assert all(c.socket_timeout is not None for c in connections), (
        f"{type(online_store).__name__} writes over connections without a socket timeout "
        f"(pool connection kwargs: {timeouts}; socket_timeout_s: "
        f"{getattr(store.config.online_store, 'socket_timeout_s', '-')})")
    assert timeouts["socket_timeout"] is not None and timeouts["socket_connect_timeout"]


class FirstFailure(Exception):
    """Raised by the injected sleep: the first attempt has failed."""


def test_one_failed_store_attempt_is_one_redis_attempt(own_redis, tmp_path, monkeypatch):
    """StoreRetry only hears of a failure when the write gives up, so how long one attempt
    takes decides when the incident line, the stall gauge and the stall alert come, and how
    far --store-outage-limit overshoots. redis-py's own default Retry (3 retries, jittered
    exponential backoff up to 2 + 4 + 8 s) runs inside every attempt: a refused connection
    is reported after 3-11 s, a frozen server after 4 socket timeouts plus that backoff.
    One attempt should be one try against Redis (StoreRetry does the retrying)."""
    from feast import FeatureStore

    from feast_bytewax.dataflow.writer import FeastWriter
    from feast_bytewax.features.spec import load_spec

    repo, _ = redis_repo(tmp_path, own_redis.connection_string, monkeypatch)
    own_redis.close()
    server = LoopbackServer(close_at_once=True)
    server.start()
    monkeypatch.setenv("FEAST_REDIS", f"127.0.0.1:{server.port}")
    first: dict[str, float] = {}

    def sleep(seconds: float) -> None:
        first["at"] = time.monotonic()
        raise FirstFailure

    try:
        store = FeatureStore(repo_path=str(repo))
        spec = load_spec(store)
        writer = FeastWriter(store, spec, max_interval=3600, offline=False,
                             retry=StoreRetry(outage_limit=600, sleep=sleep))
        writer.write([one_row(spec)])
        started = time.monotonic()
        with pytest.raises(FirstFailure):
            writer.flush()
        took = first["at"] - started
    finally:
        server.stop()
    assert len(server.accepted) == 1, (
        f"one failed store attempt made {len(server.accepted)} connections to Redis and took "
        f"{took:.1f} s before StoreRetry heard of it")


def test_redis_paused_for_30s_with_the_shipped_connection_string(
        kafka_mock, own_redis, tmp_path, monkeypatch):
    """The shipped feature_store.redis.yaml (connection string host:port, nothing else):
    Redis frozen for 30 s must be noticed while it is frozen (incident line or stall gauge),
    as with the timeouts of the test above, and the run must carry on afterwards."""
    repo, env = redis_repo(tmp_path, own_redis.connection_string, monkeypatch)
    topic = kafka_mock.new_topic("frozen")
    port = free_port()
    args = run_args(repo, kafka_mock.bootstrap, topic, *FRESH, "--freshness-slo", "2",
                    "--metrics-port", str(port), "--idle-exit", "8",
                    "--store-outage-limit", "300")
    with running(args, env) as run:
        wait_for("metrics", lambda: scrape(port) is not None, 90, run)
        time.sleep(3.0)
        events = live_events(1000, 40, 45.0, seed=47)
        producer = PacedProducer(kafka_mock, topic, events)
        producer.start()
        wait_for("rows online", lambda: value(scrape(port), ROWS_ONLINE) > 50, 60, run)
        paused_at = time.monotonic()
        own_redis.pause()
        noticed = None
        breached = False
        consumed = set()
        try:
            while time.monotonic() - paused_at < STALL_S:
                s = scrape(port)
                breached = breached or value(s, BREACHED) == 1
                consumed.add(value(s, CONSUMED))
                if noticed is None and (value(s, STALLED % "online") == 1
                                        or run.lines("store write failed")):
                    noticed = time.monotonic() - paused_at
                time.sleep(0.5)
        finally:
            own_redis.resume()
        producer.join(120)
        rc = run.wait(150)
    common_output_checks(run)
    assert rc == 0, run.tail()
    print(f"Redis frozen with the shipped connection string: noticed after "
          f"{'-' if noticed is None else f'{noticed:.1f}'} s")
    assert noticed is not None, (
        f"Redis frozen for {STALL_S:.0f} s: no 'store write failed' line and "
        "feast_bytewax_store_stalled{store=online} stayed 0 (freshness SLO gauge seen at 1: "
        f"{breached}; records consumed, sampled during the freeze: {sorted(consumed)}): the "
        "input was paused silently, the write blocked instead of failing")


# ---------------------------------------------------------------------------------------
# c. A store down longer than --store-outage-limit: exit 3, then resume with recovery
# ---------------------------------------------------------------------------------------


def test_redis_down_longer_than_the_outage_limit_stops_cleanly_and_resumes(
        kafka_mock, own_redis, tmp_path, monkeypatch):
    repo, env = redis_repo(tmp_path, own_redis.connection_string + TIMEOUTS, monkeypatch)
    topic = kafka_mock.new_topic("limit")
    recovery = tmp_path / "recovery"
    port = free_port()
    n, seconds = 1200, 35.0
    args = run_args(repo, kafka_mock.bootstrap, topic, "--recovery-dir", str(recovery),
                    "--flush-interval", "0.2", "--store-outage-limit", "5")
    with running([*args, "--metrics-port", str(port)], env) as run:
        wait_for("metrics", lambda: scrape(port) is not None, 90, run)
        time.sleep(2.0)
        events = live_events(n, 40, seconds, seed=53)
        producer = PacedProducer(kafka_mock, topic, events)
        producer.start()
        wait_for("rows online", lambda: value(scrape(port), ROWS_ONLINE) > 100
                 and value(scrape(port), CONSUMED) >= 200, 60, run)
        down_at = time.monotonic()
        own_redis.shutdown_save()
        rc = run.wait(90)
        stopped_after = time.monotonic() - down_at
    print(f"Redis shut down, --store-outage-limit 5: the run stopped after "
          f"{stopped_after:.1f} s")
    assert rc == 3, run.tail()
    common_output_checks(run)
    errors = [line for _, line in run.err if line.startswith("feast-bytewax: error:")]
    assert len(errors) == 1, run.tail()
    assert "online" in errors[0] and "store-outage-limit" in errors[0], errors[0]
    assert "\n" not in errors[0]
    summary = [line for _, line in run.out if "consumed=" in line]
    assert len(summary) == 1, run.tail()
    nums = summary_numbers(summary[0])
    assert 0 < nums["consumed"] < n
    assert len(run.lines("online store write failed")) == 1
    assert not run.lines("store is back")
    # the limit is 5 s; a refused connection fails at once (one try, no redis-py retries),
    # so the run stops a backoff after the limit, plus the time to exit
    assert 5 <= stopped_after < 20, stopped_after

    # Redis is back (with its data): the resumed run reads the rest and ends complete
    producer.join(120)
    assert not producer.is_alive() and producer.left == 0 and not producer.errors
    own_redis.start()
    with running([*args, "--stop-at-end"], env) as again:
        rc2 = again.wait(150)
    assert rc2 == 0, again.tail()
    common_output_checks(again)
    good = [as_ref(e) for e in events]
    check_rows(repo, good)
    check_online(repo, good)


# ---------------------------------------------------------------------------------------
# d. The offline folder unwritable for a while (embedded SQLite online store)
# ---------------------------------------------------------------------------------------


def _writes_fail(folder: Path) -> str | None:
    """The error a new file in `folder` gets now, or None if it can be written."""
    probe = folder / ".probe-unwritable"
    try:
        probe.write_bytes(b"x")
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror}"
    probe.unlink()
    return None


@contextlib.contextmanager
def unwritable(folder: Path):
    """Make `folder` refuse new files until the block ends; yields (how, the error a write
    gets, what did not work). Not root: chmod 555. Root (chmod does not stop root): a
    read-only bind mount of the folder onto itself (EROFS, a read-only disk), else the
    immutable attribute (chattr +i, EPERM); skips the test when none of them works."""
    tries = []
    if os.geteuid() != 0:
        tries.append(("chmod 555", [["chmod", "555", str(folder)]],
                      [["chmod", "755", str(folder)]]))
    else:
        tries.append(("read-only bind mount",
                      [["mount", "--bind", str(folder), str(folder)],
                       ["mount", "-o", "remount,bind,ro", str(folder)]],
                      [["umount", "-l", str(folder)]]))
        tries.append(("chattr +i", [["chattr", "+i", str(folder)]],
                      [["chattr", "-i", str(folder)]]))
    notes = []
    for how, setup, undo in tries:
        done = []
        ok = True
        for cmd in setup:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                notes.append(f"{how}: {' '.join(cmd)}: {e}")
                ok = False
                break
            if proc.returncode != 0:
                notes.append(f"{how}: {' '.join(cmd)}: rc {proc.returncode} "
                             f"{proc.stderr.strip()[:200]}")
                ok = False
                break
            done.append(cmd)
        error = _writes_fail(folder) if ok else None
        if error is None:
            if ok:
                notes.append(f"{how}: writes still succeed")
            if done:
                for cmd in undo:
                    subprocess.run(cmd, capture_output=True, timeout=30)
            continue
        try:
            yield how, error, notes
        finally:
            for cmd in undo:
                subprocess.run(cmd, capture_output=True, timeout=30, check=True)
            assert _writes_fail(folder) is None
        return
    pytest.skip("cannot make a folder unwritable here: " + "; ".join(notes))


def test_offline_folder_unwritable_for_a_while(kafka_mock, tmp_path):
    """The parquet folder refuses new files for a while (a read-only disk): the offline
    write waits (one incident, input paused), the run goes on once it can write again, and
    every row is there exactly once."""
    repo = make_feast_repo(tmp_path / "repo")
    topic = kafka_mock.new_topic("offline")
    port = free_port()
    n, seconds = 900, 40.0
    args = run_args(repo, kafka_mock.bootstrap, topic, *FRESH, "--metrics-port", str(port),
                    "--max-events", str(n), "--idle-exit", "60",
                    "--store-outage-limit", "300")
    folder = repo / "data" / "offline" / "user_features"
    with running(args, {}) as run:
        wait_for("metrics", lambda: scrape(port) is not None, 90, run)
        time.sleep(3.0)
        events = live_events(n, 40, seconds, seed=59)
        producer = PacedProducer(kafka_mock, topic, events)
        producer.start()
        wait_for("offline parts", lambda: len(list(folder.glob("part-*.parquet"))) >= 3, 60,
                 run)
        down_at = time.monotonic()
        with unwritable(folder) as (how, error, notes):
            print(f"offline folder made unwritable by {how}: a new file gets {error} "
                  f"{notes or ''}")
            wait_for(f"the incident line ({how}: {error})",
                     lambda: run.lines("offline store write failed"), 30, run)
            assert wait_for("stall gauge",
                            lambda: value(scrape(port), STALLED % "offline") == 1, 30, run)
            consumed = value(scrape(port), CONSUMED)
            time.sleep(5)
            assert value(scrape(port), CONSUMED) == consumed  # input paused
            up_at = time.monotonic()
        wait_for("the recovery line", lambda: run.lines("offline store is back"), 60, run)
        producer.join(120)
        rc = run.wait(120)
    assert rc == 0, run.tail()
    common_output_checks(run)
    failed, back = run.lines("offline store write failed"), run.lines("offline store is back")
    assert len(failed) == 1 and len(back) == 1, run.tail()
    assert down_at < failed[0][0] < up_at < back[0][0]
    assert error.split(": ", 1)[1] in failed[0][1], (error, failed[0][1])
    nums = summary_numbers(run.out[0][1])
    assert nums["consumed"] == nums["processed"] == n
    good = [as_ref(e) for e in events]
    assert check_rows(repo, good) == nums["rows"]
    assert not list(folder.glob(".*.tmp"))
