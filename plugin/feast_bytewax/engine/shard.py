"""The keyed stateful core: events in, feature rows out (plus late records).

One `ShardEngine` owns many entity keys (a routing shard, see routing.py) and computes every
feature of every key in one pass. It is plain Python with no Bytewax dependency, so tests
drive it directly; dataflow/step.py wraps it as a Bytewax `StatefulBatchLogic`.

Time model (shared/spec/features.md):

- the watermark W is the minimum over the input partitions of (partition frontier - delay)
  (`engine.watermark`); each event carries its partition's frontier and `Mark`s report
  partitions that read nothing new (idle, finished). There is no wall clock in here: live
  runs move W while the stream is quiet through their sources' idle marks, so a restart or
  a stalled sink never turns downtime into stream time;
- events newer than W wait in a buffer and are released in event-time order together with
  the keys' timers (pane exits, session expiries), so every row is exact;
- a repeated `event_id` of the same key within the lateness horizon is a duplicate: counted,
  never applied (`engine.dedup`);
- an event at or behind W within `allowed_lateness` is applied at once and its effect is
  a `correction` row stamped at W; older events go to the late output with a reason;
- a row is emitted whenever a key's vector changes, stamped with the time from which it
  holds; rows at exactly W are held back until W moves so that a correction at the same W
  merges into them: per key, row timestamps strictly increase;
- a finite input ends at its newest event time (`finish()`), never at "infinity".
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.dedup import RecentIds
from feast_bytewax.engine.groups import CompiledSpec
from feast_bytewax.engine.joins import JoinState
from feast_bytewax.engine.recovery import (
    RestoreReport,
    estimated_snapshot_bytes,
    restore_state,
    snapshot_state,
)
from feast_bytewax.engine.state import KeyState
from feast_bytewax.engine.watermark import PartitionWatermarks
from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.records import Event, FeatureRow, Late, Mark, TableVersion

NEVER = float("inf")


class ShardEngine:
    """Exact, incremental windowed features for the keys of one shard."""

    def __init__(self, spec: EngineSpec, config: EngineConfig, snapshot: bytes | None = None):
        self.cs = CompiledSpec(spec)
        self.config = config
        # events are kept for corrections only when a late version can still change them
        self.retain = bool(self.cs.joined_groups) and config.allowed_lateness > 0
        self.lateness = config.allowed_lateness
        self.keys: dict[str, KeyState] = {}
        self.buffer: list[tuple[int, int, Event]] = []  # (t, seq, event) heap
        self.timers: list[tuple[int, str, int]] = []  # (t, key, gid) heap, lazily invalidated
        self.open_rows: dict[str, list] = {}  # key -> [ts, values, cause] not yet final
        self.marks = PartitionWatermarks(config.partitions, config.watermark_delay)
        self.dedup = RecentIds()
        self.joins = JoinState(tuple(j.view for j in spec.enrichment.joins))
        self.frontier: int | None = None  # everything <= frontier has been released
        self.seeded = False
        self.seq = 0
        self.counts = {"processed": 0, "late": 0, "duplicates": 0, "corrections": 0,
                       "rows": 0, "versions": 0, "late_versions": 0}
        self.restore_report: RestoreReport | None = None
        self.last_duplicates: list[Event] = []
        if snapshot is not None:
            self._restore(snapshot)

    # -- public API ----------------------------------------------------------------------
    def watermark(self) -> int | None:
        """The current watermark (None until every partition has reported progress)."""
        return self.marks.wm

    def ingest(self, items: Iterable[Event | Mark]) -> list[FeatureRow | Late]:
        """Accept events (and partition marks) in arrival order; return the rows and late
        records now final. Each event is judged against the watermark that includes its own
        partition's frontier, so lateness does not depend on how the input is batched."""
        out: list[FeatureRow | Late] = []
        marks, dedup, key_of = self.marks, self.dedup, self.cs.key_of
        buf, push = self.buffer, heapq.heappush
        seq, accepted, dups = self.seq, 0, 0
        w = marks.wm
        check = self.config.dedup
        self.last_duplicates = dropped = []  # this call's duplicates (engine.provisional)
        for ev in items:
            if type(ev) is Mark:
                w = marks.mark(ev.part, ev.frontier, ev.state)
                continue
            t = ev.event_timestamp
            version = type(ev) is TableVersion
            if not version and check and dedup.repeated(key_of(ev), ev.event_id, t):
                dups += 1
                dropped.append(ev)
                continue
            part = ev.part if ev.part >= 0 else 0
            f = ev.frontier
            if f is None:  # not from a partitioned source: this engine's own stream
                known = marks.frontier[part]
                f = t if known is None or t > known else known
            if f > t:  # an older event than its partition's newest: judge with that frontier
                w = marks.advance(part, f)
                behind = w is not None and t <= w
            else:  # the partition's newest: judged by what came before it
                behind = w is not None and t <= w
                w = marks.advance(part, f)
            if version:  # kept at once: an event joins by its own time (engine.joins)
                self.counts["versions"] += 1
                if behind:
                    self.seq = seq
                    self._late_version(ev, w, out)
                else:
                    self._keep_version(ev, t)
                    accepted += 1
                continue
            if behind:
                self.seq, self.counts["processed"] = seq, self.counts["processed"] + accepted
                accepted = 0
                self._behind_watermark(ev, w, out)
                continue
            seq += 1
            push(buf, (t, seq, ev))
            accepted += 1
        self.seq = seq
        self.counts["processed"] += accepted
        self.counts["duplicates"] += dups
        if w is not None:
            self._advance(w, out)
            if check:
                dedup.expire(w - self.lateness)
        return out

    def _behind_watermark(self, ev: Event, w: int, out: list) -> None:
        """A correction within the allowed lateness, else a late record with its reason."""
        lateness = self.lateness
        t = ev.event_timestamp
        if w - t > lateness:
            self.counts["late"] += 1
            out.append(Late(ev, f"late: event time is {(w - t) / 1e6:.3f} s behind the "
                                f"watermark, allowed lateness {lateness / 1e6:g} s", w))
            return
        self._advance(w, out)
        self._correct(ev, w, out)
        self.counts["processed"] += 1

    def finish(self) -> list[FeatureRow | Late]:
        """End of a finite input: release everything up to its newest event time (every
        partition's frontier is known by now) and flush held rows."""
        out: list[FeatureRow | Late] = []
        end = self.marks.end()
        if end is not None:
            self._advance(end, out)
        self._flush_open(out, None)
        return out

    def state_size(self) -> int:
        return len(self.keys)

    # -- release loop ----------------------------------------------------------------------
    def _advance(self, w: int, out: list) -> None:
        if self.frontier is not None and w < self.frontier:
            return
        seed = self.config.emit_from
        if seed is not None and not self.seeded and w >= seed:
            self.seeded = True
            self._advance(seed, out)
            self._seed(seed)
        buf, timers = self.buffer, self.timers
        while True:
            tb = buf[0][0] if buf else NEVER
            tt = timers[0][0] if timers else NEVER
            if tt <= tb:  # at equal times panes leave before new events enter
                if tt > w:
                    break
                t, key, gid = heapq.heappop(timers)
                self._fire(key, gid, t, out)
            else:
                if tb > w:
                    break
                t, _, ev = heapq.heappop(buf)
                self._apply(ev, t, out)
        self.frontier = w
        self._flush_open(out, w)

    def _key(self, k: str) -> KeyState:
        st = self.keys.get(k)
        if st is None:
            st = self.keys[k] = KeyState(len(self.cs.groups), self.cs.empty_vector)
        return st

    def _vector(self, key: str, st: KeyState) -> list:
        """A working copy of the key's current vector."""
        row = self.open_rows.get(key)
        return list(row[1] if row is not None else st.emitted)

    def _apply(self, ev: Event, t: int, out: list) -> None:
        key = self.cs.key_of(ev)
        cs = self.cs
        if cs.joins and cs.needs_join(ev):
            self._join(ev, key, t, t)
        st = self._key(key)
        vals = self._vector(key, st)
        groups, lateness = self.cs.groups, self.lateness
        for gid in self.cs.groups_for(ev):
            g = groups[gid]
            gs = st.groups[gid]
            if gs is None:
                gs = st.groups[gid] = g.new_state()
            opened = gs.add(g, ev, t)
            # Timers are lazy: a later expiry is picked up when the current timer fires, so
            # only a new pane or session (or no timer at all) can need an earlier wake-up.
            if gs.timer_at is None or opened:
                self._schedule(key, gid, gs, gs.next_wakeup(g, t, lateness))
            gs.fill(g, vals, t)
        self._changed(key, st, t, "event", out, vals)

    # -- temporal join (engine.joins) -----------------------------------------------------
    def _join(self, ev: Event, key: str, t: int, now: int) -> None:
        """Join the versions valid at t (applied at watermark time `now`); keep the event if
        a late version may change it."""
        self.joins.join(ev, key, t, now - self.lateness)
        if self.retain:
            cs = self.cs
            for gid in cs.joined_groups:
                if cs.retains(gid, ev):
                    self.joins.retained.keep(key, gid, t, ev)

    def _keep_version(self, v: TableVersion, t: int) -> None:
        self.joins.insert(v, None if self.frontier is None else self.frontier - self.lateness)

    def _late_version(self, v: TableVersion, w: int, out: list) -> None:
        """A version behind the watermark: within the allowed lateness, the events it should
        have enriched are applied again with it (their groups rebuilt) and the change is a
        correction row at the watermark; later, it is counted, reported (a late record) and
        only joined by the events applied from now on."""
        t = v.valid_from
        self._advance(w, out)  # what is due was applied before this version arrived
        if not self.cs.joined_groups:  # no feature reads the table: nothing to correct
            self.counts["processed"] += 1
            self._keep_version(v, t)
            return
        if w - t > self.lateness or not self.retain:  # too late to correct: it holds for
            # the events to come (without lateness no events are kept to rebuild from)
            self.counts["late_versions"] += 1
            self.counts["late"] += 1
            self._keep_version(v, t)
            out.append(Late(v, f"late_version: valid from {(w - t) / 1e6:.3f} s behind the "
                               f"watermark, allowed lateness {self.lateness / 1e6:g} s; "
                               "events already applied keep the version they joined, later "
                               "ones join it", w))
            return
        self.counts["processed"] += 1
        self._keep_version(v, t)
        key, cs = v.key, self.cs
        st = self._key(key)
        vals = self._vector(key, st)
        for gid in cs.joined_groups:
            events = self.joins.rejoin(v, gid)
            if events is None:
                continue  # no kept event is at or after the version: nothing changes
            g = cs.groups[gid]
            gs = g.new_state()
            for et, ev in events:
                if gid in cs.groups_for(ev):
                    gs.add(g, ev, et)
            gs.expire(g, w, self.lateness)
            st.groups[gid] = None if gs.is_empty() else gs
            if not gs.is_empty():
                self._schedule(key, gid, gs, gs.next_wakeup(g, w, self.lateness))
            self._refresh(st, gid, w, vals)
        if self._changed(key, st, w, "correction", out, vals):
            self.counts["corrections"] += 1
        self._maybe_drop(key, st)

    def _correct(self, ev: Event, w: int, out: list) -> None:
        key = self.cs.key_of(ev)
        if self.cs.joins and self.cs.needs_join(ev):
            self._join(ev, key, ev.event_timestamp, w)
        st = self._key(key)
        vals = self._vector(key, st)
        touched = False
        lateness = self.lateness
        for gid in self.cs.groups_for(ev):
            g = self.cs.groups[gid]
            gs = st.groups[gid]
            if gs is None:
                gs = st.groups[gid] = g.new_state()
            if not gs.correct(g, ev, ev.event_timestamp, w, lateness):
                continue
            self._schedule(key, gid, gs, gs.next_wakeup(g, w, lateness))
            touched = True
            self._refresh(st, gid, w, vals)
        if touched and self._changed(key, st, w, "correction", out, vals):
            self.counts["corrections"] += 1
        self._maybe_drop(key, st)

    def _fire(self, key: str, gid: int, t: int, out: list) -> None:
        st = self.keys.get(key)
        if st is None:
            return
        gs = st.groups[gid]
        if gs is None or gs.timer_at != t:
            return  # stale timer: superseded by a reschedule
        gs.timer_at = None
        g = self.cs.groups[gid]
        gs.expire(g, t, self.lateness)
        joined = self.cs.joined_groups.get(gid)
        if joined is not None:  # kept events that left every window of the group go
            self.joins.retained.prune(key, gid, t - joined[1] - g.slide)
        self._schedule(key, gid, gs, gs.next_wakeup(g, t, self.lateness))
        if gs.is_empty():
            st.groups[gid] = None
        vals = self._vector(key, st)
        self._refresh(st, gid, t, vals)
        self._changed(key, st, t, "decay", out, vals)
        self._maybe_drop(key, st)

    def _schedule(self, key: str, gid: int, gs: Any, t: int | None) -> None:
        if t is not None and (gs.timer_at is None or t < gs.timer_at):
            gs.timer_at = t
            heapq.heappush(self.timers, (t, key, gid))

    def _refresh(self, st: KeyState, gid: int, now: int, vals: list) -> None:
        g = self.cs.groups[gid]
        gs = st.groups[gid]
        if gs is None:
            for m in g.members:
                vals[m.slot] = m.agg.empty_value
        else:
            gs.fill(g, vals, now)

    # -- rows ----------------------------------------------------------------------------
    def _changed(self, key: str, st: KeyState, t: int, cause: str, out: list,
                 vals: list) -> bool:
        """Record the key's vector at t if it differs from the latest one; True if recorded."""
        vec = tuple(vals)
        row = self.open_rows.get(key)
        if row is not None:
            if row[1] == vec:
                return False
            if row[0] == t:
                row[1] = vec
                if cause == "correction":
                    row[2] = cause
                return True
            self._final(key, st, row, out)
        elif vec == st.emitted:
            return False
        self.open_rows[key] = [t, vec, cause]
        return True

    def _seed(self, at: int) -> None:
        """A replay of a range that starts at `at`: every key with a value then gets a row
        stamped exactly `at` (its rows before are computed but not written), so the stored
        step function is right from the range's first instant. Held like any row at W."""
        empty = self.cs.empty_vector
        for key, st in self.keys.items():
            if key not in self.open_rows and st.emitted != empty:
                self.open_rows[key] = [at, st.emitted, "seed"]

    def _final(self, key: str, st: KeyState, row: list, out: list) -> None:
        if row[1] != st.emitted or row[2] == "seed":
            st.emitted = row[1]
            self.counts["rows"] += 1
            out.append(FeatureRow(key, row[0], row[1], row[2]))

    def _flush_open(self, out: list, w: int | None) -> None:
        """Finalize open rows older than w (all of them when w is None)."""
        if not self.open_rows:
            return
        keep: dict[str, list] = {}
        for key, row in self.open_rows.items():
            if w is not None and row[0] >= w:
                keep[key] = row
                continue
            st = self.keys.get(key)
            if st is None:
                continue
            self._final(key, st, row, out)
            self._maybe_drop(key, st)
        self.open_rows = keep

    def _maybe_drop(self, key: str, st: KeyState) -> None:
        """Forget a key whose state is empty and whose last row is the empty vector."""
        if key in self.open_rows or st.emitted != self.cs.empty_vector:
            return
        if all(gs is None or gs.is_empty() for gs in st.groups):
            del self.keys[key]

    # -- recovery --------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """An immutable copy of the state (pickled bytes), as Bytewax recovery requires. Group
        states are recorded with the identity of the definitions that produced them."""
        return snapshot_state(self)

    def estimated_snapshot_bytes(self) -> int:
        """About `len(self.snapshot())`, from a sample of the state (`engine.recovery`)."""
        return estimated_snapshot_bytes(self)

    def _restore(self, blob: bytes) -> None:
        restore_state(self, blob)
