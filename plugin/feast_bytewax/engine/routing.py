"""Entity key -> routing shard.

The keyed stateful step is keyed by shard, not by entity: one engine per shard owns many
keys, tracks one watermark for them and releases their events and timers in one loop
(cheaper than one Bytewax logic object per key). The shard count is a fixed setting,
independent of the worker count, so results never depend on how many workers run.
crc32 is stable across processes and Python versions (unlike `hash()` of a str).
"""

from __future__ import annotations

from zlib import crc32

DEFAULT_SHARDS = 32


def shard_of(key: str, shards: int) -> int:
    """Stable shard index of an entity key."""
    return crc32(key.encode("utf-8")) % shards


def shard_key(key: str, shards: int) -> str:
    """Bytewax routing key (a str) for an entity key."""
    return str(crc32(key.encode("utf-8")) % shards)
