"""Scale-out on Bytewax's own cluster (issue 11, item 3): the replay and live flows as 2 and
4 processes (`python -m bytewax.run dataflows.<flow> -i I -a "127.0.0.1:P0;..."`, each one a
real subprocess, on free loopback ports), with the input partitions (parquet parts of a
folder, Kafka partitions) spread over them, give the offline rows (read through the commit
log) and online values of one worker on the same input, equal to the brute-force reference,
and write each bad record to the dead letters once.

The events of every user are spread over all the partitions (round-robin, not keyed), so
each key's events come from several processes and meet in one shard: routing and the
watermark (the minimum over partitions read in other processes) are both exercised.

The dead-letter file sink has one partition (`dataflow.deadletters.DeadLetterSink`,
``parts=1``): whichever worker of the cluster owns it writes every dead letter, routed to
it by Bytewax, so a cluster writes one file, the same as one worker does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore

from feast_bytewax.config import LiveConfig, ReplayConfig
from feast_bytewax.dataflow.deadletters import read_dead_letters
from feast_bytewax.dataflow.live import run_live
from feast_bytewax.dataflow.replay import run_replay
from feast_bytewax.datagen.generate import BadLine
from tests.conftest import make_feast_repo
from tests.e2e.checks import (
    NAMES,
    as_json,
    as_ref,
    check_rows,
    close,
    free_port,
    offline_frame,
    stream,
)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SERVICE = "user_fraud_features"
CLUSTER_TIMEOUT_S = 240


def run_cluster(flow: str, processes: int, env: dict[str, str], epoch_s: int) -> list[str]:
    """`python -m bytewax.run dataflows.<flow>` as `processes` processes of one cluster on
    loopback; waits for all of them, fails with the stderr of any that did not exit 0.
    Returns each process's stderr."""
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    env = {**os.environ, **env}
    procs = [subprocess.Popen([sys.executable, "-m", "bytewax.run", f"dataflows.{flow}",
                               "-s", str(epoch_s), "-i", str(i), "-a", addresses],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    errors: list[str] = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=CLUSTER_TIMEOUT_S)
            errors.append(err)
    finally:
        for p in procs:  # a failed or hung peer: end the ones this test started
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (p, err) in enumerate(zip(procs, errors, strict=True)):
        assert p.returncode == 0, f"process {i} of {processes} exited {p.returncode}:\n" \
                                  f"{err[-3000:]}"
    return errors


def online_values(repo: Path, users: list[str]) -> dict[str, tuple]:
    store = FeatureStore(repo_path=str(repo))
    got = store.get_online_features(features=store.get_feature_service(SERVICE),
                                    entity_rows=[{"user_id": u} for u in users]).to_dict()
    return {u: tuple(got[n][i] for n in NAMES) for i, u in enumerate(got["user_id"])}


def assert_same_online(a: dict[str, tuple], b: dict[str, tuple], what: str) -> None:
    assert sorted(a) == sorted(b)
    diff = [(u, a[u], b[u]) for u in sorted(a)
            if not all(close(x, y) for x, y in zip(a[u], b[u], strict=True))]
    assert not diff, f"{what}: {len(diff)} users' online values differ: {diff[:5]}"


def dead_letters(repo: Path) -> list[dict]:
    """Every dead letter of the repo's default file (and no per-partition files beside it)."""
    path = repo / "data/dead_letters.jsonl"
    assert not list(path.parent.glob("dead_letters.p*.jsonl"))
    return list(read_dead_letters(path))


def assert_each_once(got: list[dict], want: dict[str, str], what: str) -> None:
    """`got` dead letters hold each expected origin -> code exactly once, and nothing else."""
    origins = Counter(d["origin"] for d in got)
    twice = {o: n for o, n in origins.items() if n > 1}
    assert not twice, f"{what}: dead letters written more than once: {twice}"
    assert {d["origin"]: d["code"] for d in got} == want, what


# ---------------------------------------------------------------------------------------
# Replay of a folder of parquet parts: 1 worker vs 2 and 4 processes
# ---------------------------------------------------------------------------------------

PARQUET_PARTS = 6  # more parts than processes, not a multiple of 4: uneven spread
BAD_PARTS = 2


@pytest.fixture(scope="module")
def parts_folder(tmp_path_factory):
    """~4k events of 80 Zipf users over 40 min, as a folder of 6 parquet parts (events dealt
    round-robin: every part is in order within the default delay, every busy user is in
    every part) and 2 JSON-lines parts holding the 2% malformed records. Returns (folder,
    good events, {origin: code} of the bad)."""
    folder = tmp_path_factory.mktemp("cluster") / "events"
    folder.mkdir()
    items = stream(4000, 80, seed=61, late_fraction=0.0, jitter_s=0.4, bad_fraction=0.02)
    good = [x for x in items if not isinstance(x, BadLine)]
    bad_lines = [x for x in items if isinstance(x, BadLine)]
    for p in range(PARQUET_PARTS):
        pq.write_table(pa.Table.from_pylist(good[p::PARQUET_PARTS]),
                       folder / f"part-{p}.parquet")
    bad: dict[str, str] = {}
    for p in range(BAD_PARTS):
        lines = bad_lines[p::BAD_PARTS]
        (folder / f"bad-{p}.jsonl").write_text("\n".join(lines) + "\n")
        bad.update({f"bad-{p}.jsonl:{i + 1}": x.code for i, x in enumerate(lines)})
    top = Counter(e["user_id"] for e in good).most_common(1)[0][1]
    assert len(bad) >= 40 and top > 10 * PARQUET_PARTS  # the hot user is in every part
    return folder, good, bad


@pytest.fixture(scope="module")
def replay_single(parts_folder, tmp_path_factory):
    """The 1-worker replay of the folder: (offline frame, online values), checked against
    the reference."""
    folder, good, bad = parts_folder
    single = make_feast_repo(tmp_path_factory.mktemp("replay-single") / "repo")
    result = run_replay(ReplayConfig(repo=single, events=str(folder)))
    assert result.stats.balanced(), result.stats.summary()
    assert result.stats.late == 0 and result.stats.rejected == len(bad), result.stats.summary()
    check_rows(single, [as_ref(e) for e in good])  # one worker == the reference
    assert_each_once(dead_letters(single), bad, "one worker")
    users = sorted({e["user_id"] for e in good})
    return offline_frame(single), online_values(single, users), users


@pytest.mark.parametrize("processes", [2, 4])
def test_replay_on_processes_equals_one_worker(processes, parts_folder, replay_single,
                                               tmp_path):
    folder, _, bad = parts_folder
    frame, online, users = replay_single
    repo = make_feast_repo(tmp_path / f"p{processes}")
    run_cluster("replay", processes, {"FEAST_BYTEWAX_EVENTS": str(folder),
                                      "FEAST_BYTEWAX_REPO": str(repo)}, epoch_s=30)
    got = offline_frame(repo)
    assert len(got) == len(frame)
    pd.testing.assert_frame_equal(frame, got)
    assert_same_online(online, online_values(repo, users), f"{processes} processes")
    assert_each_once(dead_letters(repo), bad, f"{processes} processes")


# ---------------------------------------------------------------------------------------
# Live Kafka, 4 partitions: 1 worker vs 2 and 4 processes
# ---------------------------------------------------------------------------------------

# No partition goes idle while a run reads: the final watermark is decided by the events
# (a quiet partition's frontier still moves on with the wall clock while it polls nothing,
# by design: rows after the newest event time depend on timing, see `latest_rows`).
LIVE_IDLE_TIMEOUT_S = 120.0


def latest_rows(frame: pd.DataFrame) -> dict[str, tuple[int, tuple]]:
    """Each user's latest offline row: (timestamp, values in NAMES order)."""
    last = frame.groupby("user_id", sort=True).tail(1)
    return {u: (t, tuple(None if pd.isna(v) else v for v in vals))
            for u, t, *vals in last[["user_id", "event_timestamp", *NAMES]]
            .itertuples(index=False, name=None)}


@pytest.fixture(scope="module")
def live_topic(kafka_mock, tmp_path_factory):
    """~3k events of 60 users dealt round-robin over the 4 partitions of a mock topic, 2%
    malformed records in every partition, and the 1-worker run over it (stop at the end),
    checked against the reference. Returns a dict of what the tests compare with."""
    topic = kafka_mock.new_topic("cluster")
    items = stream(3000, 60, seed=67, late_fraction=0.0, jitter_s=0.4, bad_fraction=0.02)
    messages = [(b"bad" if isinstance(x, BadLine) else x["user_id"].encode(),
                 str(x).encode() if isinstance(x, BadLine) else as_json(x), i % 4)
                for i, x in enumerate(items)]
    where = kafka_mock.produce(topic, messages)
    assert len({p for p, _ in where}) == 4
    bad = {f"{topic}/{p}/{o}": x.code for x, (p, o) in zip(items, where, strict=True)
           if isinstance(x, BadLine)}
    assert len({o.split("/")[1] for o in bad}) == 4
    good = [x for x in items if not isinstance(x, BadLine)]
    source = f"kafka://{kafka_mock.bootstrap}/{topic}"
    single = make_feast_repo(tmp_path_factory.mktemp("live-single") / "repo")
    result = run_live(LiveConfig(source=source, repo=single, stop_at_end=True,
                                 idle_timeout=LIVE_IDLE_TIMEOUT_S))
    assert result.stats.consumed == len(items) and result.stats.late == 0, result.summary()
    assert result.stats.rejected == len(bad), result.summary()
    check_rows(single, [as_ref(e) for e in good])
    assert_each_once(dead_letters(single), bad, "one worker")
    users = sorted({e["user_id"] for e in good})
    return {"source": source, "good": good, "bad": bad, "users": users,
            "end": max(as_ref(e)["event_timestamp"] for e in good),
            "frame": offline_frame(single), "online": online_values(single, users)}


# 2 processes stop at the end of their partitions, 4 when their input has been quiet
STOPS = {2: {"FEAST_BYTEWAX_STOP_AT_END": "true"}, 4: {"FEAST_BYTEWAX_IDLE_EXIT": "4"}}


@pytest.mark.parametrize("processes", [2, 4])
def test_live_kafka_on_processes_equals_one_worker(processes, live_topic, tmp_path):
    t = live_topic
    repo = make_feast_repo(tmp_path / f"p{processes}")
    run_cluster("live", processes, {"FEAST_BYTEWAX_SOURCE": t["source"],
                                    "FEAST_BYTEWAX_REPO": str(repo),
                                    "FEAST_BYTEWAX_IDLE_TIMEOUT": str(LIVE_IDLE_TIMEOUT_S),
                                    **STOPS[processes]}, epoch_s=2)
    frame = offline_frame(repo)
    a, b = (f[f["event_timestamp"] <= t["end"]].reset_index(drop=True)
            for f in (t["frame"], frame))
    assert len(b) == len(a)
    pd.testing.assert_frame_equal(a, b)
    # rows after the newest event (a live watermark that moved on with the wall clock while
    # a partition was quiet: timing, not the cluster) hold the reference's value
    check_rows(repo, [as_ref(e) for e in t["good"]])
    # online: every user's value is the run's own latest offline row; and equal to the
    # 1-worker run's for the users whose latest row is not after the newest event in
    # either run (the others depend on how long a partition was quiet: checked above)
    online = online_values(repo, t["users"])
    mine, theirs = latest_rows(frame), latest_rows(t["frame"])
    assert_same_online({u: v for u, (_, v) in mine.items()}, online,
                       f"{processes} processes: online vs own latest offline row")
    settled = [u for u in t["users"] if max(mine[u][0], theirs[u][0]) <= t["end"]]
    assert len(settled) >= 0.8 * len(t["users"]), (len(settled), len(t["users"]))
    assert_same_online({u: t["online"][u] for u in settled}, {u: online[u] for u in settled},
                       f"{processes} processes")
    assert_each_once(dead_letters(repo), t["bad"], f"{processes} processes")
