"""Records as they cross Bytewax's exchange and sit in snapshots: pickled by their fields, every
field kept; sinks flatten the lists the dataflow exchanges (`records.unbatch`)."""

from __future__ import annotations

import pickle
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feast_bytewax.records import (
    Event,
    FeatureRow,
    Late,
    Mark,
    Rejected,
    TableVersion,
    unbatch,
)

scalars = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))


def records():
    """Every record kind, every field set to something other than its default."""
    event = st.builds(
        Event, event_id=st.one_of(st.integers(), st.text(max_size=5)), user_id=st.text(),
        event_type=st.sampled_from(["view", "purchase"]), amount=st.floats(allow_nan=False),
        category=st.text(max_size=5), event_timestamp=st.integers(),
        origin=st.text(min_size=1), extra=st.dictionaries(st.text(max_size=3), scalars),
        part=st.integers(0, 9), frontier=st.integers(),
        joined=st.dictionaries(st.text(max_size=3), st.tuples(st.integers(),
                                                              st.dictionaries(st.text(), scalars))))
    version = st.builds(TableVersion, view=st.text(), key=st.text(), valid_from=st.integers(),
                        values=st.dictionaries(st.text(max_size=3), scalars),
                        origin=st.text(min_size=1), part=st.integers(0, 9),
                        frontier=st.integers())
    return st.one_of(
        event, version,
        st.builds(Rejected, payload=st.text(), reason=st.text(), origin=st.text(),
                  raw=st.binary(min_size=1), no_value=st.just(True)),
        st.builds(Late, event=event, reason=st.text(), watermark=st.integers()),
        st.builds(FeatureRow, key=st.text(), event_timestamp=st.integers(),
                  values=st.tuples(scalars, scalars), cause=st.text()),
        st.builds(Mark, part=st.integers(), frontier=st.one_of(st.none(), st.integers()),
                  state=st.sampled_from(["active", "idle", "done"])))


@given(st.lists(records(), max_size=5))
def test_every_record_survives_a_pickle_round_trip_field_for_field(batch):
    for protocol in (pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL):
        back = pickle.loads(pickle.dumps(batch, protocol=protocol))
        assert back == batch
        for a, b in zip(back, batch, strict=True):
            assert type(a) is type(b)
            assert [getattr(a, f.name) for f in fields(a)] == [getattr(b, f.name)
                                                               for f in fields(b)]


@pytest.mark.parametrize("cls", [Event, TableVersion, Rejected, Late, FeatureRow, Mark])
def test_records_pickle_as_their_class_and_field_values(cls):
    """The compact form (no copyreg state dict): what makes the exchange cheap."""
    assert "__reduce__" in vars(cls)


def test_unbatch_flattens_the_exchanged_lists_and_passes_single_records():
    rows = [FeatureRow("u1", 1, (1,), "event"), FeatureRow("u2", 2, (2,), "event")]
    rejected = Rejected("x", "bad_json: x", "f:1")
    assert unbatch([rows[:1], rejected, rows[1:], []]) == [rows[0], rejected, rows[1]]
    assert unbatch(rows) == rows
