"""Kafka in and out of the live flow, on Bytewax's own Kafka connector.

**Source.** `KafkaEventSource` builds on `bytewax.connectors.kafka.KafkaSource` (one consumer
per Kafka partition, manual assignment, offsets kept by Bytewax recovery; partitions spread
over the workers), reads each partition's consumer itself (`EventPartition`) and emits the
``(payload, origin)`` items `flow.build_flow` expects: ``payload`` is the message value as
received (bytes, or None for a tombstone) and ``origin`` is ``"topic/partition/offset"``.
It adds what a production run needs:

- start position ``earliest`` / ``latest`` (only when there is no recovery state), batch size,
  librdkafka settings passed through verbatim (SASL/SSL ...: `kafka_options`);
- a bounded-time partition listing (Bytewax's waits forever on unreachable brokers);
- stop conditions shared by every partition of the process (`StopControl`): after N
  records, after S idle seconds, at the end of the topic, or on request (SIGTERM). A stop is a
  clean end of input: the flow flushes every shard and sink before it exits;
- a fix for Bytewax 0.21 storing an error's offset (-1001) as the resume offset.

**Kafka errors** (decision). Consumer errors are not input records (no payload, no offset),
so they are not dead-lettered and not part of ``consumed``. Every one is counted in
``feast_bytewax_kafka_errors_total{code}`` and logged (rate-limited per code). Then:

- *fail loudly* (the flow raises `KafkaSourceError` naming topic/partition/code; with recovery
  a restart resumes from the last snapshot): fatal errors, authentication/authorization
  failures, and, on a partition, unknown topic/partition (the topic was deleted);
- *count, log and go on*: everything librdkafka retries by itself (transport, brokers down,
  timeouts, SSL handshakes) and ``_AUTO_OFFSET_RESET`` (logged as an error: the consumer
  skipped to the reset position, records may be lost).

**Dead letters** (`KafkaDeadLetterSink`, `read_dead_letter_topic`): see
`feast_bytewax.kafka.deadletters`. Settings (`kafka_options` ...): `feast_bytewax.kafka.settings`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka import KafkaError as CKError
from confluent_kafka.admin import AdminClient

from feast_bytewax.errors import SourceError
from feast_bytewax.kafka._compat import consumer, next_offset, set_next_offset
from feast_bytewax.kafka.settings import START_OFFSETS
from feast_bytewax.observability.metrics import KAFKA_ERRORS, KAFKA_LAG

log = logging.getLogger("feast_bytewax.kafka.source")

IDLE_POLL_S = 0.02  # back-off of an idle partition (Bytewax would re-poll every 1 ms)
LAG_EVERY_S = 1.0

# Client-level errors (error_cb) that stop the flow; everything else is retried by librdkafka.
FAIL_CODES = frozenset({
    CKError._AUTHENTICATION,
    CKError.SASL_AUTHENTICATION_FAILED,
    CKError.TOPIC_AUTHORIZATION_FAILED,
    CKError.CLUSTER_AUTHORIZATION_FAILED,
    CKError.GROUP_AUTHORIZATION_FAILED,
    CKError._FATAL,
    CKError._INVALID_ARG,
})
# ... and, reported on a partition, these too: the topic or partition is gone.
PARTITION_FAIL_CODES = FAIL_CODES | {
    CKError._UNKNOWN_TOPIC,
    CKError.UNKNOWN_TOPIC_OR_PART,
    CKError._UNKNOWN_PARTITION,
}


class KafkaSourceError(SourceError):
    """A Kafka error the live flow must not run past (see the module docstring)."""



# ---------------------------------------------------------------------------------------
# Stop conditions
# ---------------------------------------------------------------------------------------


class StopControl:
    """Stop conditions shared by the source partitions of one process (thread-safe).

    :arg max_events: stop once this many records were read in this process (checked between
        batches, so a few more may be read; all of them are processed).
    :arg idle_exit_s: stop once no partition read a record for this many seconds.
    :arg clock: monotonic seconds (injectable).
    """

    def __init__(self, max_events: int | None = None, idle_exit_s: float | None = None,
                 clock=time.monotonic) -> None:
        if max_events is not None and max_events < 0:
            raise ValueError("max_events must be >= 0")
        if idle_exit_s is not None and idle_exit_s <= 0:
            raise ValueError("idle_exit_s must be > 0")
        self.max_events = max_events
        self.idle_exit_s = idle_exit_s
        self._clock = clock
        self._lock = threading.Lock()
        self.read = 0
        self.last_activity: float | None = None  # set by the first poll (start-up is not idle)
        self.reason: str | None = None

    def note(self, n: int) -> None:
        """`n` records were just read."""
        if n:
            with self._lock:
                self.read += n
                self.last_activity = self._clock()

    def alive(self) -> None:
        """A partition holds records back on purpose (paced): that is not idleness."""
        with self._lock:
            self.last_activity = self._clock()

    def request_stop(self, reason: str = "stop requested") -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason

    def should_stop(self) -> bool:
        if self.reason is not None:
            return True
        if self.last_activity is None:
            with self._lock:
                if self.last_activity is None:
                    self.last_activity = self._clock()
        if self.max_events is not None and self.read >= self.max_events:
            self.request_stop(f"read {self.read} records (max {self.max_events})")
        elif (self.idle_exit_s is not None
              and self._clock() - self.last_activity >= self.idle_exit_s):
            self.request_stop(f"no record for {self.idle_exit_s:g} s")
        return self.reason is not None


# ---------------------------------------------------------------------------------------
# Source
# ---------------------------------------------------------------------------------------


class ErrorBook:
    """Client and partition errors of one source: counts, rate-limited logs, the first
    error that must stop the flow."""

    LOG_EVERY_S = 30.0

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.counts: dict[str, int] = {}
        self.failure: str | None = None
        self._last_log: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, err: CKError, where: str, fail_codes: frozenset) -> None:
        name = err.name()
        KAFKA_ERRORS.labels(code=name).inc()
        fail = err.fatal() or err.code() in fail_codes
        text = f"Kafka error {name} on {where}: {err.str()}"
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            if fail and self.failure is None:
                self.failure = text
            now = time.monotonic()
            due = now - self._last_log.get(name, -1e9) >= self.LOG_EVERY_S
            if due:
                self._last_log[name] = now
            n = self.counts[name]
        if fail:
            log.error("%s: stopping the flow", text)
        elif due:
            level = logging.ERROR if err.code() == CKError._AUTO_OFFSET_RESET else logging.WARNING
            log.log(level, "%s (%d so far; librdkafka retries by itself)", text, n)

    def client_error(self, err: CKError) -> None:
        """librdkafka ``error_cb`` (runs inside poll/consume on the worker's thread)."""
        self.record(err, f"topic {self.topic!r} (client)", FAIL_CODES)

    def check(self) -> None:
        if self.failure is not None:
            raise KafkaSourceError(self.failure)


class EventPartition(StatefulSourcePartition[tuple[Any, str], int | None]):
    """One Kafka partition: Bytewax's partition reader (its consumer, assignment, resume
    offset and snapshot), read here, items as ``(payload, origin)``.

    The reading is ours, not Bytewax's `next_batch`: that builds a frozen
    `KafkaSourceMessage` per record (key, headers, latency, timestamp...) only for this to
    take two fields of it, which measured 10% of a live worker. The loop is Bytewax's
    otherwise: ``consume(batch, 1 ms)``, end of partition at ``_PARTITION_EOF`` (input then
    ends at the next call, after this batch's records), resume at the last offset + 1."""

    def __init__(self, inner: Any, topic: str, part: int, stop: StopControl,
                 errors: ErrorBook, batch_size: int) -> None:
        self._inner = inner
        self._consumer = consumer(inner)
        self._batch_size = batch_size
        self._eof = False
        self._topic = topic
        self._part = part
        self._prefix = f"{topic}/{part}/"
        self._stop = stop
        self._errors = errors
        self._awake: datetime | None = None
        self._lag_gauge = KAFKA_LAG.labels(topic=topic, partition=str(part))
        self._lag_at = -1e9
        self.lag: int | None = None

    def _update_lag(self) -> None:
        """Lag from the consumer's cached high watermark (no broker round trip)."""
        self._lag_at = time.monotonic()
        try:
            lo, hi = consumer(self._inner).get_watermark_offsets(
                TopicPartition(self._topic, self._part), cached=True)
        except Exception:  # a metric must never stop the flow
            return
        if hi < 0:
            return
        pos = next_offset(self._inner)
        if pos < 0:  # nothing read yet: OFFSET_BEGINNING / OFFSET_END
            pos = lo if pos == OFFSET_BEGINNING else hi
        self.lag = max(hi - pos, 0)
        self._lag_gauge.set(self.lag)

    def next_batch(self) -> list[tuple[Any, str]]:
        self._errors.check()
        if self._stop.should_stop():
            self._update_lag()
            raise StopIteration
        if self._eof:  # not tailing: the end of the partition was read
            self._update_lag()
            raise StopIteration
        before = next_offset(self._inner)
        out: list[tuple[Any, str]] = []
        prefix = self._prefix
        last = None
        for m in self._consumer.consume(self._batch_size, 0.001):
            err = m.error()
            if err is None:
                last = m.offset()
                out.append((m.value(), prefix + str(last)))
            elif err.code() == CKError._PARTITION_EOF:
                self._eof = True
                break
            else:  # an error item has no offset to resume at (Bytewax 0.21 stored -1001)
                self._errors.record(err, f"{self._topic}/{self._part}", PARTITION_FAIL_CODES)
        set_next_offset(self._inner, last + 1 if last is not None else before)
        self._stop.note(len(out))
        if time.monotonic() - self._lag_at >= LAG_EVERY_S:
            self._update_lag()
        self._errors.check()
        self._awake = None if out else datetime.now(UTC) + timedelta(seconds=IDLE_POLL_S)
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def paused(self) -> None:
        """Called instead of `next_batch` while event-time pacing holds this partition back
        (`ingest.partitions.Pacer`): its unread records are not idleness (`--idle-exit`)."""
        self._stop.alive()

    def snapshot(self) -> int | None:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class KafkaEventSource(FixedPartitionedSource[tuple[Any, str], int | None]):
    """JSON events from one Kafka topic as ``(payload, origin)`` items for `build_flow`.

    :arg brokers: bootstrap servers (``host:port``).
    :arg topic: the topic (key = user_id; the key is not needed: the payload carries it).
    :arg start_from: ``earliest`` or ``latest``; only used for partitions without recovery
        state.
    :arg batch_size: records per poll of one partition.
    :arg options: librdkafka settings for every consumer (security, timeouts ...).
    :arg stop: shared stop conditions (default: never stop).
    :arg tail: False stops each partition at its end (as seen when it gets there).
    :arg list_timeout_s: how long listing the partitions may take before failing.
    """

    def __init__(
        self,
        brokers: Iterable[str],
        topic: str,
        *,
        start_from: str = "earliest",
        batch_size: int = 1000,
        options: Mapping[str, str] | None = None,
        stop: StopControl | None = None,
        tail: bool = True,
        list_timeout_s: float = 30.0,
    ) -> None:
        if start_from not in START_OFFSETS:
            raise ValueError(f"start_from must be one of {sorted(START_OFFSETS)}, "
                             f"got {start_from!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.brokers = list(brokers)
        self.topic = topic
        self.batch_size = batch_size
        # librdkafka logs every failed connection to stderr on its own; the same errors reach
        # `error_cb` (counted, logged rate-limited) and the listing's one-line error, so its
        # own log is quiet unless asked for (`--kafka-option log_level=7`).
        self.options = {"log_level": "2", **dict(options or {})}
        self.stop = stop if stop is not None else StopControl()
        self.list_timeout_s = list_timeout_s
        self.errors = ErrorBook(topic)
        config: dict[str, Any] = dict(self.options)
        config.setdefault("error_cb", self.errors.client_error)
        self._inner = KafkaSource(
            self.brokers, [topic], tail=tail, starting_offset=START_OFFSETS[start_from],
            add_config=config, batch_size=batch_size, raise_on_errors=False,
        )

    def list_parts(self) -> list[str]:
        """``"<partition>-<topic>"`` for each partition (Bytewax's naming), in bounded time."""
        config = {"bootstrap.servers": ",".join(self.brokers), **self.options}
        client = AdminClient(config)
        try:
            md = client.list_topics(self.topic, timeout=self.list_timeout_s)
        except Exception as e:  # KafkaException: brokers unreachable, auth ...
            raise KafkaSourceError(
                f"cannot list partitions of topic {self.topic!r} on {','.join(self.brokers)} "
                f"within {self.list_timeout_s:g} s: {e}"
            ) from e
        tmd = md.topics.get(self.topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            why = "no partitions" if tmd is None or tmd.error is None else tmd.error.str()
            raise KafkaSourceError(f"topic {self.topic!r} on {','.join(self.brokers)}: {why}")
        return [f"{i}-{self.topic}" for i in sorted(tmd.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        inner = self._inner.build_part(step_id, for_part, resume_state)
        idx, topic = for_part.split("-", 1)
        return EventPartition(inner, topic, int(idx), self.stop, self.errors, self.batch_size)
