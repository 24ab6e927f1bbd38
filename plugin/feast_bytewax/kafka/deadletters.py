"""Dead letters of the live flow to Kafka (see also `feast_bytewax.kafka.source`).

`KafkaDeadLetterSink` is Bytewax's `KafkaSink` writing the flow's dead
letters (``(key, Rejected | Late)`` items) with per-message topics:

- rejected input -> ``dead_letter_topic``; value = the original message bytes, exactly (None
  for a tombstone), key = ``"topic/partition"`` of the source (one source partition's dead
  letters stay in order);
- late events -> ``late_topic`` (default: the dead-letter topic); value = the JSON envelope of
  `deadletter.dead_letter_record` (event, reason, watermark), key = the user id;
- headers on both: ``feast_bytewax.kind`` (rejected|late), ``.code``, ``.reason``,
  ``.origin``, ``.topic``, ``.partition``, ``.offset`` (plus ``.watermark`` for late).

Unlike the plain `KafkaSink`, delivery is checked: a dead letter the broker did not
acknowledge fails the flow (never dropped silently). `read_dead_letter_topic` reads them back.
Delivery is at-least-once (duplicates after a recovery resume).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bytewax.connectors.kafka import (
    KafkaSink,
    KafkaSinkMessage,
)
from bytewax.outputs import StatelessSinkPartition
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka import KafkaError as CKError

from feast_bytewax.errors import SourceError
from feast_bytewax.observability.metrics import DEAD_LETTERS_PRODUCED
from feast_bytewax.records import Late, Rejected, dead_letter_record

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
    return KafkaSinkMessage(record.event.user_id.encode("utf-8", "backslashreplace"), value,
                            topic=late_topic or dead_letter_topic, headers=headers)


class DeadLetterPartition(StatelessSinkPartition[Any]):
    """Produces a batch and waits for every acknowledgement; a failure raises."""

    def __init__(self, producer: Producer, dead_letter_topic: str, late_topic: str | None,
                 timeout_s: float) -> None:
        self._producer = producer
        self._topic = dead_letter_topic
        self._late = late_topic
        self._timeout = timeout_s
        self._failed: list[str] = []

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}: {err}")

    def write_batch(self, items: list[Any]) -> None:
        kinds: dict[str, int] = {}
        for item in items:
            record = item[1] if type(item) is tuple else item
            m = dead_letter_message(record, self._topic, self._late)
            while True:
                try:
                    self._producer.produce(m.topic, value=m.value, key=m.key,
                                           headers=m.headers, on_delivery=self._delivered)
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

    def close(self) -> None:
        self._producer.flush(self._timeout)


class KafkaDeadLetterSink(KafkaSink):
    """Bytewax's `KafkaSink` for the flow's ``(key, Rejected | Late)`` dead letters, with
    acknowledged delivery (one producer per worker).

    :arg brokers: bootstrap servers.
    :arg dead_letter_topic: topic for rejected input (and late events unless `late_topic`).
    :arg late_topic: topic for late events (default: `dead_letter_topic`).
    :arg options: librdkafka settings (security ...).
    :arg timeout_s: how long a batch may wait for acknowledgements.
    """

    def __init__(self, brokers: Iterable[str], dead_letter_topic: str,
                 late_topic: str | None = None, options: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0) -> None:
        super().__init__(list(brokers), dead_letter_topic, dict(options or {}))
        self.late_topic = late_topic
        self.timeout_s = timeout_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> DeadLetterPartition:
        config = {"bootstrap.servers": ",".join(self._brokers), "log_level": "2",
                  **self._add_config}
        return DeadLetterPartition(Producer(config), self._topic, self.late_topic,
                                    self.timeout_s)


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
