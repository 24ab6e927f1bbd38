"""Recovery snapshots under changed definitions (issue 7, defect 2).

A snapshot used to be positional: restoring it after a feature was added raised IndexError,
and after a change that reordered groups a count was handed a max's state. Now state is
keyed by the identity of the definition that produced it. Checked against the brute-force
reference: a feature that did not change continues exactly as if nothing had happened; a
new or renamed feature starts empty at the restore (it counts the events after it).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import feast_bytewax
from feast_bytewax.dataflow.runtime import EXIT_FATAL
from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.errors import ConfigError
from feast_bytewax.features.spec import FeatureSpec
from feast_bytewax.records import Event, FeatureRow
from tests import reference as ref

MIN = 60_000_000
BASE = 1_763_000_000_000_000 // MIN * MIN
SPEC = ref.shipped_spec()
PURCHASE = (("event_type", frozenset({"purchase"})),)
CFG = EngineConfig(watermark_delay=0, allowed_lateness=0)

NEW = FeatureSpec("sum_amount_2h", "user_purchase_features", "sum", "amount", "sliding",
                  120 * MIN, MIN, PURCHASE, "float64")


def renamed(name: str, new_name: str) -> tuple[FeatureSpec, ...]:
    return tuple(replace(f, name=new_name) if f.name == name else f for f in SPEC.features)


# New feature first (groups reorder: the purchase group gains a member and moves), one
# feature renamed (same group, new identity), the session feature moved to the front.
CHANGED = replace(SPEC, features=(
    NEW, *[f for f in renamed("failed_logins_10m", "failed_logins_v2")
           if f.kind == "session"],
    *[f for f in renamed("failed_logins_10m", "failed_logins_v2") if f.kind != "session"]))


def stream(seed: int, n: int = 400) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    t = BASE
    for i in range(n):
        t += rnd.choice([1, 5_000_000, 40_000_000, 3 * MIN])
        et = rnd.choice(["view", "purchase", "purchase", "login_failed", "login_ok"])
        out.append({"event_id": i, "user_id": f"u{rnd.randrange(4)}", "event_type": et,
                    "amount": float(rnd.randrange(1, 60)) if et == "purchase" else 0.0,
                    "category": rnd.choice(["a", "b", "c"]), "event_timestamp": t})
    return out


def to_event(e: dict) -> Event:
    return Event(e["event_id"], e["user_id"], e["event_type"], e["amount"], e["category"],
                 e["event_timestamp"], "test")


def rows(out) -> list[FeatureRow]:
    return [r for r in out if isinstance(r, FeatureRow)]


def series(rows_: list[tuple[FeatureRow, tuple[str, ...]]], key: str, name: str) -> list:
    """The step function of one feature of one key: (time, value) where it changes."""
    out: list = []
    for r, names in rows_:
        if r.key != key or name not in names:
            continue
        v = r.values[names.index(name)]
        if not out or not ref.same_value(out[-1][1], v):
            out.append((r.event_timestamp, v))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restore_after_definitions_changed_keeps_unchanged_state_and_starts_new_ones(seed):
    events = stream(seed)
    cut = len(events) // 2
    whole = ShardEngine(SPEC, CFG)
    full = rows(whole.ingest([to_event(e) for e in events]) + whole.finish())

    first = ShardEngine(SPEC, CFG)
    before = rows(first.ingest([to_event(e) for e in events[:cut]]))
    resumed = ShardEngine(CHANGED, CFG, first.snapshot())
    after = rows(resumed.ingest([to_event(e) for e in events[cut:]]) + resumed.finish())

    report = resumed.restore_report
    assert not report.same
    assert report.new == ["failed_logins_v2", "sum_amount_2h"]
    assert report.dropped == ["failed_logins_10m"]
    assert set(report.kept) == set(SPEC.feature_names) - {"failed_logins_10m"}

    old, new = SPEC.feature_names, CHANGED.feature_names
    got = [(r, old) for r in before] + [(r, new) for r in after]
    want = [(r, old) for r in full]
    keys = {e["user_id"] for e in events}
    for name in report.kept:  # exactly as if nothing had happened
        for key in keys:
            assert series(got, key, name) == series(want, key, name), (name, key)
    # a new (or renamed) feature counts the events after the restore, from empty
    later = events[cut:]
    for name in report.new:
        single = replace(CHANGED, features=tuple(f for f in CHANGED.features if f.name == name))
        for r in after:
            (expected,) = ref.value_at(single, later, r.key, r.event_timestamp)
            assert ref.same_value(r.values[new.index(name)], expected), (name, r)


def test_restore_under_the_same_definitions_is_a_plain_load():
    events = stream(7)
    first = ShardEngine(SPEC, CFG)
    first.ingest([to_event(e) for e in events[:100]])
    again = ShardEngine(SPEC, CFG, first.snapshot())
    assert again.restore_report.same and again.state_size() == first.state_size()


def test_a_positional_snapshot_is_refused_with_a_clear_message():
    import pickle

    old = pickle.dumps({"keys": {}, "buffer": [], "timers": []})
    with pytest.raises(ConfigError, match=r"older feast-bytewax.*empty --recovery-dir"):
        ShardEngine(SPEC, CFG, old)


# `FeatureStepConfig.build` ends the process (`fatal_stop`: os._exit), so it runs in a child.
BUILD_WITH_EMPTY_STATE = """
from feast_bytewax.dataflow.step import NO_SNAPSHOT, FeatureStepConfig
from feast_bytewax.engine.config import EngineConfig
from tests.reference import shipped_spec

config = FeatureStepConfig(shipped_spec(), EngineConfig(), snapshots=False)
config.build(None)  # a fresh shard builds
config.build(NO_SNAPSHOT)
print("build returned")
"""


def test_a_recovery_store_written_without_recovery_stops_the_build_with_one_line():
    """A run not told of its recovery directory stores `NO_SNAPSHOT` for every shard; a
    restart with recovery must not resume from that as if it were empty state (it would
    silently start every window from nothing). The build stops the run: exit 3, one
    `feast-bytewax: error:` line naming the recovery directory, no traceback."""
    root = Path(__file__).resolve().parents[2]
    plugin = Path(feast_bytewax.__file__).resolve().parents[1]  # the code under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(plugin), str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", BUILD_WITH_EMPTY_STATE], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("feast-bytewax: error:")]
    assert proc.returncode == EXIT_FATAL, (proc.returncode, proc.stderr[-3000:])
    assert len(errors) == 1 and "recovery directory" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "build returned" not in proc.stdout


@pytest.mark.parametrize("delay_s", [0, 5])
def test_the_snapshot_size_estimate_is_near_the_snapshot_it_stands_for(delay_s):
    """Without recovery the state gauge shows `estimated_snapshot_bytes` (a sample of each
    large part, scaled) instead of pickling the shard: with thousands of keys, buffered
    events and remembered ids it must stay near the real snapshot's size."""
    rnd = random.Random(3)
    engine = ShardEngine(SPEC, EngineConfig(watermark_delay=delay_s * 1_000_000,
                                            allowed_lateness=600_000_000))
    t = BASE
    batch = []
    for i in range(20_000):
        t += rnd.randrange(0, 2_000)
        et = rnd.choice(["view", "view", "purchase", "login_failed", "login_ok"])
        batch.append(Event(i, f"u{rnd.randrange(3_000)}", et,
                           float(rnd.randrange(1, 60)) if et == "purchase" else 0.0,
                           rnd.choice("abcdef"), t, "test"))
        if len(batch) == 500:
            engine.ingest(batch)
            batch = []
    assert len(engine.keys) > 2_000 and len(engine.dedup) > 10_000
    assert (len(engine.buffer) > 1_000) == (delay_s > 0)
    exact = len(engine.snapshot())
    estimates = [engine.estimated_snapshot_bytes() for _ in range(3)]
    assert all(0.8 * exact <= e <= 1.2 * exact for e in estimates), (exact, estimates)
