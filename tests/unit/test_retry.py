"""Sinks that wait (dataflow/retry.py, dataflow/writer.py): a store error is retried with
exponential backoff and full jitter, logged once when it starts and once when it ends,
counted, reported to the stall monitor, and given up on after the outage limit; other errors
are not retried. A FeastWriter whose online write fails a few times writes its offline part
once and ends with the right online values.

No servers: injected sleep and clock; the writer tests use the embedded repo (SQLite online,
parquet-folder offline) of the `feast_repo_dir` fixture.
"""

from __future__ import annotations

import errno
import logging
import random
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis.exceptions
from prometheus_client import REGISTRY

from feast_bytewax.dataflow.retry import StoreRetry
from feast_bytewax.errors import FeastBytewaxError, StoreUnavailable
from feast_bytewax.observability.freshness import StallMonitor

RETRY_LOGGER = "feast_bytewax.dataflow.retry"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
T0_US = int(T0.timestamp() * 1_000_000)


# ---------------------------------------------------------------------------------------
# Test doubles
# ---------------------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps (or `advance`)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.sleeps.append(seconds)
        self.now += seconds


class UpperBound(random.Random):
    """Full jitter's worst case: uniform(a, b) is always b (shows the backoff bound)."""

    def uniform(self, a: float, b: float) -> float:
        return b


class RecordingMonitor:
    """StallMonitor's interface, recording the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def stalled(self, writer: int, oldest_event_us: int) -> None:
        self.calls.append(("stalled", writer, oldest_event_us))

    def clear(self, writer: int) -> None:
        self.calls.append(("clear", writer))


class Flaky:
    """A store write failing `failures` times with `make_error()`, then returning "ok"."""

    def __init__(self, failures: int, make_error, on_call=None) -> None:
        self.failures = failures
        self.make_error = make_error
        self.calls = 0
        self.on_call = on_call

    def __call__(self) -> str:
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        if self.calls <= self.failures:
            raise self.make_error()
        return "ok"


def store_label() -> str:
    """A store label of its own per test: the Prometheus metrics are process-wide."""
    return f"unit-{uuid.uuid4().hex[:8]}"


def sample(name: str, store: str) -> float:
    value = REGISTRY.get_sample_value(name, {"store": store})
    return 0.0 if value is None else value


def errors_total(store: str) -> float:
    return sample("feast_bytewax_store_errors_total", store)


def incidents_total(store: str) -> float:
    return sample("feast_bytewax_store_incidents_total", store)


def stalled(store: str) -> float:
    return sample("feast_bytewax_store_stalled", store)


def retry_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == RETRY_LOGGER and r.levelno >= logging.ERROR]


STORE_ERRORS = {
    "builtin ConnectionError": lambda: ConnectionError("[Errno 111] Connection refused"),
    "redis ConnectionError": lambda: redis.exceptions.ConnectionError(
        "Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    "redis TimeoutError": lambda: redis.exceptions.TimeoutError("Timeout reading from socket"),
    "redis BusyLoadingError": lambda: redis.exceptions.BusyLoadingError(
        "Redis is loading the dataset in memory"),
    "sqlite locked": lambda: sqlite3.OperationalError("database is locked"),
    "disk full": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "read-only disk": lambda: OSError(errno.EROFS, "Read-only file system"),
    "socket timeout": lambda: TimeoutError("timed out"),
}


# ---------------------------------------------------------------------------------------
# StoreRetry
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_error", list(STORE_ERRORS.values()), ids=list(STORE_ERRORS))
def test_store_error_is_retried_until_it_succeeds(make_error, caplog) -> None:
    caplog.set_level(logging.INFO)
    t = FakeTime()
    store = store_label()
    monitor = RecordingMonitor()
    owner = object()
    seen_stalled: list[float] = []
    fn = Flaky(4, make_error, on_call=lambda n: seen_stalled.append(stalled(store)))
    retry = StoreRetry(outage_limit=600, first_backoff=0.1, max_backoff=5.0, monitor=monitor,
                       sleep=t.sleep, clock=t.clock, rng=random.Random(7))

    assert retry.call(store, fn, waiting_since_us=T0_US, owner=owner) == "ok"

    assert fn.calls == 5  # N failures + the success
    assert len(t.sleeps) == 4  # one backoff per failure, none after the success
    for attempt, slept in enumerate(t.sleeps):
        assert 0 <= slept <= min(5.0, 0.1 * 2 ** attempt), (attempt, t.sleeps)
    # the stall gauge is up while the incident lasts and down afterwards
    assert seen_stalled == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert stalled(store) == 0.0
    assert errors_total(store) == 4 and incidents_total(store) == 1
    # one ERROR when the incident starts, one when it ends
    messages = retry_errors(caplog)
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"{store} store write failed (")
    assert type(make_error()).__name__ in messages[0]
    assert "input paused" in messages[0]
    assert messages[1].startswith(f"{store} store is back after ")
    assert "4 retries" in messages[1]
    # the monitor heard of the oldest waiting row once, and of the end once
    assert monitor.calls == [("stalled", id(owner), T0_US), ("clear", id(owner))]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    t = FakeTime()
    retry = StoreRetry(outage_limit=10_000, first_backoff=0.1, max_backoff=5.0,
                       sleep=t.sleep, clock=t.clock, rng=UpperBound())
    fn = Flaky(10, lambda: redis.exceptions.ConnectionError("down"))
    assert retry.call(store_label(), fn) == "ok"
    # the bound of full jitter: min(max_backoff, first * 2**attempt)
    assert t.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])

    # real jitter: anywhere in [0, bound], not the bound itself every time
    t = FakeTime()
    retry = StoreRetry(outage_limit=10_000, first_backoff=0.1, max_backoff=5.0,
                       sleep=t.sleep, clock=t.clock, rng=random.Random(1))
    fn = Flaky(40, lambda: ConnectionError("down"))
    assert retry.call(store_label(), fn) == "ok"
    bounds = [min(5.0, 0.1 * 2 ** a) for a in range(40)]
    assert all(0 <= s <= b for s, b in zip(t.sleeps, bounds, strict=True))
    assert len({round(s / b, 6) for s, b in zip(t.sleeps, bounds, strict=True)}) > 30
    assert sum(t.sleeps[7:]) < 0.8 * 5.0 * 33  # full jitter averages half the bound


def test_the_stall_monitor_reports_the_oldest_waiting_row_during_the_stall() -> None:
    """With the real StallMonitor: the age the SLO reads grows while the write fails and is
    gone once it succeeds."""
    t = FakeTime()
    now_us = [T0_US + 30_000_000]  # the wall clock of the monitor: 30 s after the row
    monitor = StallMonitor(clock=lambda: now_us[0])
    ages: list[float | None] = []

    def on_call(n: int) -> None:
        ages.append(monitor.pending_age())
        now_us[0] += 2_000_000

    retry = StoreRetry(outage_limit=600, monitor=monitor, sleep=t.sleep, clock=t.clock)
    fn = Flaky(3, lambda: redis.exceptions.ConnectionError("down"), on_call=on_call)
    writer = object()
    assert retry.call(store_label(), fn, waiting_since_us=T0_US, owner=writer) == "ok"
    assert ages[0] is None  # nothing waits before the first failure
    assert ages[1:] == pytest.approx([32.0, 34.0, 36.0])
    assert monitor.pending_age() is None

    # two writers: the oldest row of either
    monitor.stalled(1, T0_US + 10_000_000)
    monitor.stalled(2, T0_US)
    now_us[0] = T0_US + 50_000_000
    assert monitor.pending_age() == pytest.approx(50.0)
    monitor.clear(2)
    assert monitor.pending_age() == pytest.approx(40.0)
    monitor.clear(1)
    assert monitor.pending_age() is None


def test_gives_up_with_store_unavailable_after_the_outage_limit(caplog) -> None:
    caplog.set_level(logging.INFO)
    t = FakeTime()
    store = store_label()
    monitor = RecordingMonitor()
    retry = StoreRetry(outage_limit=30.0, first_backoff=0.1, max_backoff=5.0, monitor=monitor,
                       sleep=t.sleep, clock=t.clock, rng=random.Random(3))
    fn = Flaky(10**9, lambda: redis.exceptions.ConnectionError("Connection refused"))
    start = t.now
    with pytest.raises(StoreUnavailable) as info:
        retry.call(store, fn, waiting_since_us=T0_US, owner=fn)
    assert isinstance(info.value, FeastBytewaxError)  # the CLI prints it as one line
    # it waited the whole limit, and not longer than the limit
    assert t.now - start == pytest.approx(30.0)
    assert sum(t.sleeps) == pytest.approx(30.0)
    assert all(s <= 5.0 for s in t.sleeps)
    assert fn.calls == len(t.sleeps) + 1
    text = str(info.value)
    assert store in text and "30" in text and "--store-outage-limit" in text
    assert "ConnectionError" in text and "Connection refused" in text
    assert "\n" not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # one incident, one start line and no "back" line
    assert incidents_total(store) == 1 and errors_total(store) == fn.calls
    messages = retry_errors(caplog)
    assert len(messages) == 1 and "store write failed" in messages[0], messages
    assert monitor.calls[0] == ("stalled", id(fn), T0_US)


def test_gives_up_on_the_first_failure_past_the_limit() -> None:
    """A failure that itself took longer than the limit (a 30 s socket timeout) is not
    followed by another wait."""
    t = FakeTime()

    def slow_failure() -> None:
        t.now += 12.0  # the attempt took 12 s
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    retry = StoreRetry(outage_limit=20.0, sleep=t.sleep, clock=t.clock)
    with pytest.raises(StoreUnavailable):
        retry.call(store_label(), slow_failure)
    # the incident starts when the first failure is seen; the second one is 12 s + a
    # backoff later, the third past the limit: no sleep after it
    assert len(t.sleeps) == 2


@pytest.mark.parametrize("error", [ValueError("schema mismatch"), KeyError("user_id"),
                                   TypeError("bad"),
                                   sqlite3.IntegrityError("UNIQUE constraint failed")],
                         ids=lambda e: type(e).__name__)
def test_errors_that_are_not_about_a_store_are_not_retried(error, caplog) -> None:
    assert_not_retried(error, caplog)


@pytest.mark.parametrize("error", [
    # redis-py refusing a value the encoder produced: a bug on our side, never transient
    redis.exceptions.DataError("Invalid input of type: 'NoneType'. Convert to a bytes, "
                               "string, int or float first."),
    # the key holds another type (someone else's data at Feast's key): retrying cannot help
    redis.exceptions.ResponseError(
        "WRONGTYPE Operation against a key holding the wrong kind of value"),
    # sqlite's OperationalError is also what a missing table or bad SQL raises
    sqlite3.OperationalError("no such table: feast_bytewax_user_login_features"),
], ids=["redis-DataError", "redis-WRONGTYPE", "sqlite-no-such-table"])
def test_command_and_schema_errors_are_not_retried_as_outages(error, caplog) -> None:
    """Not a store that is down: Redis answered, and said the command is wrong. Retrying it
    for --store-outage-limit (600 s by default) and then reporting "the online store has
    been failing" hides a bug or a data problem behind an outage."""
    assert_not_retried(error, caplog)


def assert_not_retried(error: BaseException, caplog) -> None:
    caplog.set_level(logging.INFO)
    t = FakeTime()
    store = store_label()
    monitor = RecordingMonitor()
    calls = []

    def fn():
        calls.append(1)
        raise error

    retry = StoreRetry(monitor=monitor, sleep=t.sleep, clock=t.clock)
    with pytest.raises(type(error)):
        retry.call(store, fn, waiting_since_us=T0_US, owner=fn)
    assert len(calls) == 1 and t.sleeps == []
    assert errors_total(store) == 0 and incidents_total(store) == 0 and stalled(store) == 0
    assert retry_errors(caplog) == [] and monitor.calls == []


def test_each_incident_is_counted_and_logged_once(caplog) -> None:
    caplog.set_level(logging.INFO)
    t = FakeTime()
    store = store_label()
    retry = StoreRetry(sleep=t.sleep, clock=t.clock)
    for failures in (3, 0, 1, 0, 5):
        fn = Flaky(failures, lambda: ConnectionError("down"))
        assert retry.call(store, fn) == "ok"
    assert incidents_total(store) == 3
    assert errors_total(store) == 9
    assert stalled(store) == 0
    messages = retry_errors(caplog)
    assert [("failed" in m, "is back" in m) for m in messages] == [
        (True, False), (False, True)] * 3, messages
    # the backoff starts again at the first step for each incident
    assert t.sleeps[3] <= 0.1 and t.sleeps[4] <= 0.1


def test_a_write_that_succeeds_at_once_is_silent(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    t = FakeTime()
    store = store_label()
    monitor = RecordingMonitor()
    retry = StoreRetry(monitor=monitor, sleep=t.sleep, clock=t.clock)
    assert retry.call(store, lambda: 42, waiting_since_us=T0_US) == 42
    assert t.sleeps == [] and monitor.calls == [] and retry_errors(caplog) == []
    assert errors_total(store) == 0 and incidents_total(store) == 0


def test_retry_waits_on_the_calling_thread() -> None:
    """Backpressure: the write blocks the thread that called it (the worker) until it
    succeeds; it is not handed to a background thread."""
    threads = []
    sleeps_on = []

    def fn():
        threads.append(threading.get_ident())
        if len(threads) < 3:
            raise redis.exceptions.ConnectionError("down")
        return "done"

    retry = StoreRetry(first_backoff=0.001, max_backoff=0.002,
                       sleep=lambda s: sleeps_on.append(threading.get_ident()))
    assert retry.call(store_label(), fn) == "done"
    me = threading.get_ident()
    assert threads == [me] * 3 and sleeps_on == [me] * 2


# ---------------------------------------------------------------------------------------
# FeastWriter: a failing store write does not write what already succeeded again
# ---------------------------------------------------------------------------------------

FOLDER = Path("data/offline/user_features")


@pytest.fixture
def store(feast_repo_dir: Path):
    from feast import FeatureStore

    return FeatureStore(repo_path=str(feast_repo_dir))


@pytest.fixture
def spec(store):
    from feast_bytewax.features.spec import load_spec

    return load_spec(store)


def row(spec, key: str, minute: float, n: int):
    """A FeatureRow at T0 + minute whose values all derive from n (ints for int features),
    whatever features the repo declares."""
    from feast_bytewax.records import FeatureRow

    values = tuple(n + i if f.dtype == "int64" else (n + i) / 4
                   for i, f in enumerate(spec.features))
    return FeatureRow(key=key,
                      event_timestamp=int((T0 + timedelta(minutes=minute)).timestamp() * 1e6),
                      values=values, cause="event")


def part_files(repo: Path) -> list[Path]:
    return sorted((repo / FOLDER).glob("part-*.parquet"))


def temp_files(repo: Path) -> list[Path]:
    return sorted((repo / FOLDER).glob(".*.tmp"))


def offline_frame(repo: Path) -> pd.DataFrame:
    from feast import FeatureStore

    from feast_bytewax.stores.parquet_folder import read_source_frame

    store = FeatureStore(repo_path=str(repo))
    return read_source_frame(store.config, store.get_data_source("user_features_batch"))


def online_values(store, spec, keys: list[str]) -> dict[str, dict]:
    """The spec's features (and their timestamps) as Feast serves them, per key."""
    result = store.get_online_features(
        features=[f"{f.view}:{f.name}" for f in spec.features],
        entity_rows=[{spec.join_key: k} for k in keys],
    ).to_dict(include_event_timestamps=True)
    names = [*spec.feature_names, *(f"{n}__ts" for n in spec.feature_names)]
    return {k: {name: result[name][i] for name in names} for i, k in enumerate(keys)}


def expected_online(spec, r) -> dict:
    ts = int(r.event_timestamp // 1_000_000)
    out = {}
    for name, value in zip(spec.feature_names, r.values, strict=True):
        out[name] = value
        out[f"{name}__ts"] = ts
    return out


def make_writer(store, spec, monitor=None):
    from feast_bytewax.dataflow.writer import FeastWriter

    t = FakeTime()
    retry = StoreRetry(outage_limit=600, monitor=monitor, sleep=t.sleep, clock=t.clock)
    return FeastWriter(store, spec, max_interval=3600, retry=retry), t


def test_online_write_failing_a_few_times_writes_the_offline_part_once(
        store, spec, feast_repo_dir: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    monitor = RecordingMonitor()
    writer, t = make_writer(store, spec, monitor)
    real_online_write = writer._online_write
    calls: list[str] = []
    fail = {"left": 0}

    def flaky_online_write(view, frame):
        calls.append(view.name)
        if fail["left"]:
            fail["left"] -= 1
            raise redis.exceptions.ConnectionError("Error 111 connecting. Connection refused.")
        return real_online_write(view, frame)

    monkeypatch.setattr(writer, "_online_write", flaky_online_write)
    offline_writes: list[str] = []
    for txn in writer.txns.values():
        real_txn_write = txn.write

        def counting_write(table, real=real_txn_write):
            name = real(table)
            offline_writes.append(name)
            return name

        monkeypatch.setattr(txn, "write", counting_write)

    views = [v.name for v in writer.views if v.online]
    assert len(views) >= 2
    written = []
    for flush in range(3):
        rows = [row(spec, f"u{k}", flush * 10 + k, flush * 100 + k) for k in range(4)]
        rows.append(row(spec, "u0", flush * 10 + 5, flush * 100 + 50))  # u0 twice
        writer.write(rows)
        written += rows
        calls.clear()
        fail["left"] = 3  # the first view's write fails 3 times, then succeeds
        assert writer.flush() == len(rows)
        # the offline part of this flush exists once; it was written once
        assert len(part_files(feast_repo_dir)) == flush + 1
        assert len(offline_writes) == flush + 1
        assert temp_files(feast_repo_dir) == []
        # the failing view was retried; the others were written once each
        assert calls == [views[0]] * 4 + views[1:], calls
        writer.checkpoint()
        # every row offline exactly once
        assert len(offline_frame(feast_repo_dir)) == len(written)
        # the online values are the latest row per key of everything written
        latest = {}
        for r in written:
            if r.key not in latest or r.event_timestamp >= latest[r.key].event_timestamp:
                latest[r.key] = r
        got = online_values(store, spec, sorted(latest))
        for key, r in latest.items():
            assert got[key] == expected_online(spec, r), key

    assert len(t.sleeps) == 9
    assert writer.stats()["flushes"] == 3
    assert writer.stats()["rows_offline"] == len(written)
    messages = retry_errors(caplog)
    assert len(messages) == 6 and all(m.startswith("online store ") for m in messages)
    # each stall reported the flush's oldest row
    stalls = [c for c in monitor.calls if c[0] == "stalled"]
    assert [c[2] for c in stalls] == [
        int((T0 + timedelta(minutes=10 * f)).timestamp() * 1e6) for f in range(3)]
    assert all(c[1] == id(writer) for c in stalls)
    assert [c[0] for c in monitor.calls] == ["stalled", "clear"] * 3


def test_a_later_view_failing_does_not_rewrite_the_earlier_views_or_the_offline_part(
        store, spec, feast_repo_dir: Path, monkeypatch) -> None:
    writer, _ = make_writer(store, spec)
    real_online_write = writer._online_write
    views = [v.name for v in writer.views if v.online]
    calls: list[str] = []
    left = {"n": 2}

    def flaky(view, frame):
        calls.append(view.name)
        if view.name == views[-1] and left["n"]:
            left["n"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real_online_write(view, frame)

    monkeypatch.setattr(writer, "_online_write", flaky)
    rows = [row(spec, f"u{k}", k, k + 1) for k in range(5)]
    writer.write(rows)
    writer.flush()
    assert calls == views[:-1] + [views[-1]] * 3
    assert len(part_files(feast_repo_dir)) == 1
    writer.close()
    assert len(offline_frame(feast_repo_dir)) == len(rows)
    got = online_values(store, spec, [r.key for r in rows])
    for r in rows:
        assert got[r.key] == expected_online(spec, r)


def test_offline_write_failing_is_retried_under_the_same_part_name(
        store, spec, feast_repo_dir: Path, monkeypatch) -> None:
    """A disk that is full for a while: the part is written once it can be, under the name
    the failed attempts had, and nothing else is left in the folder."""
    import feast_bytewax.stores.commits as commits

    writer, t = make_writer(store, spec)
    real = commits.write_part_file
    attempts: list[str] = []

    def full_disk(filesystem, folder, name, table):
        attempts.append(name)
        if len(attempts) <= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(filesystem, folder, name, table)

    monkeypatch.setattr(commits, "write_part_file", full_disk)
    rows = [row(spec, f"u{k}", k, k + 1) for k in range(5)]
    writer.write(rows)
    writer.flush()
    assert len(attempts) == 4 and len(set(attempts)) == 1
    assert [p.name for p in part_files(feast_repo_dir)] == attempts[:1]
    assert temp_files(feast_repo_dir) == []
    assert len(t.sleeps) == 3
    writer.checkpoint()
    assert len(offline_frame(feast_repo_dir)) == len(rows)
    got = online_values(store, spec, [r.key for r in rows])
    for r in rows:
        assert got[r.key] == expected_online(spec, r)


def test_online_store_that_stays_down_gives_up_and_keeps_the_rows(
        store, spec, feast_repo_dir: Path, monkeypatch) -> None:
    from feast_bytewax.dataflow.writer import FeastWriter

    t = FakeTime()
    writer = FeastWriter(store, spec, max_interval=3600,
                         retry=StoreRetry(outage_limit=20, sleep=t.sleep, clock=t.clock))

    def down(view, frame):
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(writer, "_online_write", down)
    rows = [row(spec, f"u{k}", k, k + 1) for k in range(3)]
    writer.write(rows)
    with pytest.raises(StoreUnavailable, match="online"):
        writer.flush()
    assert writer.pending == len(rows)  # nothing was dropped
    assert t.now - 1000.0 == pytest.approx(20.0)


def test_a_real_sqlite_lock_is_waited_for(store, spec, feast_repo_dir: Path,
                                          caplog) -> None:
    """SQLite locked for real (another connection holds an exclusive lock on the online
    database): the write fails with "database is locked" (after sqlite's own 5 s busy
    timeout), is retried once the lock is gone, and succeeds."""
    from feast_bytewax.dataflow.writer import FeastWriter

    caplog.set_level(logging.INFO)
    writer, _ = make_writer(store, spec)
    writer.write([row(spec, "u1", 0, 1)])
    writer.flush()  # creates the tables
    db = feast_repo_dir / "data" / "online.db"
    assert db.exists()
    locker = sqlite3.connect(db, timeout=0)
    locker.execute("BEGIN EXCLUSIVE")

    def sleep_then_unlock(seconds: float) -> None:
        if locker.in_transaction:
            locker.rollback()

    writer = FeastWriter(store, spec, max_interval=3600,
                         retry=StoreRetry(outage_limit=600, sleep=sleep_then_unlock))
    rows = [row(spec, f"u{k}", 5 + k, 10 + k) for k in range(3)]
    writer.write(rows)
    try:
        writer.flush()
    finally:
        locker.close()
    messages = retry_errors(caplog)
    assert len(messages) == 2, messages
    assert "OperationalError" in messages[0] and "locked" in messages[0]
    got = online_values(store, spec, [r.key for r in rows])
    for r in rows:
        assert got[r.key] == expected_online(spec, r)


def test_a_missing_online_table_is_not_an_outage(store, spec, feast_repo_dir: Path,
                                                 caplog) -> None:
    """The online database lost its tables (deleted after `feast apply`): every write fails
    with "no such table", which no wait can fix. It should fail at once, naming the table,
    not be retried as an outage for --store-outage-limit and then reported as "the online
    store has been failing"."""
    caplog.set_level(logging.INFO)
    (feast_repo_dir / "data" / "online.db").unlink()
    writer, t = make_writer(store, spec)
    writer.write([row(spec, "u1", 0, 1)])
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        writer.flush()
    assert t.sleeps == []


# ---------------------------------------------------------------------------------------
# The sink at a snapshot: the message names what failed (the write or the commit)
# ---------------------------------------------------------------------------------------


class FatalStop(Exception):
    """Raised by the stubbed `fatal_stop` (which would end the process)."""


def snapshot_failure(store, spec, monkeypatch) -> tuple:
    """A FeastSinkPartition with one buffered row, its writer on a 20 s outage limit and a
    fake clock, and `fatal_stop` raising `FatalStop(message)`: (partition, writer)."""
    import feast_bytewax.dataflow.feast_sink as feast_sink
    from feast_bytewax.dataflow.lifecycle import RunLifecycle
    from feast_bytewax.dataflow.writer import FeastWriter

    def stop(message: str, stats=None, trace: bool = False):
        raise FatalStop(message)

    monkeypatch.setattr(feast_sink, "fatal_stop", stop)
    t = FakeTime()
    writer = FeastWriter(store, spec, max_interval=3600,
                         retry=StoreRetry(outage_limit=20, sleep=t.sleep, clock=t.clock))
    part = feast_sink.FeastSinkPartition(writer, RunLifecycle(), None, (None, None))
    part.write_batch([row(spec, "u1", 0, 1)])
    return part, writer


def test_an_outage_while_flushing_at_a_snapshot_is_a_write_failure(
        store, spec, monkeypatch) -> None:
    part, writer = snapshot_failure(store, spec, monkeypatch)

    def down(view, frame):
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(writer, "_online_write", down)
    with pytest.raises(FatalStop) as info:
        part.snapshot()
    message = str(info.value)
    assert message.startswith("Feast write failed: the online store has been failing"), message
    assert writer.pending == 1


def test_an_outage_while_committing_at_a_snapshot_is_a_commit_failure(
        store, spec, monkeypatch) -> None:
    part, writer = snapshot_failure(store, spec, monkeypatch)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for txn in writer.txns.values():
        monkeypatch.setattr(txn, "checkpoint", full)
    with pytest.raises(FatalStop) as info:
        part.snapshot()
    message = str(info.value)
    assert message.startswith("Feast commit failed: the offline store has been failing"), \
        message
    assert writer.pending == 0  # the flush before it went through
