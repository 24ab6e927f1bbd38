"""Event time at the source: validation, per-partition frontiers, marks, pacing, outliers.

`EventTimeSource` wraps any Bytewax partitioned source of raw ``(payload, origin)`` items
(files, an S3 prefix, Kafka partitions) and does, per input partition, what Flink's
watermark strategies do at the source:

- **validate** each item into an `Event` or a `Rejected` (`ingest.validate`; a joined
  table's partitions into `TableVersion`s, `ingest.tables`: they follow the same rules);
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
from typing import Any, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from feast_bytewax.features.schema import EventSchema
from feast_bytewax.ingest.validate import validate_item
from feast_bytewax.records import Event, Mark, Rejected, TableVersion, event_payload
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


class Validator(Protocol):
    """Raw items of a partition -> records (`Event`, `TableVersion`) or `Rejected`.

    `holds_outliers`: whether a record far ahead of its partition's frontier is suspect (an
    event clock) or normal (a slowly changing table's versions are days apart)."""

    holds_outliers: bool

    def validate(self, payload: Any, origin: str, now_us: int) -> Any: ...

    def payload_of(self, record: Any) -> str: ...


class EventValidator:
    """The event stream's validator (`ingest.validate`), with the policy's rules."""

    holds_outliers = True

    def __init__(self, policy: PartitionPolicy) -> None:
        self.max_future = policy.max_future
        self.schema = policy.schema

    def validate(self, payload: Any, origin: str, now_us: int) -> Event | Rejected:
        return validate_item(payload, origin, now_us, self.max_future, self.schema)

    def payload_of(self, record: Event) -> str:
        return json.dumps(event_payload(record), default=str)


class Pacer:
    """Frontiers of this process's partitions of one source, to pause the ones far ahead.

    Leading partitions (a joined table's finite files) are read first: the others wait
    until every leading partition of this process is done, so the table's versions are all
    known before the events that join them and never arrive late in a replay; a finished
    partition no longer holds the watermark back, so the events' lateness is decided by the
    event partitions alone, as without a join."""

    def __init__(self, max_skew: int) -> None:
        self.max_skew = max_skew
        self._frontiers: dict[int, int] = {}
        self._leaders: set[int] = set()
        self._lock = threading.Lock()

    def lead(self, part: int) -> None:
        with self._lock:
            self._leaders.add(part)

    def done(self, part: int) -> None:
        with self._lock:
            self._leaders.discard(part)
            self._frontiers.pop(part, None)

    def report(self, part: int, frontier: int | None, active: bool) -> None:
        with self._lock:
            if active and frontier is not None:
                self._frontiers[part] = frontier
            else:
                self._frontiers.pop(part, None)

    def ahead(self, part: int) -> bool:
        with self._lock:
            if self._leaders:  # leading partitions read first, unpaced
                return part not in self._leaders
            mine = self._frontiers.get(part)
            if mine is None or len(self._frontiers) < 2:
                return False
            return mine > min(self._frontiers.values()) + self.max_skew


class EventTimePartition(StatefulSourcePartition[Any, tuple]):
    def __init__(self, inner: StatefulSourcePartition, part: int, policy: PartitionPolicy,
                 pacer: Pacer, resume: tuple | None, clock: Callable[[], int],
                 validator: Validator | None = None) -> None:
        self._inner = inner
        self._validator = validator or EventValidator(policy)
        self._part = part
        self._policy = policy
        self._pacer = pacer
        self._clock = clock
        self._frontier: int | None = None
        self._held: list[Event | TableVersion] = []
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
            paused = getattr(self._inner, "paused", None)  # e.g. a Kafka partition's idle exit
            if paused is not None:
                paused()
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
        part, frontier = self._part, self._frontier
        ahead = policy.max_ahead if self._validator.holds_outliers else float("inf")
        validate = self._validator.validate
        for payload, origin in raw:
            x = validate(payload, origin, now)
            if type(x) is Rejected:
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
                self._validator.payload_of(e),
                f"outlier_timestamp: {ahead_s:.0f} s ahead of its partition's event-time "
                f"frontier (max ahead {self._policy.max_ahead / 1e6:.0f} s) and never "
                "confirmed by later events", e.origin))
        self._held = []
        self._done = True
        self._state = DONE
        self._pacer.done(self._part)
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
        return (self._inner.snapshot(), self._frontier, tuple(self._held), self._done)

    def close(self) -> None:
        self._inner.close()


class EventTimeSource(FixedPartitionedSource[Any, tuple]):
    """Validated events, rejections and partition marks from a source of raw items.

    :arg inner: a `FixedPartitionedSource` of ``(payload, origin)`` items.
    :arg policy: the event-time rules (`PartitionPolicy`).
    :arg clock: wall clock, epoch microseconds (validation's `max_future`, idle time).
    :arg validator_for: a partition's name -> its `Validator` (default: every partition
        carries events). A source with a `partition_order()` (`ingest.tables.InputSet`)
        gives the partition indices in that order, else they are its sorted names.
    :arg leading: names of the partitions read before the others (see `Pacer`).
    """

    def __init__(self, inner: FixedPartitionedSource, policy: PartitionPolicy,
                 clock: Callable[[], int] = utc_now_us,
                 validator_for: Callable[[str], Validator] | None = None,
                 leading: frozenset[str] = frozenset()) -> None:
        self.inner = inner
        self.validator_for = validator_for
        self.leading = leading
        self.policy = policy
        self.clock = clock
        self.pacer = Pacer(policy.max_skew)
        self._parts: list[str] | None = None

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def partitions(self) -> list[str]:
        """Every partition, in the order whose index `Event.part` / `Mark.part` carry."""
        if self._parts is None:
            order = getattr(self.inner, "partition_order", None)
            self._parts = list(order()) if order is not None else sorted(self.inner.list_parts())
        return self._parts

    def build_part(self, step_id: str, for_part: str, resume_state: tuple | None):
        inner = self.inner.build_part(step_id, for_part,
                                      None if resume_state is None else resume_state[0])
        validator = None if self.validator_for is None else self.validator_for(for_part)
        index = self.partitions().index(for_part)
        finished = resume_state is not None and len(resume_state) > 3 and resume_state[3]
        if for_part in self.leading and not finished:
            self.pacer.lead(index)
        return EventTimePartition(inner, index, self.policy, self.pacer, resume_state,
                                  self.clock, validator)

