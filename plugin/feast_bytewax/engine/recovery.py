"""Recovery snapshots of a shard engine, keyed by what produced each piece of state.

A snapshot records, next to the state, the identity of every feature (view, name, function,
column, window, slide, filter, options) and where each group's state came from. Restoring
under the same definitions is a plain load. Restoring after `feast_repo/` changed maps the
state by identity, never by position: a feature kept as it was gets its own state back, a
new feature starts empty (its values count the events from the restore on), a removed or
changed one is dropped. So a changed definition can never read another feature's state, and
adding a feature never crashes a restore. What the life-cycle commands do about the new
features' history (backfill, warm-up) is decided above the engine; `RestoreReport` says
what happened.
"""

from __future__ import annotations

import logging
import pickle
import random
from dataclasses import dataclass, field
from typing import Any

from feast_bytewax.engine.joins import Versions
from feast_bytewax.engine.state import KeyState
from feast_bytewax.errors import ConfigError

log = logging.getLogger(__name__)
_LOGGED: set[str] = set()  # warnings already given by this process

FORMAT = 5
ESTIMATE_SAMPLE = 256  # entries pickled per large part by `estimated_snapshot_bytes`


@dataclass
class RestoreReport:
    """What a restore kept, started fresh and dropped (feature names)."""

    same: bool = True
    kept: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _home(g: Any, where: tuple) -> tuple:
    """Where a group's state lives: its kind, filter and slide (or gap)."""
    kind, size = ("sliding", g.slide) if hasattr(g, "slide") else ("session", g.gap)
    return (kind, tuple((c, tuple(sorted(v))) for c, v in where), size)


def snapshot_state(engine: Any) -> bytes:
    cs = engine.cs
    state = {
        "format": FORMAT,
        "fingerprint": cs.spec.fingerprint,
        "features": [f.identity for f in cs.spec.features],
        "groups": [(_home(g, cs.group_where[g.gid]), [m.identity for m in g.members])
                   for g in cs.groups],
        "keys": {k: (v.groups, v.emitted) for k, v in engine.keys.items()},
        "buffer": engine.buffer, "timers": engine.timers, "open_rows": engine.open_rows,
        "marks": engine.marks, "dedup": engine.dedup, "frontier": engine.frontier,
        "seeded": engine.seeded, "joins": engine.joins,
        "seq": engine.seq, "counts": engine.counts,
    }
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def estimated_snapshot_bytes(engine: Any, sample: int = ESTIMATE_SAMPLE) -> int:
    """About `len(snapshot_state(engine))`, from at most `sample` entries of each part that
    grows with the keys or the events (keys, buffer, timers, event ids, joined versions,
    kept events), each scaled to its length; the small rest is pickled whole.

    Why: without recovery the state is pickled only to show its size (`dataflow.step`), and
    pickling a whole shard held the worker for up to 0.25 s at a time, long enough to show in
    the freshness p99. Pickling the sample costs the same whatever the state's size; only
    the lists of keys to sample from grow with it (3.5 ms against 397 ms for the whole
    pickle of a 10k-key shard holding 600 s of event ids)."""
    joins = engine.joins
    parts = [
        _dict_bytes(engine.keys, sample, lambda v: (v.groups, v.emitted)),
        _list_bytes(engine.buffer, sample),
        _list_bytes(engine.timers, sample),
        2 * _dict_bytes(engine.dedup.seen, sample),  # the ids and their expiry order
        _dict_bytes(joins.retained.by_key, sample),
        *(_dict_bytes(v.by_key, sample) for v in joins.versions.values()),
    ]
    rest = {"open_rows": engine.open_rows, "marks": engine.marks, "counts": engine.counts,
            "features": [f.identity for f in engine.cs.spec.features]}
    return sum(parts) + len(pickle.dumps(rest, protocol=pickle.HIGHEST_PROTOCOL))


def _list_bytes(items: list, sample: int) -> int:
    if len(items) <= sample:
        return len(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)) if items else 0
    picked = [items[i] for i in random.sample(range(len(items)), sample)]
    return len(pickle.dumps(picked, protocol=pickle.HIGHEST_PROTOCOL)) * len(items) // sample


def _dict_bytes(d: dict, sample: int, value: Any = None) -> int:
    keys = list(d) if len(d) <= sample else random.sample(list(d), sample)
    if not keys:
        return 0
    picked = [(k, d[k] if value is None else value(d[k])) for k in keys]
    return len(pickle.dumps(picked, protocol=pickle.HIGHEST_PROTOCOL)) * len(d) // len(keys)


def restore_state(engine: Any, blob: bytes) -> RestoreReport:
    """Load a snapshot into a fresh engine, mapping state by identity if definitions changed."""
    state = pickle.loads(blob)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(
            "the recovery snapshot was written by an older feast-bytewax (positional state); "
            "start with an empty --recovery-dir (and backfill the range it covered)")
    cs = engine.cs
    keys = state.pop("keys")
    old_features = state.pop("features")
    old_groups = state.pop("groups")
    same = state.pop("fingerprint") == cs.spec.fingerprint
    state.pop("format")
    report = RestoreReport(same=same)
    if same:
        for k, (groups, emitted) in keys.items():
            ks = KeyState.__new__(KeyState)
            ks.groups, ks.emitted = groups, emitted
            engine.keys[k] = ks
    else:
        _remap(engine, state, keys, old_features, old_groups, report)
    for name, value in state.items():
        setattr(engine, name, value)
    engine.restore_report = report
    return report


def _remap(engine: Any, state: dict, keys: dict, old_features: list, old_groups: list,
           report: RestoreReport) -> None:
    cs = engine.cs
    names = {f.identity: f.name for f in cs.spec.features}
    old_slot = {ident: i for i, ident in enumerate(old_features)}
    old_by_home = {home: (gid, ids) for gid, (home, ids) in enumerate(old_groups)}
    plan: list[tuple[int, list[int | None]] | None] = []  # new gid -> (old gid, member map)
    for g in cs.groups:
        hit = old_by_home.get(_home(g, cs.group_where[g.gid]))
        if hit is None:
            plan.append(None)
            continue
        old_gid, old_ids = hit
        member_map = [old_ids.index(m.identity) if m.identity in old_ids else None
                      for m in g.members]
        plan.append((old_gid, member_map) if any(j is not None for j in member_map) else None)
    gid_map = {p[0]: new for new, p in enumerate(plan) if p is not None}
    slots = [old_slot.get(f.identity) for f in cs.spec.features]
    empty = cs.empty_vector

    def vector(old: tuple) -> tuple:
        return tuple(empty[i] if j is None else old[j] for i, j in enumerate(slots))

    for k, (groups, emitted) in keys.items():
        ks = KeyState(len(cs.groups), empty)
        for new, p in enumerate(plan):
            if p is not None and groups[p[0]] is not None:
                ks.groups[new] = groups[p[0]].remapped(cs.groups[new], p[1])
        ks.emitted = vector(emitted)
        engine.keys[k] = ks
    state["open_rows"] = {k: [r[0], vector(r[1]), r[2]] for k, r in state["open_rows"].items()}
    state["timers"] = [(t, k, gid_map[g]) for t, k, g in state["timers"] if g in gid_map]
    joins = state["joins"]  # kept events follow their group; a view no longer joined goes
    retained = joins.retained.by_key
    for k in list(retained):
        groups = {gid_map[g]: evs for g, evs in retained[k].items() if g in gid_map}
        if groups:
            retained[k] = groups
        else:
            del retained[k]
    wanted = tuple(j.view for j in cs.spec.enrichment.joins)
    joins.versions = {v: joins.versions.get(v) or Versions() for v in wanted}
    joins.views = wanted
    kept = {old_features[j] for j in slots if j is not None}
    report.kept = sorted(names[i] for i in kept)
    report.new = sorted(f.name for f, j in zip(cs.spec.features, slots, strict=True) if j is None)
    report.dropped = sorted(str(i[1]) for i in old_features if i not in names)
    line = (f"definitions changed since the recovery snapshot: kept the state of "
            f"{report.kept or 'none'}; new or changed (their state starts empty): "
            f"{report.new or 'none'}; dropped: {report.dropped or 'none'}")
    if line not in _LOGGED:  # every shard of the process restores the same change: say it once
        _LOGGED.add(line)
        log.warning(line)
