"""The live flow on librdkafka's mock Kafka cluster: generated events as JSON messages (key =
user_id) -> `feast-bytewax run` -> Feast (SQLite online, parquet-folder offline), checked row
by row against the brute-force reference (tests/reference.py); rejected input and late
events in their Kafka topics with their partition/offset and the original bytes.

Arrival order is only defined per Kafka partition, so:
- the four-partition run uses a watermark delay longer than the whole stream: no event can be
  late whatever the interleaving, and every row is exactly the reference's;
- the late-event run puts every message on one partition, so the arrival order is the
  produced order and `reference.arrival_model` (per-shard watermarks) predicts the late set.

Every run stops by itself (`--max-events`, with `--idle-exit` as a backstop) and has a
subprocess timeout or a bounded input.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feast_bytewax.config import LiveConfig
from feast_bytewax.dataflow.live import run_live
from feast_bytewax.kafka.deadletters import read_dead_letter_topic
from tests import reference as ref
from tests.conftest import make_feast_repo
from tests.e2e.checks import (
    as_json,
    as_ref,
    check_rows,
    free_port,
    metric,
    stream,
    summary_numbers,
)

pytestmark = pytest.mark.e2e



# ---------------------------------------------------------------------------------------
# Four partitions, the real command
# ---------------------------------------------------------------------------------------


def test_cli_run_four_partitions_two_workers_equals_reference(kafka_mock, tmp_path):
    repo = make_feast_repo(tmp_path / "repo")
    topic, dlq = kafka_mock.new_topic("events"), kafka_mock.new_topic("dlq")
    events = stream(3000, 80, seed=21, late_fraction=0.0, jitter_s=1.0)
    where = kafka_mock.produce(topic, [(e["user_id"].encode(), as_json(e), None)
                                       for e in events])
    assert len({p for p, _ in where}) == 4  # keyed by user over the topic's 4 partitions
    proc = subprocess.run(
        [sys.executable, "-m", "feast_bytewax.cli.main", "run",
         "--source", f"kafka://{kafka_mock.bootstrap}/{topic}", "--repo", str(repo),
         "--shards", "4", "--watermark-delay", "7200", "--allowed-lateness", "0",
         "--batch-size", "100", "--dead-letter-topic", dlq, "--quiet", "--workers", "2",
         "--max-events", str(len(events)), "--idle-exit", "30"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = proc.stdout.strip().splitlines()[0]
    nums = summary_numbers(line)
    assert nums["consumed"] == nums["processed"] == len(events), line
    assert nums["late"] == nums["rejected"] == 0, line
    assert f"read {len(events)} records" in line  # stopped by --max-events, not idling
    n = check_rows(repo, [as_ref(e) for e in events])
    assert n == nums["rows"] == nums["pushed_offline"]
    assert read_dead_letter_topic([kafka_mock.bootstrap], dlq) == []


# ---------------------------------------------------------------------------------------
# One partition: late events, wall clock, metrics, freshness SLO
# ---------------------------------------------------------------------------------------

DELAY_S = 5.0


def test_one_partition_late_events_metrics_and_slo(kafka_mock, tmp_path, caplog):
    repo = make_feast_repo(tmp_path / "repo")
    topic = kafka_mock.new_topic("events")
    dlq, late_topic = kafka_mock.new_topic("dlq"), kafka_mock.new_topic("late")
    events = stream(2500, 40, seed=5, late_fraction=0.04, jitter_s=0.2,
                    late_delay_s=(60.0, 300.0))
    where = kafka_mock.produce(topic, [(e["user_id"].encode(), as_json(e), 0) for e in events])
    assert [o for _, o in where] == list(range(len(events)))
    port = free_port()
    opts = LiveConfig(
        source=f"kafka://{kafka_mock.bootstrap}/{topic}", repo=repo, shards=4,
        watermark_delay=DELAY_S, allowed_lateness=0.0, batch_size=50, idle_timeout=0.2,
        dead_letter_topic=dlq, late_topic=late_topic, metrics_port=port,
        freshness_slo=1.0, max_events=len(events), idle_exit=30.0,
    )
    caplog.set_level("INFO")
    result = run_live(opts)
    stats = result.stats
    assert stats.consumed == len(events) and stats.rejected == 0
    assert stats.balanced(), stats.summary()
    assert stats.late > 0

    # Late events: in the late topic, each with the partition/offset it was read from.
    dead = read_dead_letter_topic([kafka_mock.bootstrap], late_topic)
    assert read_dead_letter_topic([kafka_mock.bootstrap], dlq) == []
    assert len(dead) == stats.late and {d["kind"] for d in dead} == {"late"}
    late_idx = set()
    for d in dead:
        assert d["topic"] == topic and d["partition"] == "0"
        i = int(d["offset"])
        assert d["record"]["payload"]["event_id"] == events[i]["event_id"]
        assert d["origin"] == f"{topic}/0/{i}" and d["code"] and d["reason"]
        late_idx.add(i)
    # ... and only ones the partition's own watermark makes late: the stream's watermark is
    # the minimum over the topic's partitions, never ahead of this one's (until the three
    # empty ones step aside as idle, it is held back and nothing is late).
    good = [as_ref(e) for e in events]
    _, own = ref.arrival_model(good, int(DELAY_S * 1e6), 0)
    assert late_idx <= own
    assert len(late_idx) > 0.5 * len(own) > 0.5 * 0.5 * 0.04 * len(events)

    # Rows: exactly the reference with those events left out.
    visible = {i: (None if i in late_idx else e["event_timestamp"]) for i, e in enumerate(good)}
    assert check_rows(repo, good, visible) == stats.rows

    # Freshness: events are minutes old, so the 1 s SLO is breached, loudly.
    assert result.slo_breaches >= 1 and result.freshness_p99_s > 60
    assert any("FRESHNESS SLO BREACH" in r.getMessage() for r in caplog.records)

    # Prometheus: counters, freshness histogram, Bytewax's per-partition lag.
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in ("feast_bytewax_consumed_total", "feast_bytewax_late_total",
                 "feast_bytewax_rows_online_total", "feast_bytewax_push_seconds_count",
                 "feast_bytewax_freshness_seconds_count",
                 "feast_bytewax_freshness_since_arrival_seconds_count",
                 "feast_bytewax_freshness_slo_breaches_total",
                 'feast_bytewax_dead_letters_produced_total{kind="late"}'):
        assert re.search(rf"^{re.escape(name)}\S* [1-9]", text, re.M), name
    lag = re.findall(r'^feast_bytewax_kafka_lag{(.*)} (\S+)$', text, re.M)
    lag = {labels: float(v) for labels, v in lag if f'topic="{topic}"' in labels}
    assert len(lag) == 4 and set(lag.values()) == {0.0}  # every partition read to its end
    assert result.stop_reason == f"read {len(events)} records (max {len(events)})"


# ---------------------------------------------------------------------------------------
# Malformed input and poison messages
# ---------------------------------------------------------------------------------------


def bad_messages(now: datetime) -> list[tuple[str, bytes | None]]:
    """(expected reason code, raw value) of every kind of bad input."""
    ok = {"event_id": 1, "user_id": "u_bad", "event_type": "purchase", "amount": 12.5,
          "category": "books", "event_timestamp": (now - timedelta(minutes=5)).isoformat()}

    def variant(**kw) -> bytes:
        d = {**ok, **kw}
        return json.dumps({k: v for k, v in d.items() if v is not ...}).encode()

    return [
        ("bad_json", variant()[:30]),
        ("not_object", b"[1, 2, 3]"),
        ("missing_field", variant(user_id=...)),
        ("missing_field", variant(amount=None)),
        ("bad_type", variant(amount="12.5")),
        ("bad_type", variant(event_id=1.5)),
        ("bad_type", variant(user_id=42)),
        ("empty_field", variant(user_id="")),
        ("unknown_event_type", variant(event_type="click")),
        ("negative_amount", variant(amount=-3.0)),
        ("non_finite_amount", variant()[:-1] + b', "amount": NaN}'),
        ("naive_timestamp", variant(event_timestamp="2026-11-25T10:00:00")),
        ("future_timestamp", variant(event_timestamp=(now + timedelta(days=3650)).isoformat())),
        ("bad_timestamp", variant(event_timestamp="not-a-time")),
        ("bad_timestamp", variant(event_timestamp="0001-01-01T00:00:00+00:00")),
        # poison: not text, lone surrogates (used to crash routing), tombstone, empty, deep
        ("bad_json", b"\xff\xfe" + variant()),
        ("bad_json", variant(user_id="\ud800")),
        ("bad_json", variant().replace(b'"u_bad"', b'"\xed\xa0\x80"')),
        ("bad_json", None),
        ("bad_json", b""),
        ("bad_json", b"[" * 100_000),
    ]


def test_malformed_input_is_dead_lettered_and_nothing_is_lost(kafka_mock, tmp_path):
    repo = make_feast_repo(tmp_path / "repo")
    topic, dlq = kafka_mock.new_topic("events"), kafka_mock.new_topic("dlq")
    good = stream(600, 30, seed=9, late_fraction=0.0)
    bad = bad_messages(datetime.now(UTC))
    items = [(e["user_id"].encode(), as_json(e), None) for e in good[:300]]
    items += [(b"u_bad", value, i % 4) for i, (_, value) in enumerate(bad[:10])]
    # The rest of the bad ones in the middle of partition 2, good events on both sides.
    items += [(e["user_id"].encode(), as_json(e), 2) for e in good[300:450]]
    items += [(b"u_bad", value, 2) for _, value in bad[10:]]
    items += [(e["user_id"].encode(), as_json(e), 2) for e in good[450:]]
    where = kafka_mock.produce(topic, items)
    bad_at = {}  # (partition, offset) -> (code, value)
    n_good = 0
    for (_, value, _), pos in zip(items, where, strict=True):
        code = next((c for c, v in bad if v is value), None)
        if code is None:
            n_good += 1
        else:
            bad_at[pos] = (code, value)
    assert len(bad_at) == len(bad) and n_good == len(good)

    opts = LiveConfig(
        source=f"kafka://{kafka_mock.bootstrap}/{topic}", repo=repo, shards=4,
        watermark_delay=7200.0, dead_letter_topic=dlq, max_events=len(items), idle_exit=30.0,
    )
    result = run_live(opts)
    stats = result.stats
    assert stats.consumed == len(items)
    assert stats.consumed == stats.processed + stats.late + stats.rejected
    assert (stats.processed, stats.late, stats.rejected) == (len(good), 0, len(bad))

    dead = read_dead_letter_topic([kafka_mock.bootstrap], dlq)
    assert len(dead) == len(bad)
    seen = set()
    for d in dead:
        pos = (int(d["partition"]), int(d["offset"]))
        assert pos in bad_at and pos not in seen, d
        seen.add(pos)
        code, value = bad_at[pos]
        assert d["kind"] == "rejected" and d["topic"] == topic
        assert d["origin"] == f"{topic}/{pos[0]}/{pos[1]}"
        assert d["code"] == code, (d["reason"], value[:80] if value else value)
        assert d["reason"].startswith(code + ":")
        assert d["value"] == value  # the original bytes, exactly (None for a tombstone)
        assert d["key"] == f"{topic}/{pos[0]}".encode()
    # The good events around the poison were all processed: the rows are the reference's.
    assert check_rows(repo, [as_ref(e) for e in good]) == stats.rows


# ---------------------------------------------------------------------------------------
# Bytewax's own runner: python -m bytewax.run dataflows.live / dataflows.replay
# ---------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_bytewax_runner_entry_points(kafka_mock, tmp_path):
    import os

    live_repo = make_feast_repo(tmp_path / "live")
    replay_repo = make_feast_repo(tmp_path / "replay")
    topic, dlq = kafka_mock.new_topic("events"), kafka_mock.new_topic("dlq")
    events = stream(800, 25, seed=33, late_fraction=0.0)
    kafka_mock.produce(topic, [(e["user_id"].encode(), as_json(e), None) for e in events]
                       + [(b"x", b"{oops", 1)])
    env = {**os.environ, "FEAST_BYTEWAX_SOURCE": f"kafka://{kafka_mock.bootstrap}/{topic}",
           "FEAST_BYTEWAX_REPO": str(live_repo), "FEAST_BYTEWAX_SHARDS": "4",
           "FEAST_BYTEWAX_WATERMARK_DELAY": "7200", "FEAST_BYTEWAX_DEAD_LETTER_TOPIC": dlq,
           "FEAST_BYTEWAX_MAX_EVENTS": str(len(events) + 1), "FEAST_BYTEWAX_IDLE_EXIT": "30"}
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.live", "-s", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    check_rows(live_repo, [as_ref(e) for e in events])
    dead = read_dead_letter_topic([kafka_mock.bootstrap], dlq)
    assert [(d["code"], d["value"]) for d in dead] == [("bad_json", b"{oops")]

    path = tmp_path / "events.jsonl"
    path.write_text("".join(as_json(e).decode() + "\n" for e in events))
    env = {**os.environ, "FEAST_BYTEWAX_EVENTS": str(path), "FEAST_BYTEWAX_SHARDS": "4",
           "FEAST_BYTEWAX_REPO": str(replay_repo)}
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.replay", "-s", "30"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    good = [as_ref(e) for e in events]
    visible, late = ref.arrival_model(good, 5_000_000, 600_000_000)
    assert not late
    check_rows(replay_repo, good, visible)


# ---------------------------------------------------------------------------------------
# Recovery and signals: offsets resume exactly; SIGTERM stops cleanly or aborts
# ---------------------------------------------------------------------------------------




def run_until_consumed(cmd: list[str], port: int, want: int, timeout: float = 180.0):
    """Start `feast-bytewax run`, wait until it consumed `want` records, SIGTERM it."""
    import signal
    import time

    proc = subprocess.Popen([*cmd, "--metrics-port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while metric(port, "feast_bytewax_consumed_total") != want:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not consume its input in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def test_recovery_resumes_offsets_and_sigterm_stops(kafka_mock, tmp_path):
    repo = make_feast_repo(tmp_path / "repo")
    topic = kafka_mock.new_topic("events")
    events = stream(2000, 40, seed=17, late_fraction=0.0)
    kafka_mock.produce(topic, [(e["user_id"].encode(), as_json(e), None) for e in events])
    base = [sys.executable, "-m", "feast_bytewax.cli.main", "run", "--repo", str(repo),
            "--source", f"kafka://{kafka_mock.bootstrap}/{topic}", "--shards", "4",
            "--batch-size", "50", "--quiet"]
    rdir = tmp_path / "recovery"
    first = subprocess.run([*base, "--recovery-dir", str(rdir), "--max-events", "700"],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    n1 = summary_numbers(first.stdout)["consumed"]
    assert 700 <= n1 < 2000

    # With recovery, SIGTERM aborts; the resumed run read exactly the rest (no re-reads).
    rc, out, err = run_until_consumed([*base, "--recovery-dir", str(rdir)], free_port(),
                                      2000 - n1)
    assert rc == 0, err[-3000:]
    assert "SIGTERM: aborted" in out and summary_numbers(out)["consumed"] == 2000 - n1

    # Without recovery, SIGTERM ends the input cleanly: everything flushed, counts settled.
    rc, out, err = run_until_consumed([*base, "--no-offline", "--no-online"], free_port(), 2000)
    assert rc == 0, err[-3000:]
    nums = summary_numbers(out)
    assert nums["consumed"] == nums["processed"] == 2000 and "stopped: signal SIGTERM" in out
