"""Online values without the watermark wait: provisional rows from a second engine.

Offline exactness needs the watermark delay: events are released in event-time order once
no earlier one can still come. The value a model reads online does not. So a shard of a
live run with provisional rows keeps two engines over the same input: the exact one
(`ShardEngine` as configured), whose rows go offline, and a *provisional* one, the same
engine with no delay, whose rows go online at once:

- its watermark is the minimum over the input partitions of their frontiers, without the
  delay: an event is applied as soon as every partition has reached its time (in a live
  stream the partitions move together, so that is about at once), and an event behind it
  is a correction stamped at the watermark, so per key its row timestamps only increase and
  Feast's "not newer than the stored row: dropped" rule never hides one;
- its allowed lateness is the exact engine's delay + lateness: it accepts every event the
  exact engine accepts (that one's watermark is this one's minus the delay), so once the
  exact watermark has passed, the two agree (`dataflow.divergence` measures how often and
  for how long they did not);
- it starts as a copy of the exact engine's state, at build and at every restore, so it
  needs no snapshot of its own: what the exact engine still buffers is applied at once,
  and after a restore every key is written again at the restored watermark, so that the
  restored state supersedes what the killed run wrote online before that point.

Its counters and late records are not reported (the exact engine's are the run's), and it
keeps no event ids: it is fed the exact engine's batch without the duplicates that engine
found (both forget an id at the same event time: watermark - delay - lateness).
"""

from __future__ import annotations

from dataclasses import replace

from feast_bytewax.engine.config import EngineConfig
from feast_bytewax.engine.dedup import RecentIds
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.records import PROVISIONAL, Event, FeatureRow, Late


def provisional_config(exact: EngineConfig) -> EngineConfig:
    """The provisional engine's knobs (see the module docstring), in microseconds."""
    return replace(exact, watermark_delay=0, emit_from=None, dedup=False,
                   allowed_lateness=exact.watermark_delay + exact.allowed_lateness)


def _own(ev: Event) -> Event:
    """A copy for the provisional engine: a temporal join records what it joined on the event
    itself, and the two engines join at different times. (Built field by field: `copy.copy`
    of a slotted dataclass goes through `__reduce_ex__`, 3x slower.)"""
    return Event(ev.event_id, ev.user_id, ev.event_type, ev.amount, ev.category,
                 ev.event_timestamp, ev.origin, ev.extra, ev.part, ev.frontier)


class ProvisionalRows:
    """The provisional engine of one shard (see the module docstring)."""

    def __init__(self, exact: ShardEngine) -> None:
        self.exact = exact
        self.engine = ShardEngine(exact.cs.spec, provisional_config(exact.config),
                                  exact.snapshot())
        self.engine.dedup = RecentIds()  # never consulted: the exact engine's verdict is used
        w = self.engine.marks.retarget(0)  # the restored marks carry the exact one's delay
        if exact.keys and w is not None:
            # A restore: the online store holds the killed run's provisional rows, stamped up
            # to about this watermark, and a write not newer than the stored one is dropped.
            # So every key with a value gets a row here (`ShardEngine._seed`), newer than any
            # the killed engine wrote before this point, and the restored state wins.
            self.engine.config = replace(self.engine.config, emit_from=w)
        self.copy_events = bool(exact.cs.joins)
        self._needs_join = self.engine.cs.needs_join

    def _rows(self, out: list[FeatureRow | Late]) -> list[FeatureRow]:
        return [FeatureRow(r.key, r.event_timestamp, r.values, PROVISIONAL)
                for r in out if type(r) is FeatureRow]

    def ingest(self, items: list) -> list[FeatureRow]:
        """The batch the exact engine just ingested, without the duplicates it found (its
        lateness horizon is this one's: the same ids are remembered)."""
        dups = self.exact.last_duplicates
        if dups:
            seen = {id(e) for e in dups}
            items = [x for x in items if id(x) not in seen]
        if self.copy_events:  # only the events a join will write on (the others are shared)
            needs = self._needs_join
            items = [_own(x) if type(x) is Event and needs(x) else x for x in items]
        return self._rows(self.engine.ingest(items))

    def finish(self) -> list[FeatureRow]:
        return self._rows(self.engine.finish())
