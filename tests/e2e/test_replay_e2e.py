"""`feast-bytewax replay` (the real command) into a Feast repo on the embedded stores, then
`get_historical_features` at random points against the brute-force reference; bad rows
land in the dead-letter file with their reasons and the summary adds up."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from feast_bytewax.dataflow.deadletters import read_dead_letters
from feast_bytewax.datagen.generate import BadLine, generate_events
from feast_bytewax.timeutil import from_us, to_us
from feast_bytewax.training import training_frame
from tests import reference as ref

pytestmark = pytest.mark.e2e

SHARDS, DELAY_S, LATENESS_S = 4, 5.0, 300.0
START = datetime(2026, 10, 1, tzinfo=UTC)


def close(a, b) -> bool:
    return ref.same_value(a, b)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Generate a JSON-lines stream with bad rows, replay it with the CLI, return context."""
    from tests.conftest import make_feast_repo

    repo = make_feast_repo(tmp_path_factory.mktemp("e2e") / "repo")
    stream = list(generate_events(4000, 60, start=START, duration=timedelta(hours=6), seed=11,
                                  late_fraction=0.02, bad_fraction=0.01))
    path = repo / "events.jsonl"
    with open(path, "w") as fh:
        for e in stream:
            if isinstance(e, BadLine):
                fh.write(str(e) + "\n")
            else:
                fh.write(json.dumps({**e, "event_timestamp": e["event_timestamp"].isoformat()})
                         + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "feast_bytewax.cli.main", "replay", "--repo", str(repo),
         "--events", str(path), "--shards", str(SHARDS), "--watermark-delay", str(DELAY_S),
         "--allowed-lateness", str(LATENESS_S), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    good = [{**e, "event_timestamp": to_us(e["event_timestamp"])}
            for e in stream if not isinstance(e, BadLine)]
    bad = [e for e in stream if isinstance(e, BadLine)]
    return {"repo": repo, "stdout": proc.stdout, "good": good, "bad": bad, "path": path}


def test_summary_adds_up_and_dead_letters_carry_reasons(replayed):
    line = replayed["stdout"].strip().splitlines()[-1]
    nums = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    good, bad = replayed["good"], replayed["bad"]
    _, late_idx = ref.arrival_model(good, int(DELAY_S * 1e6), int(LATENESS_S * 1e6))
    assert nums["consumed"] == len(good) + len(bad)
    assert nums["rejected"] == len(bad) > 0
    assert nums["late"] == len(late_idx)
    assert nums["consumed"] == nums["processed"] + nums["late"] + nums["rejected"]
    assert "ok]" in line
    dead = list(read_dead_letters(replayed["repo"] / "data/dead_letters.jsonl"))
    rejected = [d for d in dead if d["kind"] == "rejected"]
    assert sorted(d["code"] for d in rejected) == sorted(b.code for b in bad)
    lines = replayed["path"].read_text().splitlines()
    for d in rejected:  # the origin points at the exact line, which holds the payload
        n = int(d["origin"].rsplit(":", 1)[1])
        assert lines[n - 1] == d["payload"]
        assert d["reason"]
    assert sum(d["kind"] == "late" for d in dead) == len(late_idx)


def test_historical_features_equal_reference(replayed):
    from feast import FeatureStore

    good = replayed["good"]
    spec = ref.shipped_spec()
    visible, _ = ref.arrival_model(good, int(DELAY_S * 1e6), int(LATENESS_S * 1e6))
    rnd = random.Random(5)
    users = sorted({e["user_id"] for e in good})
    t_lo = min(e["event_timestamp"] for e in good)
    t_hi = max(e["event_timestamp"] for e in good)
    points = []
    for _ in range(150):  # random instants
        points.append((rnd.choice(users), rnd.randrange(t_lo, t_hi)))
    for e in rnd.sample(good, 60):  # exactly at events and at their pane exits (decay)
        t = e["event_timestamp"]
        points.append((e["user_id"], t))
        points.append((e["user_id"], t // 60_000_000 * 60_000_000 + 30 * 60_000_000))
    first = {}
    for e in good:
        first[e["user_id"]] = min(first.get(e["user_id"], e["event_timestamp"]),
                                  e["event_timestamp"])
    for u in rnd.sample(users, 10):  # before a user's first event
        points.append((u, first[u] - 1))
    points += [("never_seen", t_lo + 10), ("never_seen", t_hi)]
    points = [(u, min(t, t_hi)) for u, t in points]
    entity_df = pd.DataFrame({"user_id": [u for u, _ in points],
                              "event_timestamp": [from_us(t) for _, t in points]})
    store = FeatureStore(repo_path=str(replayed["repo"]))
    service = store.get_feature_service("user_fraud_features")
    frame = training_frame(store, entity_df, service)
    assert len(frame) == len(points)
    names = spec.feature_names
    mismatches = []
    for (u, t), row in zip(points, frame.itertuples(index=False), strict=True):
        want = ref.value_at(spec, good, u, t, visible)
        got = tuple(None if pd.isna(getattr(row, n)) else getattr(row, n) for n in names)
        if not all(close(g, w) for g, w in zip(got, want, strict=True)):
            mismatches.append((u, from_us(t), got, want))
    assert not mismatches, mismatches[:5]
    # Not vacuous: the points see non-empty values, decays to empty, and empty users.
    counts = frame["purchase_count_30m"]
    assert (counts > 0).sum() > 20 and (counts == 0).sum() > 20
