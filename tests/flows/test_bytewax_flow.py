"""The whole Bytewax dataflow (validate -> route -> features -> outputs) on 1 and 2 workers,
against the brute-force reference, with JSON payloads, bad records, jitter and late events."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feast_bytewax.config import FlowConfig
from feast_bytewax.dataflow.flow import build_flow
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import FeatureRow, Late, Rejected, unbatch
from tests import reference as ref

MIN = 60_000_000
BASE = 1_763_000_000_000_000 // MIN * MIN
SPEC = ref.shipped_spec()


def iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat()


def make_stream(seed: int, n: int, users: int, late_share: float):
    """Events in arrival order (dicts) and their JSON payloads, plus a few bad lines."""
    rnd = random.Random(seed)
    events = []
    for i in range(n):
        et = rnd.choice(["view", "view", "purchase", "login_failed", "login_ok"])
        events.append({
            "event_id": i, "user_id": f"user{rnd.randrange(users)}", "event_type": et,
            "amount": float(rnd.randrange(0, 90)) if et == "purchase" else 0.0,
            "category": rnd.choice(["books", "games", "toys"]) if et == "view" else "",
            "event_timestamp": BASE + rnd.randrange(0, 240 * MIN),
        })
    lag = [rnd.choice([0, 2_000_000, 4_000_000]) if rnd.random() > late_share
           else rnd.randrange(MIN, 40 * MIN) for _ in events]
    order = sorted(range(n), key=lambda i: (events[i]["event_timestamp"] + lag[i], i))
    arrived = [events[i] for i in order]
    payloads = [(json.dumps({**e, "event_timestamp": iso(e["event_timestamp"])}), f"t:{k}")
                for k, e in enumerate(arrived)]
    bad = [("{not json", "t:bad1"),
           (json.dumps({"event_id": 1, "user_id": "x", "event_type": "click", "amount": 1.0,
                        "category": "", "event_timestamp": iso(BASE)}), "t:bad2"),
           (json.dumps({"event_id": 2, "user_id": "x", "event_type": "view", "amount": 1.0,
                        "category": "", "event_timestamp": "2026-01-01T00:00:00"}), "t:bad3")]
    for j, b in enumerate(bad):
        payloads.insert(min(len(payloads), 5 + 17 * j), b)
    return arrived, payloads, len(bad)


def run_flow(payloads, cfg: FlowConfig, workers: int):
    rows, dead = [], []
    stats = FlowStats()
    flow = build_flow("test", cfg, SPEC, TestingSource(payloads, batch_size=13),
                      TestingSink(rows), TestingSink(dead), stats)
    cli_main(flow, workers_per_process=workers)
    return unbatch(r for _, r in rows), unbatch(d for _, d in dead), stats


def expected(arrived, cfg: FlowConfig):
    delay = round(cfg.watermark_delay * 1e6)
    lateness = round(cfg.allowed_lateness * 1e6)
    # One input partition: its watermark is the stream's, whatever shard a key is routed to.
    visible, late = ref.arrival_model(arrived, delay, lateness)
    end = max(e["event_timestamp"] for e in arrived)
    return ref.expected_rows(SPEC, arrived, end, visible), late


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("seed", [1, 2])
def test_flow_rows_equal_reference(workers, seed):
    cfg = FlowConfig(shards=4, watermark_delay=5, allowed_lateness=20 * 60)
    arrived, payloads, n_bad = make_stream(seed, 400, 6, late_share=0.05)
    rows, dead, stats = run_flow(payloads, cfg, workers)
    want, late_idx = expected(arrived, cfg)
    got: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r.key, r.event_timestamp)):
        assert isinstance(r, FeatureRow)
        got.setdefault(r.key, []).append((r.event_timestamp, r.values))
    assert got == want
    rejected = [d for d in dead if isinstance(d, Rejected)]
    late = [d for d in dead if isinstance(d, Late)]
    assert len(rejected) == n_bad
    assert {r.reason.split(":")[0] for r in rejected} == {
        "bad_json", "unknown_event_type", "naive_timestamp"}
    assert len(late) == len(late_idx)
    assert stats.consumed == len(payloads)
    assert stats.balanced(), stats.summary()
    assert stats.corrections > 0  # the stream has late-but-allowed events


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.sampled_from([0, 3 * 60]), st.integers(1, 5))
def test_flow_matches_reference_on_random_streams(seed, lateness_s, shards):
    cfg = FlowConfig(shards=shards, watermark_delay=3, allowed_lateness=lateness_s)
    arrived, payloads, _ = make_stream(seed, 150, 4, late_share=0.1)
    rows, dead, stats = run_flow(payloads, cfg, 1)
    want, late_idx = expected(arrived, cfg)
    got: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r.key, r.event_timestamp)):
        got.setdefault(r.key, []).append((r.event_timestamp, r.values))
    assert got == want
    assert sum(isinstance(d, Late) for d in dead) == len(late_idx)
    assert stats.balanced()
