"""Life-cycle safety with real crashes: `feast-bytewax replay` / `run` with --recovery-dir,
SIGKILLed (a real `os.kill(pid, SIGKILL)`, no simulated exception) at several points and
restarted with the same command until it exits 0, end with the offline rows (read through
the commit log: `checks.offline_frame`), the online values and the dead letters of an
uninterrupted run: no lost row, no duplicate, no double-counted event, and no hidden temp
file left behind (a writer killed before its first snapshot is never resumed: the next
writers collect its leftovers). A Kafka dead-letter topic holds every dead letter once
(README, "Live runs").

And event time survives an outage: a live run on a real-time stream, stopped (SIGKILL or
SIGTERM, which aborts with recovery) and restarted 30 s later, counts no event late and
writes no correction: its rows are the reference's for the events produced.

Kill points are chosen from what the run leaves on disk (its offline part files and commit
markers) or sends (dead letters in their topic), so they do not depend on the machine's
speed: after a fraction of the rows, right after a commit (or stage) marker, right after a
part file (a flush whose commit is not written yet), right after a replay's final commit,
right after a dead letter was acknowledged. Mid-write kills freeze the child with SIGSTOP
while a file's hidden temp exists and SIGKILL it frozen, so the kill lands inside the write
for certain. Every wait has a deadline; every child is SIGKILLed by its pid if a test fails
while it runs.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore

from feast_bytewax.dataflow.deadletters import read_dead_letters
from feast_bytewax.datagen.generate import CATEGORIES, BadLine, generate_events, write_events
from feast_bytewax.stores.folder_names import COMMITS, OUR_MARKER, OUR_PART
from tests import reference as ref
from tests.conftest import make_feast_repo
from tests.e2e.checks import (
    NAMES,
    SPEC,
    as_json,
    as_ref,
    check_rows,
    close,
    free_port,
    metric,
    offline_frame,
    offline_rows,
    stream,
    summary_numbers,
)

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "feast_bytewax.cli.main"]
FOLDER = Path("data/offline/user_features")
DEAD = Path("data/dead_letters.jsonl")
SERVICE = "user_fraud_features"
RUN_TIMEOUT_S = 300.0  # one run of the CLI on a loaded 2-core box (start-up alone is ~7 s)


# ---------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------


class Proc:
    """A CLI run in a child process; stdout/stderr go to files (no pipe can fill up)."""

    def __init__(self, cmd: list[str], log_dir: Path, name: str) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.out_path = log_dir / f"{name}.out"
        self.err_path = log_dir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int, timeout: float = 60.0) -> bool:
        """Send `sig` by pid (only while the child is not reaped: no pid reuse) and wait for
        it to end; True if it was still running when the signal arrived."""
        if self.p.poll() is not None:
            return False
        os.kill(self.p.pid, sig)
        self.p.wait(timeout)
        return self.p.returncode == -sig or (sig != signal.SIGKILL and self.p.returncode == 0)

    def kill(self) -> bool:
        return self.signal(signal.SIGKILL)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not end within {timeout:.0f}s:\n"
                                 + self.tail()) from None

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return f"--- stdout\n{self.stdout()[-chars:]}\n--- stderr\n{self.stderr()[-chars:]}"

    def reap(self) -> None:
        """Cleanup after a failure: SIGKILL the child by its pid if it still runs."""
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.wait(30)


@pytest.fixture
def procs():
    """Every child a test starts; the ones still running at the end are SIGKILLed."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.reap()


def wait_until(cond: Callable[[], object], timeout: float, what: str,
               proc: Proc | None = None, every: float = 0.005):
    """Poll `cond` until truthy (returned); None if `proc` ended first; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and not proc.alive():
            return None
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                                 + ("" if proc is None else "\n" + proc.tail()))
        time.sleep(every)


def summary_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if "consumed=" in ln]
    assert lines, f"no summary line in:\n{text[-3000:]}"
    return lines[-1]


# ---------------------------------------------------------------------------------------
# What a run leaves on disk (progress signals only: results are read through the store)
# ---------------------------------------------------------------------------------------


@dataclass
class Disk:
    """The offline folder of a repo: part files per writer, markers, hidden temp files."""

    repo: Path
    _rows: dict[tuple[str, int, int], int] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.repo / FOLDER

    def _names(self, folder: Path) -> list[str]:
        try:
            return os.listdir(folder)
        except FileNotFoundError:
            return []

    def parts(self) -> list[str]:
        return [n for n in self._names(self.folder) if OUR_PART.match(n)]

    def markers(self) -> list[str]:
        return [n for n in self._names(self.folder / COMMITS) if OUR_MARKER.match(n)]

    def temps(self) -> list[str]:
        found = []
        for sub in (self.folder, self.folder / COMMITS):
            found += [str(sub / n) for n in self._names(sub)
                      if n.startswith(".") and n.endswith(".tmp")]
        return found

    def marker_kinds(self) -> list[str]:
        kinds = []
        for n in self.markers():
            try:
                kinds.append(json.loads((self.folder / COMMITS / n).read_text())["kind"])
            except (OSError, ValueError, KeyError):
                continue  # deleted by a rollback meanwhile
        return kinds

    def progress(self) -> int:
        """Rows in the part files of the writer with the most (a writer killed before its
        first snapshot leaves orphans; a resumed writer keeps its name and rolls back)."""
        per_writer: dict[str, int] = {}
        for n in self.parts():
            path = self.folder / n
            try:
                st = path.stat()
                key = (n, st.st_mtime_ns, st.st_size)
                rows = self._rows.get(key)
                if rows is None:
                    rows = self._rows[key] = pq.read_metadata(str(path)).num_rows
            except Exception:
                continue
            writer = OUR_PART.match(n)["writer"]
            per_writer[writer] = per_writer.get(writer, 0) + rows
        return max(per_writer.values(), default=0)


# ---------------------------------------------------------------------------------------
# Kill points
# ---------------------------------------------------------------------------------------


@dataclass
class KillPoint:
    """Wait for a moment of the run, then SIGKILL it. `fire` returns True if the run was
    killed there, False if it ended first (it finished: nothing left to restart)."""

    name: str
    wait: Callable[[Proc, Disk, int], object]

    def fire(self, proc: Proc, disk: Disk, total_rows: int) -> bool:
        if self.wait(proc, disk, total_rows) is None:
            return False
        return proc.kill()


def after_rows(fraction: float, timeout: float = RUN_TIMEOUT_S):
    """Mid-batch: as soon as `fraction` of the uninterrupted run's rows are in part files."""
    def wait(proc: Proc, disk: Disk, total: int):
        return wait_until(lambda: disk.progress() >= fraction * total, timeout,
                          f"{fraction:.0%} of {total} rows", proc)
    return KillPoint(f"after {fraction:.0%} of the rows", wait)


def _after_new(fraction: float, timeout: float, what: str, listing: str) -> Callable:
    """Past `fraction` of the rows, then right after a new file of `listing` appears."""
    def wait(proc: Proc, disk: Disk, total: int):
        if wait_until(lambda: disk.progress() >= fraction * total, timeout,
                      f"{fraction:.0%} of {total} rows", proc) is None:
            return None
        before = set(getattr(disk, listing)())
        return wait_until(lambda: set(getattr(disk, listing)()) - before, timeout,
                          f"a new {what}", proc, every=0.001)
    return wait


def after_new_marker(fraction: float, timeout: float = RUN_TIMEOUT_S):
    """Right after a snapshot's commit (live) / stage (replay) marker, past `fraction`."""
    return KillPoint(f"right after a marker past {fraction:.0%}",
                     _after_new(fraction, timeout, "marker", "markers"))


def after_new_part(fraction: float, timeout: float = RUN_TIMEOUT_S):
    """Right after a flush wrote a part file (its commit/stage marker not written yet)."""
    return KillPoint(f"right after a part file past {fraction:.0%}",
                     _after_new(fraction, timeout, "part", "parts"))


def after_final_commit(timeout: float = RUN_TIMEOUT_S):
    """A replay: right after its final commit marker, before the process is done."""
    def wait(proc: Proc, disk: Disk, total: int):
        return wait_until(lambda: "commit" in disk.marker_kinds(), timeout,
                          "the final commit", proc, every=0.002)
    return KillPoint("right after the final commit", wait)


def stopped(pid: int) -> bool:
    """The child is stopped (SIGSTOP took effect): state T in /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def while_writing(where: str, snapshots: int, timeout: float = RUN_TIMEOUT_S):
    """In the middle of writing a file (its hidden temp exists and is not renamed yet):
    `where` is "part" (a part file) or "marker" (a commit/stage marker), once at least
    `snapshots` markers exist (0: before the first snapshot). The child is frozen with
    SIGSTOP as soon as a temp shows up; it is SIGKILLed frozen if the temp is still there
    (a kill mid-write, for certain), else it goes on (SIGCONT) and we look for the next."""
    def wait(proc: Proc, disk: Disk, total: int):
        folder, commits = str(disk.folder), str(disk.folder / COMMITS)
        watched = folder if where == "part" else commits

        def listing(path: str) -> list[str]:
            try:
                return os.listdir(path)
            except FileNotFoundError:
                return []

        def temps() -> set[str]:
            return {n for n in listing(watched) if n.endswith(".tmp")}

        deadline = time.monotonic() + timeout
        while proc.p.poll() is None:  # a busy poll: a write takes a millisecond or less
            assert time.monotonic() < deadline, f"no {where} write caught:\n{proc.tail()}"
            in_commits = listing(commits)
            markers = sum(1 for n in in_commits if not n.startswith("."))
            if markers < snapshots:
                time.sleep(0.001)
                continue
            if not snapshots and markers:
                raise AssertionError(f"the first snapshot came before a {where} write was "
                                     f"caught:\n{proc.tail()}")
            names = in_commits if watched == commits else listing(watched)
            seen = {n for n in names if n.endswith(".tmp")}
            if not seen:
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            wait_until(lambda: stopped(proc.pid), 10, "SIGSTOP to take effect")
            if seen & temps():
                return seen  # frozen mid-write: fire() SIGKILLs it as it is
            os.kill(proc.pid, signal.SIGCONT)
        return None
    what = "before the first snapshot" if not snapshots else f"after {snapshots} markers"
    return KillPoint(f"mid-write of a {where} {what}", wait)


def crash_until_done(cmd: list[str], disk: Disk, points: list[KillPoint], total_rows: int,
                     log_dir: Path, procs: list[Proc]) -> tuple[list[str], Proc]:
    """Run `cmd`, SIGKILL it at each point in turn, restart it with the same command, until
    a run exits by itself; that run must exit 0. Returns the points where it was killed and
    the final run."""
    killed: list[str] = []
    for i, point in enumerate(points):
        proc = Proc(cmd, log_dir, f"run{i}")
        procs.append(proc)
        if point.fire(proc, disk, total_rows):
            killed.append(point.name)
            continue
        rc = proc.wait()
        assert rc == 0, f"run {i} ended by itself with {rc}:\n{proc.tail()}"
        return killed, proc
    final = Proc(cmd, log_dir, "final")
    procs.append(final)
    rc = final.wait()
    assert rc == 0, f"the restarted run exited with {rc}:\n{final.tail()}"
    return killed, final


# ---------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------


def online_values(repo: Path, users: list[str]) -> dict[str, tuple]:
    store = FeatureStore(repo_path=str(repo))
    got = store.get_online_features(features=store.get_feature_service(SERVICE),
                                    entity_rows=[{"user_id": u} for u in users]).to_dict()
    return {u: tuple(got[n][i] for n in NAMES) for i, u in enumerate(got["user_id"])}


def assert_same_online(a: dict[str, tuple], b: dict[str, tuple]) -> None:
    assert sorted(a) == sorted(b)
    diff = [(u, a[u], b[u]) for u in sorted(a)
            if not all(close(x, y) for x, y in zip(a[u], b[u], strict=True))]
    assert not diff, f"{len(diff)} users' online values differ (crashed, uninterrupted): " \
                     f"{diff[:5]}"


def last_rows(repo: Path) -> dict[str, tuple]:
    return {k: rows[-1][1] for k, rows in offline_rows(repo).items()}


def last_row_times(repo: Path) -> dict[str, int]:
    return {k: rows[-1][0] for k, rows in offline_rows(repo).items()}


def assert_frames_equal(crashed: pd.DataFrame, clean: pd.DataFrame) -> None:
    """The committed offline views are equal; on failure, say which rows differ."""
    ident = ["user_id", "event_timestamp"]
    dup = crashed[crashed.duplicated(ident, keep=False)]
    assert dup.empty, f"{len(dup)} duplicated (user, time) rows after the crashes:\n{dup[:10]}"
    if len(crashed) != len(clean) or not crashed[ident].equals(clean[ident]):
        a = set(map(tuple, crashed[ident].itertuples(index=False)))
        b = set(map(tuple, clean[ident].itertuples(index=False)))
        raise AssertionError(
            f"rows: crashed {len(crashed)}, uninterrupted {len(clean)}; only after the "
            f"crashes: {len(a - b)} {sorted(a - b)[:8]}; missing after the crashes: "
            f"{len(b - a)} {sorted(b - a)[:8]}")
    pd.testing.assert_frame_equal(crashed, clean)


def check_keys(repo: Path, events: list[dict], keys: list[str], end: int) -> int:
    """`checks.check_rows` for some keys only (the brute-force reference is quadratic in a
    key's events): their rows up to `end` are the reference's change points."""
    got = offline_rows(repo)
    n = 0
    for key in keys:
        mine = [e for e in events if e["user_id"] == key]
        want = ref.expected_rows(SPEC, mine, end).get(key, [])
        rows = [r for r in got.get(key, []) if r[0] <= end]
        assert [t for t, _ in rows] == [t for t, _ in want], f"row times of {key}"
        for (t, a), (_, b) in zip(rows, want, strict=True):
            assert all(close(x, y) for x, y in zip(a, b, strict=True)), (key, t, a, b)
            n += 1
    return n


def cheap_keys(events: list[dict], most: int = 250, count: int = 40, seed: int = 0) -> list[str]:
    per_key: dict[str, int] = {}
    for e in events:
        per_key[e["user_id"]] = per_key.get(e["user_id"], 0) + 1
    small = sorted(k for k, n in per_key.items() if n <= most)
    return random.Random(seed).sample(small, min(count, len(small)))


def dead_letters(repo: Path) -> list[dict]:
    """The dead-letter file's records by origin; a `future_timestamp` reason says how far
    ahead of the wall clock the event was when read: its number of seconds is left out."""
    out = []
    for d in read_dead_letters(repo / DEAD):
        if d.get("code") == "future_timestamp":
            d = {**d, "reason": re.sub(r"future by \d+ s", "future by N s", d["reason"])}
        out.append(d)
    return sorted(out, key=lambda d: (d["origin"], d["kind"]))


# ---------------------------------------------------------------------------------------
# 1. Replay, SIGKILLed four times
# ---------------------------------------------------------------------------------------

REPLAY_START = datetime(2026, 10, 1, tzinfo=UTC)
REPLAY_KW = dict(start=REPLAY_START, duration=timedelta(hours=6), late_fraction=0.0,
                 jitter_s=0.3, bad_fraction=0.001)


def replay_input(folder: Path, n: int, users: int, seed: int) -> tuple[list[dict], int]:
    """`write_events` JSON lines (with a few malformed ones) split by user into two files
    (two input partitions); returns the good events (reference form) and the bad count."""
    whole = folder.parent / "all_events.jsonl"
    write_events(whole, n, users, seed=seed, **REPLAY_KW)
    items = list(generate_events(n, users, seed=seed, **REPLAY_KW))  # the same rows
    lines = whole.read_text().splitlines()
    assert len(lines) == len(items) == n
    folder.mkdir(parents=True)
    files = [open(folder / f"part-{i}.jsonl", "w") for i in range(2)]  # noqa: SIM115
    try:
        for i, (line, item) in enumerate(zip(lines, items, strict=True)):
            p = i % 2 if isinstance(item, BadLine) else zlib.crc32(item["user_id"].encode()) % 2
            files[p].write(line + "\n")
    finally:
        for f in files:
            f.close()
    good = [as_ref(e) for e in items if not isinstance(e, BadLine)]
    return good, sum(isinstance(e, BadLine) for e in items)


def replay_cmd(repo: Path, events: Path, recovery: Path, flush_rows: int = 200,
               epoch_interval: float = 0.25) -> list[str]:
    return [*CLI, "replay", "--repo", str(repo), "--events", str(events),
            "--recovery-dir", str(recovery), "--quiet", "--epoch-interval", str(epoch_interval),
            "--flush-rows", str(flush_rows), "--batch-size", "100"]


@dataclass
class ReplayBaseline:
    events: Path  # the input folder (two JSON-lines files)
    good: list[dict]  # its valid events, reference form
    n_bad: int
    repo: Path  # an uninterrupted replay of it
    rows: int


@pytest.fixture(scope="module")
def replay_baseline(tmp_path_factory) -> ReplayBaseline:
    """25k events for 300 users (and 25 malformed lines) replayed once, uninterrupted."""
    base = tmp_path_factory.mktemp("replay_baseline")
    events_dir = base / "input" / "events"
    good, n_bad = replay_input(events_dir, 25_000, 300, seed=3)
    assert n_bad > 5
    repo = make_feast_repo(base / "clean")
    clean = Proc(replay_cmd(repo, events_dir, base / "rec_clean"), base / "logs", "clean")
    try:
        assert clean.wait() == 0, clean.tail()
    finally:
        clean.reap()
    nums = summary_numbers(summary_line(clean.stdout()))
    assert nums["consumed"] == 25_000 and nums["rejected"] == n_bad and nums["late"] == 0
    assert nums["corrections"] == 0 and nums["duplicates"] == 0
    assert len(offline_frame(repo)) == nums["rows"]
    return ReplayBaseline(events_dir, good, n_bad, repo, nums["rows"])


def assert_replay_equals_baseline(repo: Path, b: ReplayBaseline) -> None:
    """Offline rows (committed view), online values and dead letters of `repo` are the
    uninterrupted replay's; a sample of keys is checked against the reference too."""
    assert_frames_equal(offline_frame(repo), offline_frame(b.repo))
    end = max(e["event_timestamp"] for e in b.good)
    assert check_keys(repo, b.good, cheap_keys(b.good), end) > 500

    users = [*sorted({e["user_id"] for e in b.good}), "never_seen"]
    online = online_values(repo, users)
    assert_same_online(online, online_values(b.repo, users))
    last = last_rows(repo)
    assert_same_online({u: online[u] for u in last}, last)

    dead = dead_letters(repo)
    assert len(dead) == b.n_bad and {d["kind"] for d in dead} == {"rejected"}
    assert dead == dead_letters(b.repo)


def test_replay_sigkilled_at_four_points_equals_uninterrupted(replay_baseline, tmp_path, procs):
    repo = make_feast_repo(tmp_path / "crashed")
    disk = Disk(repo)
    points = [after_rows(0.2), after_new_marker(0.45), after_new_part(0.7),
              after_final_commit()]
    killed, _ = crash_until_done(replay_cmd(repo, replay_baseline.events, tmp_path / "rec"),
                                 disk, points, replay_baseline.rows, tmp_path / "logs", procs)
    print(f"replay killed {killed}")
    assert len(killed) >= 3, killed
    assert_replay_equals_baseline(repo, replay_baseline)
    assert disk.temps() == [], f"hidden temp files left behind: {disk.temps()}"


def test_replay_sigkilled_mid_write_leaves_no_temp_file(replay_baseline, tmp_path, procs):
    """Killed while a part file is being written (frozen with SIGSTOP while its hidden temp
    exists, then SIGKILLed): before the first snapshot (that attempt's writer is never
    resumed) and after one (the resumed writer rolls back)."""
    repo = make_feast_repo(tmp_path / "crashed")
    disk = Disk(repo)
    points = [while_writing("part", snapshots=0), while_writing("part", snapshots=1)]
    # a part per batch, a snapshot every 2 s: many part writes before the first snapshot
    cmd = replay_cmd(repo, replay_baseline.events, tmp_path / "rec", flush_rows=1,
                     epoch_interval=2.0)
    killed, _ = crash_until_done(cmd, disk, points, replay_baseline.rows, tmp_path / "logs",
                                 procs)
    print(f"replay killed {killed}")
    assert killed == [p.name for p in points]
    assert_replay_equals_baseline(repo, replay_baseline)
    assert disk.temps() == [], f"hidden temp files left behind: {disk.temps()}"


def test_replay_sigkilled_mid_marker_write_leaves_no_temp_file(replay_baseline, tmp_path,
                                                               procs):
    """Killed twice while a stage marker is being written (frozen with SIGSTOP while its
    hidden temp exists, then SIGKILLed); each restart resumes the writer from the snapshot
    before and must not leave that half-written marker behind."""
    repo = make_feast_repo(tmp_path / "crashed")
    disk = Disk(repo)
    points = [while_writing("marker", snapshots=3), while_writing("marker", snapshots=3)]
    cmd = replay_cmd(repo, replay_baseline.events, tmp_path / "rec", epoch_interval=0.1)
    killed, _ = crash_until_done(cmd, disk, points, replay_baseline.rows, tmp_path / "logs",
                                 procs)
    print(f"replay killed {killed}")
    assert killed == [p.name for p in points]
    assert_replay_equals_baseline(repo, replay_baseline)
    assert disk.temps() == [], f"hidden temp files left behind: {disk.temps()}"


# ---------------------------------------------------------------------------------------
# 2. Live (Kafka), SIGKILLed four times
# ---------------------------------------------------------------------------------------

MALFORMED = [b"{oops", b"not json at all", b'{"event_id": 1}', b"[1, 2, 3]",
             b'{"event_id": 5, "user_id": "u_bad", "event_type": "click", "amount": 1.0, '
             b'"category": "books", "event_timestamp": "2026-01-01T00:00:00Z"}']


def live_cmd(kafka_mock, topic: str, repo: Path, recovery: Path) -> list[str]:
    return [*CLI, "run", "--repo", str(repo), "--source", f"kafka://{kafka_mock.bootstrap}/{topic}",
            "--recovery-dir", str(recovery), "--epoch-interval", "0.5", "--quiet",
            "--stop-at-end", "--flush-rows", "300", "--batch-size", "200",
            "--idle-exit", "120"]


def test_live_sigkilled_at_four_points_equals_uninterrupted(kafka_mock, tmp_path, procs):
    topic = kafka_mock.new_topic("crash")
    events = stream(15_000, 400, seed=41, late_fraction=0.0, jitter_s=0.3)
    items = [(e["user_id"].encode(), as_json(e), None) for e in events]
    for k, value in enumerate(MALFORMED):  # spread over the stream and the partitions
        items.insert((k + 1) * len(items) // (len(MALFORMED) + 1), (b"u_bad", value, k % 4))
    where = kafka_mock.produce(topic, items)
    bad_origins = sorted(f"{topic}/{p}/{o}" for (_, v, _), (p, o) in zip(items, where,
                                                                            strict=True)
                         if v in MALFORMED)
    assert len(bad_origins) == len(MALFORMED)

    clean_repo = make_feast_repo(tmp_path / "clean")
    crash_repo = make_feast_repo(tmp_path / "crashed")
    clean = Proc(live_cmd(kafka_mock, topic, clean_repo, tmp_path / "rec_clean"),
                 tmp_path / "logs", "clean")
    procs.append(clean)
    assert clean.wait() == 0, clean.tail()
    line = summary_line(clean.stdout())
    nums = summary_numbers(line)
    assert nums["consumed"] == len(items) and nums["rejected"] == len(MALFORMED), line
    assert nums["late"] == nums["corrections"] == nums["duplicates"] == 0, line
    total = nums["rows"]

    disk = Disk(crash_repo)
    points = [after_rows(0.15), after_new_marker(0.4), after_new_part(0.6),
              after_new_marker(0.8)]
    killed, final = crash_until_done(live_cmd(kafka_mock, topic, crash_repo, tmp_path / "rec"),
                                     disk, points, total, tmp_path / "logs", procs)
    print(f"live run killed {killed}")
    assert len(killed) >= 3, killed
    assert "stopped: end of input" in summary_line(final.stdout()), final.tail()

    # Offline: up to the newest event time, equal to the uninterrupted run and the reference.
    good = [as_ref(e) for e in events]
    end = max(e["event_timestamp"] for e in good)
    crashed_frame, clean_frame = offline_frame(crash_repo), offline_frame(clean_repo)
    upto = lambda df: df[df["event_timestamp"] <= end].reset_index(drop=True)  # noqa: E731
    assert_frames_equal(upto(crashed_frame), upto(clean_frame))
    assert crashed_frame["event_timestamp"].max() <= end + 600_000_000
    assert check_keys(crash_repo, good, cheap_keys(good), end) > 500

    # Online: the latest value of every user, as in the uninterrupted run.
    # (a user whose last row is past the newest event time decayed on a live watermark
    # that moved on: that depends on the wall clock, so it is left out)
    users = sorted({e["user_id"] for e in good})
    online, clean_online = online_values(crash_repo, users), online_values(clean_repo, users)
    last = last_rows(crash_repo)
    newest = [last_row_times(crash_repo), last_row_times(clean_repo)]
    settled = [u for u in users if all(u in t and t[u] <= end for t in newest)]
    assert len(settled) >= 0.9 * len(users)
    assert_same_online({u: online[u] for u in settled}, {u: clean_online[u] for u in settled})
    assert_same_online({u: online[u] for u in last}, last)

    # Dead letters: every malformed message exactly once, at its partition/offset.
    dead = dead_letters(crash_repo)
    assert [d["origin"] for d in dead] == bad_origins, [d["origin"] for d in dead]
    assert {d["kind"] for d in dead} == {"rejected"}
    assert sorted(d["payload"].encode() for d in dead) == sorted(MALFORMED)
    assert dead == dead_letters(clean_repo)
    assert disk.temps() == [], disk.temps()


def dlq_messages(consumer, topic: str) -> int:
    """Messages in a topic now (sum of its partitions' high watermarks)."""
    from confluent_kafka import TopicPartition

    md = consumer.list_topics(topic, timeout=10)
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
               for p in md.topics[topic].partitions)


IDENTICAL = ("kind", "code", "reason", "origin", "topic", "partition", "offset", "key", "value")


def check_dead_letter_topic(dead: list[dict], bad_origins: list[str]) -> dict[str, int]:
    """The Kafka dead-letter contract after restarts (README, "Live runs"): every dead
    letter is there; a copy sent again is identical to the first but for its session
    header (consumers dedupe on origin); a session never sends one twice (a restart from a
    snapshot resumes the session and sends nothing again). Returns origin -> copies."""
    origins = [d["origin"] for d in dead]
    assert sorted(set(origins)) == bad_origins, origins
    first: dict[str, dict] = {}
    for d in dead:
        same = {k: d.get(k) for k in IDENTICAL}
        assert first.setdefault(d["origin"], same) == same, (first[d["origin"]], same)
    per_session: dict[str, list[str]] = {}
    for d in dead:
        per_session.setdefault(d["session"], []).append(d["origin"])
    twice = {s: sorted({o for o in os_ if os_.count(o) > 1}) for s, os_ in per_session.items()}
    assert not any(twice.values()), f"a session sent a dead letter twice: {twice}"
    return {o: origins.count(o) for o in sorted(set(origins))}


def test_kafka_dead_letter_sink_resumes_its_session_and_sends_nothing_twice(kafka_mock,
                                                                           tmp_path):
    """The sink's own mechanics, a "kill" being a partition abandoned without a snapshot:
    resumed from a snapshot it skips what was sent after it (and what it still had to skip);
    with the recovery directory it adopts a session killed before its first snapshot;
    without, that first window is sent again (in a new session)."""
    from feast_bytewax.ingest.validate import validate_item
    from feast_bytewax.kafka.deadletters import KafkaDeadLetterSink, read_dead_letter_topic

    def letters(topic: str, n: int) -> list[tuple[str, object]]:
        return [("input", validate_item(b"{oops", f"{topic}/0/{i}", 0, 0)) for i in range(n)]

    def sent(dlq: str) -> list[tuple[str, str]]:
        got = read_dead_letter_topic([kafka_mock.bootstrap], dlq)
        return sorted((d["origin"].rsplit("/", 1)[1], d["session"]) for d in got)

    # resumed from snapshots
    dlq = kafka_mock.new_topic("sink-dlq")
    r = letters("in", 6)
    sink = KafkaDeadLetterSink([kafka_mock.bootstrap], dlq)
    other = sink.build_part("dead_letters", "0", None)  # another flow on the same topic
    other.write_batch(r[2:3])
    a = sink.build_part("dead_letters", "0", None)
    a.write_batch(r[0:2])
    s1 = a.snapshot()
    a.write_batch(r[2:4])  # killed before the next snapshot
    b = sink.build_part("dead_letters", "0", s1)
    b.write_batch(r[2:3])  # the input replayed after s1 ...
    s2 = b.snapshot()  # ... r[3] still to skip
    b.write_batch(r[3:5])  # killed again
    c = sink.build_part("dead_letters", "0", s2)
    c.write_batch(r[3:6])
    mine = [o for o, s in sent(dlq) if s == a.session]
    assert mine == ["0", "1", "2", "3", "4", "5"] and b.session == c.session == a.session
    assert [o for o, s in sent(dlq) if s == other.session] == ["2"]

    # killed before the first snapshot, with the recovery directory
    dlq = kafka_mock.new_topic("sink-dlq")
    sink = KafkaDeadLetterSink([kafka_mock.bootstrap], dlq, recovery=tmp_path / "rec")
    (tmp_path / "rec").mkdir()
    sink.build_part("dead_letters", "0", None).write_batch(r[0:2])
    sink.build_part("dead_letters", "0", None).write_batch(r[0:3])
    last = sink.build_part("dead_letters", "0", None)
    last.write_batch(r[0:4])
    assert sent(dlq) == [(str(i), last.session) for i in range(4)]
    assert sink.sidecar("dead_letters", "0").exists()

    # without it: the first window is sent again, in another session
    dlq = kafka_mock.new_topic("sink-dlq")
    sink = KafkaDeadLetterSink([kafka_mock.bootstrap], dlq)
    first = sink.build_part("dead_letters", "0", None)
    first.write_batch(r[0:1])
    again = sink.build_part("dead_letters", "0", None)
    again.write_batch(r[0:2])
    assert sent(dlq) == sorted([("0", first.session), ("0", again.session),
                                ("1", again.session)])


def test_live_dead_letter_topic_sigkilled_holds_each_dead_letter_once(
        kafka_mock, tmp_path, procs):
    """With --dead-letter-topic: killed right after a dead letter reached the topic, three
    times: after the first and the third (early in a run: before the sink's first snapshot
    is committed, the window a restart cannot resume from without the recovery directory),
    and after the last malformed message's (later: the restart resumes the sink's session).
    Restarted until done: every dead letter is in the topic once, in one session (the
    restarts before the sink's first snapshot adopt it from the recovery directory)."""
    from confluent_kafka import Consumer, TopicPartition

    from feast_bytewax.kafka.deadletters import read_dead_letter_topic

    topic, dlq = kafka_mock.new_topic("crash"), kafka_mock.new_topic("crash-dlq")
    events = stream(30_000, 300, seed=43, late_fraction=0.0, jitter_s=0.3)
    items = [(e["user_id"].encode(), as_json(e), None) for e in events]
    for k, value in enumerate(MALFORMED):
        items.insert((k + 1) * len(items) // (len(MALFORMED) + 1), (b"u_bad", value, k % 4))
    where = kafka_mock.produce(topic, items)
    bad_origins = sorted(f"{topic}/{p}/{o}" for (_, v, _), (p, o) in zip(items, where,
                                                                            strict=True)
                         if v in MALFORMED)
    last = next(f"{topic}/{p}/{o}" for (_, v, _), (p, o) in zip(items, where, strict=True)
                if v is MALFORMED[-1])
    repo = make_feast_repo(tmp_path / "repo")
    cmd = [*live_cmd(kafka_mock, topic, repo, tmp_path / "rec"), "--dead-letter-topic", dlq]
    consumer = Consumer({"bootstrap.servers": kafka_mock.bootstrap, "group.id": "crash-probe"})
    reader = Consumer({"bootstrap.servers": kafka_mock.bootstrap, "group.id": "crash-reader",
                       "enable.auto.commit": "false", "fetch.wait.max.ms": 2})
    reader.assign([TopicPartition(dlq, p, 0)
                   for p in consumer.list_topics(dlq, timeout=10).topics[dlq].partitions])
    origins: set[str] = set()
    try:
        def after_dead_letters(n: int) -> KillPoint:
            def wait(proc: Proc, disk: Disk, total: int):
                return wait_until(lambda: dlq_messages(consumer, dlq) >= n, RUN_TIMEOUT_S,
                                  f"{n} dead letters in {dlq}", proc, every=0.002)
            return KillPoint(f"right after dead letter #{n} was acknowledged", wait)

        def arrived(origin: str) -> bool:
            for m in reader.consume(100, 0):
                if m.error() is None:
                    origins.update(v.decode() for k, v in m.headers() or ()
                                   if k == "feast_bytewax.origin")
            return origin in origins

        def after_dead_letter_of(origin: str) -> KillPoint:
            def wait(proc: Proc, disk: Disk, total: int):
                return wait_until(lambda: arrived(origin), RUN_TIMEOUT_S,
                                  f"the dead letter of {origin} in {dlq}", proc, every=0.002)
            return KillPoint(f"right after the dead letter of {origin} was acknowledged",
                             wait)

        points = [after_dead_letters(1), after_dead_letters(3), after_dead_letter_of(last)]
        killed, _ = crash_until_done(cmd, Disk(repo), points, 0, tmp_path / "logs", procs)
    finally:
        consumer.close()
        reader.close()
    print(f"dead-letter-topic run killed {killed}")
    assert len(killed) == 3, killed
    good = [as_ref(e) for e in events]
    assert check_keys(repo, good, cheap_keys(good, count=20), max(e["event_timestamp"]
                                                                   for e in good)) > 200
    dead = read_dead_letter_topic([kafka_mock.bootstrap], dlq)
    copies = check_dead_letter_topic(dead, bad_origins)
    print(f"dead letters: {len(dead)} messages, {len({d['session'] for d in dead})} "
          f"session(s); copies per origin: {copies}")
    # under --recovery-dir the topic holds each one once (README, "Live runs"): a restart
    # before the sink's first snapshot adopts the killed run's session from the directory
    assert all(n == 1 for n in copies.values()), copies
    assert len({d["session"] for d in dead}) == 1


# ---------------------------------------------------------------------------------------
# 3./4. A real-time stream: the outage is not stream time
# ---------------------------------------------------------------------------------------

RATE = 200  # events/s
RT_USERS = 100
JITTER_S = 1.5  # inside the default 5 s watermark delay
OUTAGE_S = 30.0


class RealTimeProducer(threading.Thread):
    """Produces RATE events/s stamped with the wall clock (minus a jitter < the watermark
    delay), keyed by user, until `stop()`; `events` holds what was delivered."""

    def __init__(self, kafka_mock, topic: str, seed: int, rate: int = RATE) -> None:
        super().__init__(name="realtime-producer", daemon=True)
        self.kafka_mock, self.topic, self.rate = kafka_mock, topic, rate
        self.rng = random.Random(seed)
        self.events: list[dict] = []
        self.failed: list[str] = []
        self._halt = threading.Event()

    def event(self, eid: int) -> dict:
        r = self.rng
        kind = r.choices(["view", "purchase", "login_ok", "login_failed"], [6, 2, 1, 1])[0]
        return {
            "event_id": eid,
            "user_id": f"rt{r.randrange(RT_USERS):03d}",
            "event_type": kind,
            "amount": round(r.lognormvariate(3.0, 0.8), 2) if kind == "purchase" else 0.0,
            "category": r.choice(CATEGORIES) if kind in ("view", "purchase") else "",
            "event_timestamp": datetime.now(UTC) - timedelta(seconds=r.uniform(0, JITTER_S)),
        }

    def run(self) -> None:
        producer = self.kafka_mock.producer()

        def delivered(err, msg):
            if err is not None:
                self.failed.append(str(err))

        t0, sent = time.monotonic(), 0
        while not self._halt.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while sent < due:
                e = self.event(sent)
                while True:
                    try:
                        producer.produce(self.topic, key=e["user_id"].encode(),
                                         value=as_json(e), on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.05)
                self.events.append(e)
                sent += 1
            producer.poll(0)
            time.sleep(0.01)
        left = producer.flush(30)
        if left:
            self.failed.append(f"{left} messages not delivered")

    def stop(self) -> list[dict]:
        self._halt.set()
        self.join(60)
        assert not self.is_alive() and not self.failed, self.failed
        return self.events




def realtime_cmd(kafka_mock, topic: str, repo: Path, recovery: Path, port: int,
                 epoch_interval: float = 0.5) -> list[str]:
    return [*CLI, "run", "--repo", str(repo), "--source", f"kafka://{kafka_mock.bootstrap}/{topic}",
            "--recovery-dir", str(recovery), "--epoch-interval", str(epoch_interval), "--quiet",
            "--idle-exit", "5", "--metrics-port", str(port)]


def consuming(proc: Proc, port: int, timeout: float = 120.0) -> float:
    """Wait until the run consumed something; returns when (monotonic)."""
    wait_until(lambda: (metric(port, "feast_bytewax_consumed_total") or 0) > 0, timeout,
               "the run to consume", proc, every=0.1)
    assert proc.alive(), proc.tail()
    return time.monotonic()


def outage_is_not_stream_time(kafka_mock, tmp_path: Path, procs: list[Proc], sig: int) -> None:
    """A live run with recovery on a real-time stream (RATE events/s stamped with the wall
    clock, disorder < the watermark delay) is stopped by `sig` ~10 s after it started
    consuming, stays down OUTAGE_S while events keep coming, and is restarted with the same
    command; it ends by itself (--idle-exit 5) once production stops. The restart reads the
    backlog on event time: nothing late, no correction, every row the reference's. (Before
    066abbf the outage moved the watermark: ~2300 of 10k events became corrections.)"""
    topic = kafka_mock.new_topic("realtime")
    repo = make_feast_repo(tmp_path / "repo")
    disk = Disk(repo)
    logs = tmp_path / "logs"
    producer = RealTimeProducer(kafka_mock, topic, seed=sig)
    producer.start()
    try:
        port = free_port()
        first = Proc(realtime_cmd(kafka_mock, topic, repo, tmp_path / "rec", port), logs, "first")
        procs.append(first)
        since = consuming(first, port)
        wait_until(lambda: disk.markers(), 60, "a first commit", first, every=0.05)
        time.sleep(max(0.0, since + 10.0 - time.monotonic()))
        assert first.signal(sig), first.tail()
        if sig == signal.SIGTERM:  # with recovery, SIGTERM aborts (a restart resumes)
            assert first.p.returncode == 0, first.tail()
            out = first.stdout()
            assert "SIGTERM: aborted" in out, first.tail()
            nums = summary_numbers(summary_line(out))
            assert nums["late"] == nums["corrections"] == 0, out
        else:
            assert first.p.returncode == -signal.SIGKILL
        time.sleep(OUTAGE_S)  # the outage: events keep coming

        port = free_port()
        second = Proc(realtime_cmd(kafka_mock, topic, repo, tmp_path / "rec", port), logs,
                      "second")
        procs.append(second)
        since = consuming(second, port)
        time.sleep(max(0.0, since + 12.0 - time.monotonic()))  # caught up, then live again
        assert second.alive(), second.tail()
    finally:
        events = producer.stop()
    assert second.wait() == 0, second.tail()
    out = second.stdout()
    line = summary_line(out)
    nums = summary_numbers(line)
    assert "no record for 5 s" in line, line
    assert nums["late"] == 0, f"events counted late after a {OUTAGE_S:.0f} s outage: {line}"
    assert nums["corrections"] == 0, line
    assert nums["rejected"] == nums["duplicates"] == 0, line
    assert nums["consumed"] == nums["processed"] > RATE * OUTAGE_S, line
    assert list(read_dead_letters(repo / DEAD)) == []

    good = [as_ref(e) for e in events]
    end = max(e["event_timestamp"] for e in good)
    assert check_rows(repo, good, end=end) > 0.2 * len(good)
    users = sorted({e["user_id"] for e in good})
    last = last_rows(repo)
    assert_same_online(online_values(repo, users), last)
    assert disk.temps() == [], disk.temps()


def test_outage_after_sigkill_is_not_stream_time(kafka_mock, tmp_path, procs):
    outage_is_not_stream_time(kafka_mock, tmp_path, procs, signal.SIGKILL)


def test_outage_after_sigterm_is_not_stream_time(kafka_mock, tmp_path, procs):
    outage_is_not_stream_time(kafka_mock, tmp_path, procs, signal.SIGTERM)

