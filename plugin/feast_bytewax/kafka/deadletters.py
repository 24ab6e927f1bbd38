"""Dead letters of the live flow to Kafka (see also `feast_bytewax.kafka.source`).

`KafkaDeadLetterSink` writes the flow's dead letters (``(key, Rejected | Late)`` items) with
per-message topics:

- rejected input -> ``dead_letter_topic``; value = the original message bytes, exactly (None
  for a tombstone), key = ``"topic/partition"`` of the source (one source partition's dead
  letters stay in order);
- late events -> ``late_topic`` (default: the dead-letter topic); value = the JSON envelope of
  `deadletter.dead_letter_record` (event, reason, watermark), key = the user id;
- headers on both: ``feast_bytewax.kind`` (rejected|late), ``.code``, ``.reason``,
  ``.origin``, ``.topic``, ``.partition``, ``.offset`` (plus ``.watermark`` for late), and
  ``.session`` (below).

Delivery is checked: a dead letter the broker did not acknowledge fails the flow (never
dropped silently). `read_dead_letter_topic` reads them back.

**Restarts.** A dead letter's identity is its kind and ``origin`` (the input's
``topic/partition/offset``: stable across restarts, the idempotency key). The sink is a
stateful Bytewax sink (one partition unless ``parts``) whose resume state is its *session*
(the ``.session`` header of what it sends), per partition of its topics the offset after the
last message it had acknowledged at the snapshot, and the identities still to skip. A
restart from that snapshot reads its topics from there to their end, and the dead letters of
its session found there (sent after the snapshot by the killed run) are not sent again when
the replayed input produces them again. That is exactly what needs skipping: Bytewax 0.21
reads an epoch's input only once the epoch before is committed with its snapshots, so what
the sink received after the snapshot it resumes from is exactly what the input replay
produces again.

Before the sink's first snapshot (it is built at the first dead letter) there is no resume
state: with `recovery` (the run's recovery directory) the new session is first written to
``<recovery>/feast-bytewax-dead-letters-<step>-<part>.json``, and a restart under the same
directory that finds no resume state adopts it (as the dead-letter file's ``.start``
sidecar does): each dead letter is then in the topics once, whatever the kills. Without it,
a kill in the epoch of the run's very first dead letters (before their snapshot is
committed) sends those again after the restart, in a new session, identical but for the
session header; consumers dedupe on ``origin``. Without recovery nothing is resumed: a rerun
sends every dead letter of what it reads again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka import KafkaError as CKError

from feast_bytewax.errors import SourceError
from feast_bytewax.observability.metrics import DEAD_LETTERS_PRODUCED
from feast_bytewax.records import Late, Rejected, TableVersion, dead_letter_record, unbatch

log = logging.getLogger("feast_bytewax.kafka.source")

HEADER_PREFIX = "feast_bytewax."

def split_origin(origin: str) -> tuple[str, int, int] | None:
    """``"topic/partition/offset"`` -> (topic, partition, offset); None for other origins."""
    parts = origin.rsplit("/", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].lstrip("-").isdigit():
        return parts[0], int(parts[1]), int(parts[2])
    return None


def _h(name: str, value: Any) -> tuple[str, bytes]:
    return (HEADER_PREFIX + name, str(value).encode("utf-8", "backslashreplace"))


def dead_letter_message(record: Rejected | Late, dead_letter_topic: str,
                        late_topic: str | None = None) -> KafkaSinkMessage:
    """The Kafka message for one dead letter (see the module docstring)."""
    full = dead_letter_record(record)
    origin = full["origin"]
    where = split_origin(origin)
    headers = [_h("kind", full["kind"]), _h("code", full["code"]), _h("reason", full["reason"]),
               _h("origin", origin)]
    if where is not None:
        headers += [_h("topic", where[0]), _h("partition", where[1]), _h("offset", where[2])]
    if isinstance(record, Rejected):
        # The exact bytes ride on the record itself (no side channel: it works across
        # processes and however many dead letters are in flight).
        if record.no_value:
            value = None
        elif record.raw is not None:
            value = record.raw
        else:
            value = record.payload.encode("utf-8", "backslashreplace")
        key = origin.rsplit("/", 1)[0] if where is not None else origin
        return KafkaSinkMessage(key.encode("utf-8", "backslashreplace"), value,
                                topic=dead_letter_topic, headers=headers)
    headers.append(_h("watermark", full["watermark_iso"]))
    value = json.dumps(full, ensure_ascii=True, default=str).encode("ascii")
    ev = record.event
    key = ev.key if isinstance(ev, TableVersion) else ev.user_id
    return KafkaSinkMessage(key.encode("utf-8", "backslashreplace"), value,
                            topic=late_topic or dead_letter_topic, headers=headers)


Identity = tuple[str, str]  # (kind, origin)
Where = tuple[str, int]  # (topic, partition)
STATE_FORMAT = 1


def _identity(m: KafkaSinkMessage) -> Identity:
    h = dict(m.headers or ())
    return (h[HEADER_PREFIX + "kind"].decode(), h[HEADER_PREFIX + "origin"].decode())


class DeadLetterPartition(StatefulSinkPartition[Any, dict]):
    """Produces a batch and waits for every acknowledgement; a failure raises. Its state:
    `session`, `at` (offset after its last acknowledged message, per topic partition; a
    restart reads from there) and `skip` (dead letters the killed run sent after the
    snapshot, not to send again)."""

    def __init__(self, producer: Producer, dead_letter_topic: str, late_topic: str | None,
                 timeout_s: float, session: str | None = None,
                 at: Mapping[Where, int] | None = None,
                 skip: Iterable[Identity] = ()) -> None:
        self._producer = producer
        self._topic = dead_letter_topic
        self._late = late_topic
        self._timeout = timeout_s
        self._failed: list[str] = []
        self.session = session or uuid.uuid4().hex[:16]
        self.at: dict[Where, int] = dict(at or {})
        self.skip: set[Identity] = set(skip)
        self.skipped = 0

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}: {err}")
            return
        where = (msg.topic(), msg.partition())
        self.at[where] = max(self.at.get(where, 0), msg.offset() + 1)

    def write_batch(self, items: list[Any]) -> None:
        kinds: dict[str, int] = {}
        for item in unbatch(items):
            record = item[1] if type(item) is tuple else item
            m = dead_letter_message(record, self._topic, self._late)
            ident = _identity(m)
            if ident in self.skip:  # sent before the restart, after the snapshot
                self.skip.discard(ident)
                self.skipped += 1
                continue
            headers = [*m.headers, _h("session", self.session)]
            while True:
                try:
                    self._producer.produce(m.topic, value=m.value, key=m.key,
                                           headers=headers, on_delivery=self._delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self._producer.poll(0.1)
            kind = "rejected" if isinstance(record, Rejected) else "late"
            kinds[kind] = kinds.get(kind, 0) + 1
        left = self._producer.flush(self._timeout)
        if left or self._failed:
            failed, self._failed = self._failed, []
            text = (f"dead letters not acknowledged by Kafka ({left} still queued after "
                    f"{self._timeout:g} s; failures: {failed[:5]})")
            log.error("%s; the run stops", text)  # Bytewax may hide the exception (a panic)
            raise RuntimeError(text)
        for kind, n in kinds.items():
            DEAD_LETTERS_PRODUCED.labels(kind=kind).inc(n)

    def snapshot(self) -> dict:
        return {"v": STATE_FORMAT, "session": self.session,
                "at": sorted([t, p, o] for (t, p), o in self.at.items()),
                "skip": sorted(list(i) for i in self.skip)}

    def close(self) -> None:
        self._producer.flush(self._timeout)


def _state_at(rows: Iterable[Sequence[Any]]) -> dict[Where, int]:
    return {(str(t), int(p)): int(o) for t, p, o in rows}


def _consumer(config: Mapping[str, Any]) -> Consumer:
    return Consumer({**config, "group.id": "feast-bytewax-dead-letters",
                     "enable.auto.commit": "false", "enable.partition.eof": "true"})


def topic_ends(config: Mapping[str, Any], topics: Iterable[str],
               timeout_s: float) -> dict[Where, int]:
    """The current end offset of every partition of `topics`."""
    consumer = _consumer(config)
    try:
        out = {}
        for topic in topics:
            md = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            if md.error is not None:
                raise SourceError(f"dead-letter topic {topic!r}: {md.error}")
            for p in md.partitions:
                out[(topic, p)] = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                                 timeout=timeout_s)[1]
        return out
    finally:
        consumer.close()


def sent_since(config: Mapping[str, Any], topics: Iterable[str], session: str,
               at: Mapping[Where, int], timeout_s: float,
               ) -> tuple[set[Identity], dict[Where, int]]:
    """The dead letters `session` sent to `topics` from `at` on (partitions missing from
    `at`: from their start), and the partitions' ends (where the session goes on)."""
    consumer = _consumer(config)
    found: set[Identity] = set()
    ends: dict[Where, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        assign, pending = [], set()
        for topic in topics:
            md = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            if md.error is not None:
                raise SourceError(f"dead-letter topic {topic!r}: {md.error}")
            for p in md.partitions:
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                        timeout=timeout_s)
                ends[(topic, p)] = hi
                begin = max(lo, at.get((topic, p), lo))
                if hi > begin:
                    assign.append(TopicPartition(topic, p, begin))
                    pending.add((topic, p))
        if not assign:
            return found, ends
        consumer.assign(assign)
        while pending:
            if time.monotonic() > deadline:
                raise SourceError(f"reading back dead letters: {sorted(pending)} unfinished "
                                  f"after {timeout_s:g} s")
            for m in consumer.consume(500, 0.2):
                where = (m.topic(), m.partition())
                err = m.error()
                if err is not None:
                    if err.code() == CKError._PARTITION_EOF:
                        pending.discard(where)
                        continue
                    raise SourceError(f"reading back dead letters: {err}")
                if m.offset() + 1 >= ends[where]:
                    pending.discard(where)
                h = _header_dict(m.headers())
                if h.get("session") == session and "kind" in h and "origin" in h:
                    found.add((h["kind"], h["origin"]))
        return found, ends
    finally:
        consumer.close()


class KafkaDeadLetterSink(FixedPartitionedSink[Any, dict]):
    """The flow's ``(key, Rejected | Late)`` dead letters to Kafka, with acknowledged delivery
    and, under recovery, no dead letter sent twice (see the module docstring).

    :arg brokers: bootstrap servers.
    :arg dead_letter_topic: topic for rejected input (and late events unless `late_topic`).
    :arg late_topic: topic for late events (default: `dead_letter_topic`).
    :arg options: librdkafka settings (security ...).
    :arg timeout_s: how long a batch may wait for acknowledgements (and a restart for
        reading back what its session sent).
    :arg recovery: the run's Bytewax recovery directory: a restart before the sink's first
        snapshot then keeps its session too.
    :arg parts: sink partitions (one producer each; dead letters are rare: 1).
    """

    def __init__(self, brokers: Iterable[str], dead_letter_topic: str,
                 late_topic: str | None = None, options: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0, recovery: str | Path | None = None,
                 parts: int = 1) -> None:
        if parts < 1:
            raise ValueError("parts must be >= 1")
        self.brokers = list(brokers)
        self.dead_letter_topic = dead_letter_topic
        self.late_topic = late_topic
        self.options = dict(options or {})
        self.timeout_s = timeout_s
        self.recovery = None if recovery is None else Path(recovery).resolve()
        self.parts = parts

    @property
    def topics(self) -> list[str]:
        return sorted({self.dead_letter_topic, self.late_topic or self.dead_letter_topic})

    def _config(self) -> dict[str, Any]:
        return {"bootstrap.servers": ",".join(self.brokers), "log_level": "2", **self.options}

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def sidecar(self, step_id: str, for_part: str) -> Path | None:
        """Where a session is written before its first dead letter (with `recovery`)."""
        if self.recovery is None:
            return None
        safe = re.sub(r"[^0-9A-Za-z_.-]", "_", f"{step_id}-{for_part}")
        return self.recovery / f"feast-bytewax-dead-letters-{safe}.json"

    def _adopt(self, side: Path | None) -> dict | None:
        """The session a killed attempt under this recovery directory started, if any."""
        if side is None or not side.exists():
            return None
        try:
            mark = json.loads(side.read_text())
        except (OSError, ValueError):
            return None
        if mark.get("recovery") != str(self.recovery) or mark.get("topics") != self.topics:
            return None
        return mark

    def build_part(self, step_id: str, for_part: str,
                   resume_state: dict | None) -> DeadLetterPartition:
        config = self._config()
        side = self.sidecar(step_id, for_part)
        state = resume_state if resume_state is not None else self._adopt(side)
        if state is None:  # a new session: where the topics end now is where it starts
            session = uuid.uuid4().hex[:16]
            at = topic_ends(config, self.topics, self.timeout_s)
            skip: set[Identity] = set()
            if side is not None:
                tmp = side.with_name(f".{side.name}.tmp")
                tmp.write_text(json.dumps({
                    "recovery": str(self.recovery), "topics": self.topics, "session": session,
                    "at": sorted([t, p, o] for (t, p), o in at.items())}))
                os.replace(tmp, side)
        else:
            session = state["session"]
            found, at = sent_since(config, self.topics, session, _state_at(state["at"]),
                                   self.timeout_s)
            skip = {(str(k), str(o)) for k, o in state.get("skip", ())} | found
            if found:
                log.info("dead letters: %d sent before the restart (session %s) are not "
                         "sent again", len(found), session)
        return DeadLetterPartition(Producer(config), self.dead_letter_topic, self.late_topic,
                                   self.timeout_s, session=session, at=at, skip=skip)


def _header_dict(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    out = {}
    for k, v in headers or ():
        if k.startswith(HEADER_PREFIX):
            out[k[len(HEADER_PREFIX):]] = v.decode("utf-8", "replace") if v is not None else ""
    return out


def read_dead_letter_topic(brokers: Iterable[str], topic: str,
                           options: Mapping[str, str] | None = None,
                           timeout_s: float = 30.0) -> list[dict]:
    """Every message of a dead-letter topic, partition by partition up to its current end.

    Each dict: the headers without their prefix (``kind``, ``code``, ``reason``, ``origin``,
    ``topic``, ``partition``, ``offset`` ...), plus ``key`` and ``value`` (bytes or None) and
    ``dlq_partition`` / ``dlq_offset``; late ones also ``record`` (the decoded envelope).
    """
    config = {"bootstrap.servers": ",".join(brokers), "group.id": "feast-bytewax-dlq-reader",
              "enable.auto.commit": "false", "enable.partition.eof": "true",
              **dict(options or {})}
    consumer = Consumer(config)
    deadline = time.monotonic() + timeout_s
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        parts = sorted(md.topics[topic].partitions)
        pending = set()
        assign = []
        for p in parts:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if hi > lo:
                pending.add(p)
                assign.append(TopicPartition(topic, p, lo))
        out: list[dict] = []
        if not assign:
            return out
        consumer.assign(assign)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic!r}: partitions {sorted(pending)} unfinished")
            for m in consumer.consume(500, 0.2):
                err = m.error()
                if err is not None:
                    if err.code() == CKError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise SourceError(f"reading {topic!r}: {err}")
                d = _header_dict(m.headers())
                d.update(key=m.key(), value=m.value(), dlq_partition=m.partition(),
                         dlq_offset=m.offset())
                if d.get("kind") == "late" and m.value() is not None:
                    d["record"] = json.loads(m.value())
                out.append(d)
        return out
    finally:
        consumer.close()
