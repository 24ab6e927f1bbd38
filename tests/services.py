"""Real services for tests, each on a free loopback port, started and stopped by the tests.

Sections are independent (each has its own helpers and fixtures); tests/conftest.py imports
the fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# ---------------------------------------------------------------------------------------
# Kafka: librdkafka's mock cluster (in-process, real protocol on loopback)
# ---------------------------------------------------------------------------------------


@dataclass
class KafkaMockCluster:
    """A librdkafka mock cluster owned by an in-process producer (keep it alive).

    Auto-created topics get 4 partitions; each partition keeps only ~5 MiB (older messages
    vanish), so keep test topics small. Use a fresh topic per test (`new_topic`).
    """

    bootstrap: str
    owner: object  # the confluent_kafka.Producer whose mock cluster this is

    def producer(self, **config):
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, **config})

    def new_topic(self, prefix: str = "t") -> str:
        """A unique topic name, created (with 4 partitions) by a metadata request."""
        import uuid

        from confluent_kafka.admin import AdminClient

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        md = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(name, timeout=10)
        if name not in md.topics or md.topics[name].error is not None:
            raise RuntimeError(f"mock cluster did not create topic {name!r}")
        return name

    def produce(self, topic: str, items, timeout: float = 30.0) -> list[tuple[int, int]]:
        """Produce ``(key, value, partition_or_None)`` items in order; return each one's
        (partition, offset), in the same order. Fails if any delivery fails."""
        producer = self.producer()
        results: list[tuple[int, int]] = []
        delivered: dict[int, tuple] = {}

        def on_delivery(i):
            def cb(err, msg):
                delivered[i] = (err, msg.partition(), msg.offset())
            return cb

        n = 0
        for i, (key, value, partition) in enumerate(items):
            kwargs = {} if partition is None else {"partition": partition}
            while True:
                try:
                    producer.produce(topic, key=key, value=value, on_delivery=on_delivery(i),
                                     **kwargs)
                    break
                except BufferError:
                    producer.poll(0.1)
            n += 1
        left = producer.flush(timeout)
        if left:
            raise RuntimeError(f"{left} messages not delivered to {topic!r}")
        for i in range(n):
            err, part, offset = delivered[i]
            if err is not None:
                raise RuntimeError(f"delivery to {topic!r} failed: {err}")
            results.append((part, offset))
        return results


def start_kafka_mock(brokers: int = 1, timeout: float = 10.0) -> KafkaMockCluster:
    from confluent_kafka import Producer

    owner = Producer({"test.mock.num.brokers": brokers, "log_level": 3})
    md = owner.list_topics(timeout=timeout)
    broker = next(iter(md.brokers.values()))
    return KafkaMockCluster(f"{broker.host}:{broker.port}", owner)


@pytest.fixture(scope="session")
def kafka_mock() -> Iterator[KafkaMockCluster]:
    """One librdkafka mock Kafka cluster for the session (bootstrap on 127.0.0.1)."""
    cluster = start_kafka_mock()
    try:
        yield cluster
    finally:
        cluster.owner.flush(1)
        del cluster.owner
