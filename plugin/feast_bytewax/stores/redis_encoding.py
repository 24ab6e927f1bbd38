"""Feast's Redis value formats, encoded without protobuf objects, byte-for-byte.

The columnar write path of `feast_bytewax.stores.fast_redis` builds Redis keys and hash
values from plain Python/pandas values with these encoders instead of a protobuf message per
value: serialized `google.protobuf.Timestamp`s, `ValueProto`s (int32/int64/float/double/
bool/string; other types go through Feast's own conversion) and `serialize_entity_key`
entity keys. Every output equals the protobuf ``SerializeToString`` / Feast function it
replaces (tests/unit/test_fast_redis_encoding.py compares them, property-based).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import ValueType as ProtoValueType
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

__all__ = [
    "VALUE_ENCODERS",
    "encode_column",
    "entity_keys_bytes",
    "split_datetime",
    "timestamp_bytes",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_U64 = (1 << 64) - 1


def _varint_slow(value: int) -> bytes:
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [_varint_slow(v) for v in range(1 << 14)]  # 1-2 byte varints, precomputed


def _varint(value: int) -> bytes:
    """Protobuf varint of an int64/uint64 (negatives as 10-byte two's complement)."""
    if 0 <= value < 16384:
        return _SMALL_VARINTS[value]
    return _varint_slow(value)


@functools.lru_cache(maxsize=4096)
def _seconds_field(seconds: int) -> bytes:
    """Field 1 of a Timestamp; cached: the rows of one flush share few distinct seconds."""
    return b"\x08" + _varint(seconds) if seconds else b""


def timestamp_bytes(seconds: int, nanos: int) -> bytes:
    """A serialized `google.protobuf.Timestamp` (zero fields are omitted, as protobuf does)."""
    if nanos:
        return _seconds_field(seconds) + b"\x10" + _varint(nanos)
    return _seconds_field(seconds)


def split_datetime(ts: datetime) -> tuple[int, int]:
    """(seconds, nanos) of a datetime as `Timestamp.FromDatetime` stores it (naive = UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - _EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000


def _is_null(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _enc_int64(v: Any) -> bytes:
    return b"" if _is_null(v) else b"\x20" + _varint(int(v))


def _enc_int32(v: Any) -> bytes:
    return b"" if _is_null(v) else b"\x18" + _varint(int(v))


_pack_d = struct.Struct("<d").pack
_pack_f = struct.Struct("<f").pack


def _enc_double(v: Any) -> bytes:
    return b"" if _is_null(v) else b"\x29" + _pack_d(float(v))


def _enc_float(v: Any) -> bytes:
    return b"" if _is_null(v) else b"\x35" + _pack_f(float(v))


def _enc_bool(v: Any) -> bytes:
    return b"" if _is_null(v) else (b"\x38\x01" if v else b"\x38\x00")


def _enc_string(v: Any) -> bytes:
    if _is_null(v):
        return b""
    raw = str(v).encode("utf-8")
    return b"\x12" + _varint(len(raw)) + raw


VALUE_ENCODERS: dict[ValueType, Callable[[Any], bytes]] = {
    ValueType.INT64: _enc_int64,
    ValueType.INT32: _enc_int32,
    ValueType.DOUBLE: _enc_double,
    ValueType.FLOAT: _enc_float,
    ValueType.BOOL: _enc_bool,
    ValueType.STRING: _enc_string,
}


def encode_column(values: Sequence[Any] | pd.Series, value_type: ValueType) -> list[bytes]:
    """Serialized `ValueProto`s of a column, as Feast's `python_values_to_proto_values`
    would produce them (None / NA / NaN -> an empty Value, b"")."""
    encoder = VALUE_ENCODERS.get(value_type)
    if encoder is None:
        return [p.SerializeToString()
                for p in python_values_to_proto_values(list(values), value_type)]
    if isinstance(values, pd.Series):
        if value_type == ValueType.DOUBLE and values.dtype.kind == "f":
            arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
            mask = np.isnan(arr)
            return [b"" if m else b"\x29" + _pack_d(x)
                    for x, m in zip(arr.tolist(), mask.tolist(), strict=True)]
        if value_type == ValueType.INT64 and values.dtype.kind in "iu" and \
                not isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
            return [b"\x20" + _varint(x) for x in values.tolist()]
        values = values.astype(object).where(values.notna(), None).tolist()
    return [encoder(v) for v in values]


def _entity_prefix_v3(join_key: str) -> bytes:
    name = join_key.encode("utf-8")
    return struct.pack("<I", 1) + struct.pack("<I", ProtoValueType.STRING) + \
        struct.pack("<I", len(name)) + name


def entity_keys_bytes(
    join_key: str, value_type: ValueType, values: Sequence[Any], version: int
) -> list[bytes]:
    """`serialize_entity_key` of single-join-key entity keys, from plain values."""
    if version >= 3 and value_type in (ValueType.STRING, ValueType.INT64):
        prefix = _entity_prefix_v3(join_key)
        if value_type == ValueType.STRING:
            tag = struct.pack("<I", ProtoValueType.STRING)
            out = []
            for v in values:
                raw = str(v).encode("utf-8")
                out.append(prefix + tag + struct.pack("<I", len(raw)) + raw)
            return out
        tag = struct.pack("<I", ProtoValueType.INT64) + struct.pack("<I", 8)
        return [prefix + tag + struct.pack("<q", int(v)) for v in values]
    protos = python_values_to_proto_values(list(values), value_type)
    return [
        serialize_entity_key(EntityKeyProto(join_keys=[join_key], entity_values=[p]),
                             entity_key_serialization_version=version)
        for p in protos
    ]


def entity_key_bytes(entity_key: EntityKeyProto, version: int) -> bytes:
    """`serialize_entity_key`, with a shortcut for one string join key (v3)."""
    if version >= 3 and len(entity_key.join_keys) == 1:
        value = entity_key.entity_values[0]
        if value.WhichOneof("val") == "string_val":
            raw = value.string_val.encode("utf-8")
            return _entity_prefix_v3(entity_key.join_keys[0]) + \
                struct.pack("<I", ProtoValueType.STRING) + struct.pack("<I", len(raw)) + raw
    return serialize_entity_key(entity_key, entity_key_serialization_version=version)
