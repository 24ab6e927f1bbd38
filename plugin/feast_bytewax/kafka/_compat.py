"""The two Bytewax internals the Kafka event source reads, behind one checked door.

Bytewax 0.21's `_KafkaSourcePartition` keeps the next offset in `_offset` (and stores an
error item's offset, -1001, as the resume position: the source corrects it) and its
confluent-kafka consumer in `_consumer` (the source reads cached high watermarks from it for
the lag metric). Neither is public API. This module is the only place that touches them, and
it refuses to load under a Bytewax it was not written for, so an upgrade fails here, loudly,
instead of corrupting resume offsets.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

WRITTEN_FOR = "0.21."
BYTEWAX_VERSION = version("bytewax")
if not BYTEWAX_VERSION.startswith(WRITTEN_FOR):
    raise ImportError(
        f"feast_bytewax.kafka reads Bytewax {WRITTEN_FOR}x Kafka internals; found bytewax "
        f"{BYTEWAX_VERSION}. Install bytewax=={WRITTEN_FOR}* (as pyproject.toml pins)."
    )


def next_offset(partition: Any) -> int:
    """The offset the Bytewax partition reader will read next (its resume state)."""
    return partition._offset


def set_next_offset(partition: Any, offset: int) -> None:
    partition._offset = offset


def consumer(partition: Any) -> Any:
    """The partition reader's confluent-kafka `Consumer`."""
    return partition._consumer
