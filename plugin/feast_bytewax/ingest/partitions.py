"""Event time at the source: validation, per-partition frontiers, marks, pacing, outliers.

`EventTimeSource` wraps any Bytewax partitioned source of raw ``(payload, origin)`` items
(files, an S3 prefix, Kafka partitions) and does, per input partition, what Flink's
watermark strategies do at the source:

- **validate** each item (`ingest.validate`) into an `Event` or a `Rejected`;
- **frontier**: the newest valid event time read from this partition; every event carries it
  (`Event.part`, `Event.frontier`) and every batch ends with a `Mark` that the flow sends to
  every shard, so each shard combines all partitions' progress by the minimum
  (`engine.watermark`), in the order each partition produced it;
- **idle** (live runs): a partition that polls nothing for `idle_timeout` is reported idle
  and stops holding the watermark back; while it reads nothing its frontier advances with
  the wall-clock time it has been idle, measured by this process only: a restart starts the
  count again, so downtime is never stream time;
- **done**: a finite partition read to its end reports its final frontier;
- **pacing**: a partition more than `max_skew` ahead (event time) of the slowest active
  partition of this process pauses, so a sparse file cannot run a day ahead of a dense one
  and buffer everything in the shards (across processes only the watermark, not the read
  rate, is shared);
- **outliers**: an event more than `max_ahead` ahead of its partition's frontier (one bad
  clock) is held back instead of moving the frontier: it is released, on time, once the
  frontier catches up to it, or taken as a real jump once `OUTLIER_CONFIRM` events agree
  (a gap in the data); still unconfirmed when the partition ends, it goes to the dead letters
  as `outlier_timestamp` with its payload, so a replay of old data with a few future-dated
  events neither loses them nor makes the rest late.

Resume state per partition: the inner source's own state, the frontier and the held events.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from feast_bytewax.features.schema import EventSchema
from feast_bytewax.ingest.validate import validate_item
from feast_bytewax.records import Event, Mark, Rejected, event_payload
from feast_bytewax.timeutil import utc_now_us

ACTIVE, IDLE, DONE = "active", "idle", "done"
OUTLIER_CONFIRM = 64  # held events that make a jump real (a gap in the data, not a clock)
PAUSE_S = 0.005
MARK_EVERY_US = 100_000  # while nothing is read, a mark at most this often
MARK_EVERY_READING_US = 20_000  # while reading (events carry their own frontier meanwhile)


@dataclass(frozen=True)
class PartitionPolicy:
    """Event-time rules at the source, in microseconds. `idle_timeout` None: a finite
    replay (no wall clock; partitions are active until done)."""

    max_future: int
    max_ahead: int
    max_skew: int
    idle_timeout: int | None = None
    schema: EventSchema | None = None


class Pacer:
    """Frontiers of this process's partitions of one source, to pause the ones far ahead."""

    def __init__(self, max_skew: int) -> None:
        self.max_skew = max_skew
        self._frontiers: dict[int, int] = {}
        self._lock = threading.Lock()

    def report(self, part: int, frontier: int | None, active: bool) -> None:
        with self._lock:
            if active and frontier is not None:
                self._frontiers[part] = frontier
            else:
                self._frontiers.pop(part, None)

    def ahead(self, part: int) -> bool:
        with self._lock:
            mine = self._frontiers.get(part)
            if mine is None or len(self._frontiers) < 2:
                return False
            return mine > min(self._frontiers.values()) + self.max_skew


class EventTimePartition(StatefulSourcePartition[Any, tuple]):
    def __init__(self, inner: StatefulSourcePartition, part: int, policy: PartitionPolicy,
                 pacer: Pacer, resume: tuple | None, clock: Callable[[], int]) -> None:
        self._inner = inner
        self._part = part
        self._policy = policy
        self._pacer = pacer
        self._clock = clock
        self._frontier: int | None = None
        self._held: list[Event] = []
        if resume is not None:
            self._frontier, self._held = resume[1], list(resume[2])
        self._state = ACTIVE
        self._done = False
        self._idle_since: int | None = None
        self._last_mark_at = -MARK_EVERY_US
        self._last_mark: tuple | None = None
        self._awake: datetime | None = None

    # -- reading -------------------------------------------------------------------------
    def next_batch(self) -> list[Any]:
        if self._done:
            raise StopIteration
        now = self._clock()
        if self._pacer.ahead(self._part):
            self._awake = datetime.now(UTC) + timedelta(seconds=PAUSE_S)
            return []
        try:
            raw = self._inner.next_batch()
        except StopIteration:
            return self._finish()
        inner_awake = getattr(self._inner, "next_awake", None)
        self._awake = inner_awake() if inner_awake is not None else None
        out = self._validate(raw, now) if raw else []
        if raw:
            self._idle_since = None
            self._state = ACTIVE
        elif self._policy.idle_timeout is not None:
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= self._policy.idle_timeout:
                self._state = IDLE
        self._pacer.report(self._part, self._frontier, self._state == ACTIVE)
        mark = self._mark(now, reading=bool(raw))
        if mark is not None:
            out.append(mark)
        return out

    def _validate(self, raw: list, now: int) -> list[Any]:
        policy = self._policy
        out: list[Any] = []
        part, frontier, ahead = self._part, self._frontier, policy.max_ahead
        for payload, origin in raw:
            x = validate_item(payload, origin, now, policy.max_future, policy.schema)
            if type(x) is not Event:
                out.append(x)
                continue
            t = x.event_timestamp
            if frontier is not None and t > frontier + ahead:
                self._held.append(x)
                if len(self._held) < OUTLIER_CONFIRM:
                    continue
                frontier = self._confirm_jump(out, frontier)
                continue
            if frontier is None or t > frontier:
                frontier = t
            x.part, x.frontier = part, frontier
            out.append(x)
        self._frontier = frontier
        if self._held and frontier is not None:
            self._release_caught_up(out)
        return out

    def _confirm_jump(self, out: list, frontier: int) -> int:
        """Enough events agree on a later time: it was a gap, not a clock. Release them."""
        held, self._held = sorted(self._held, key=lambda e: e.event_timestamp), []
        for e in held:
            frontier = max(frontier, e.event_timestamp)
            e.part, e.frontier = self._part, frontier
            out.append(e)
        return frontier

    def _release_caught_up(self, out: list) -> None:
        limit = self._frontier + self._policy.max_ahead
        keep = []
        for e in self._held:
            if e.event_timestamp <= limit:
                if e.event_timestamp > self._frontier:
                    self._frontier = e.event_timestamp
                e.part, e.frontier = self._part, self._frontier
                out.append(e)
            else:
                keep.append(e)
        self._held = keep

    def _finish(self) -> list[Any]:
        """End of a finite partition: unconfirmed outliers to the dead letters, then done."""
        out: list[Any] = []
        for e in self._held:
            ahead_s = (e.event_timestamp - (self._frontier or 0)) / 1e6
            out.append(Rejected(
                json.dumps(event_payload(e), default=str),
                f"outlier_timestamp: {ahead_s:.0f} s ahead of its partition's event-time "
                f"frontier (max ahead {self._policy.max_ahead / 1e6:.0f} s) and never "
                "confirmed by later events", e.origin))
        self._held = []
        self._done = True
        self._state = DONE
        self._pacer.report(self._part, self._frontier, False)
        out.append(Mark(self._part, self._frontier, DONE))
        return out

    # -- marks ---------------------------------------------------------------------------
    def _mark(self, now: int, reading: bool) -> Mark | None:
        """This partition's progress for every shard, at most every `MARK_EVERY_US` (events
        carry their frontier to their own shard meanwhile); a new state is sent at once."""
        frontier = self._frontier
        if self._idle_since is not None and frontier is not None:
            frontier += now - self._idle_since  # live and quiet: stream time goes on
        key = (frontier, self._state)
        changed_state = self._last_mark is None or key[1] != self._last_mark[1]
        if not changed_state:
            if key == self._last_mark:
                return None
            if now - self._last_mark_at < (MARK_EVERY_READING_US if reading else MARK_EVERY_US):
                return None
        self._last_mark, self._last_mark_at = key, now
        return Mark(self._part, frontier, self._state)

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple:
        return (self._inner.snapshot(), self._frontier, tuple(self._held))

    def close(self) -> None:
        self._inner.close()


class EventTimeSource(FixedPartitionedSource[Any, tuple]):
    """Validated events, rejections and partition marks from a source of raw items.

    :arg inner: a `FixedPartitionedSource` of ``(payload, origin)`` items.
    :arg policy: the event-time rules (`PartitionPolicy`).
    :arg clock: wall clock, epoch microseconds (validation's `max_future`, idle time).
    """

    def __init__(self, inner: FixedPartitionedSource, policy: PartitionPolicy,
                 clock: Callable[[], int] = utc_now_us) -> None:
        self.inner = inner
        self.policy = policy
        self.clock = clock
        self.pacer = Pacer(policy.max_skew)
        self._parts: list[str] | None = None

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def partitions(self) -> list[str]:
        """Every partition, in the order whose index `Event.part` / `Mark.part` carry."""
        if self._parts is None:
            self._parts = sorted(self.inner.list_parts())
        return self._parts

    def build_part(self, step_id: str, for_part: str, resume_state: tuple | None):
        inner = self.inner.build_part(step_id, for_part,
                                      None if resume_state is None else resume_state[0])
        return EventTimePartition(inner, self.partitions().index(for_part), self.policy,
                                  self.pacer, resume_state, self.clock)

