"""The fast Redis writer's encoders produce exactly the bytes Feast's own code produces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from feast_bytewax.stores.redis_encoding import (
    encode_column,
    entity_key_bytes,
    entity_keys_bytes,
    split_datetime,
    timestamp_bytes,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
DOUBLES = st.floats(allow_nan=True, allow_infinity=True)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def feast_bytes(values: list, value_type: ValueType) -> list[bytes]:
    return [p.SerializeToString() for p in python_values_to_proto_values(values, value_type)]


@pytest.mark.parametrize(("value_type", "strategy"), [
    (ValueType.INT64, INT64),
    (ValueType.INT32, INT32),
    (ValueType.DOUBLE, DOUBLES),
    (ValueType.FLOAT, FLOAT32),
    (ValueType.BOOL, st.booleans()),
    (ValueType.STRING, st.text()),
])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_values_encode_like_feast(value_type, strategy, data):
    values = data.draw(st.lists(st.one_of(st.none(), strategy), min_size=1, max_size=30))
    if all(v is None for v in values):
        values.append(data.draw(strategy))  # Feast infers nothing from an all-null list
    assert encode_column(values, value_type) == feast_bytes(values, value_type)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), DOUBLES), min_size=1, max_size=30),
       st.lists(st.one_of(st.none(), INT64), min_size=1, max_size=30))
def test_pandas_columns_encode_like_feast(doubles, ints):
    float_col = pd.Series([np.nan if v is None else v for v in doubles], dtype="float64")
    assert encode_column(float_col, ValueType.DOUBLE) == \
        feast_bytes(float_col.tolist(), ValueType.DOUBLE)
    nullable = pd.Series(pd.array(ints, dtype="Int64"))
    want = feast_bytes([None if v is pd.NA else int(v) for v in nullable], ValueType.INT64)
    assert encode_column(nullable, ValueType.INT64) == want
    dense = pd.Series([0 if v is None else v for v in ints], dtype="int64")
    assert encode_column(dense, ValueType.INT64) == feast_bytes(dense.tolist(), ValueType.INT64)
    floats_ext = pd.Series(pd.array(doubles, dtype="Float64"))
    assert encode_column(floats_ext, ValueType.DOUBLE) == \
        feast_bytes(list(doubles), ValueType.DOUBLE)


def test_unsupported_types_fall_back_to_feast():
    values = [[1, 2], None, [3]]
    assert encode_column(values, ValueType.INT64_LIST) == feast_bytes(values, ValueType.INT64_LIST)


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                    timezones=st.just(UTC)))
def test_timestamps_encode_like_protobuf(dt):
    ts = Timestamp()
    ts.FromDatetime(dt)
    assert timestamp_bytes(*split_datetime(dt)) == ts.SerializeToString()
    assert split_datetime(dt.replace(tzinfo=None)) == split_datetime(dt)  # naive = UTC


def test_epoch_timestamp_is_empty_bytes():
    assert timestamp_bytes(*split_datetime(datetime(1970, 1, 1, tzinfo=UTC))) == b""
    assert split_datetime(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=1)) == (0, 1000)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1), min_size=1, max_size=10), st.lists(INT64, min_size=1))
def test_entity_keys_serialize_like_feast(strings, ints):
    want = [serialize_entity_key(EntityKeyProto(join_keys=["user_id"],
                                                entity_values=[ValueProto(string_val=s)]), 3)
            for s in strings]
    assert entity_keys_bytes("user_id", ValueType.STRING, strings, 3) == want
    protos = [EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(string_val=s)])
              for s in strings]
    assert [entity_key_bytes(p, 3) for p in protos] == want
    want_int = [serialize_entity_key(EntityKeyProto(join_keys=["n"],
                                                    entity_values=[ValueProto(int64_val=i)]), 3)
                for i in ints]
    assert entity_keys_bytes("n", ValueType.INT64, ints, 3) == want_int
    assert entity_keys_bytes("n", ValueType.INT32, [1, -2], 3) == [
        serialize_entity_key(EntityKeyProto(join_keys=["n"],
                                            entity_values=[ValueProto(int32_val=i)]), 3)
        for i in (1, -2)
    ]
