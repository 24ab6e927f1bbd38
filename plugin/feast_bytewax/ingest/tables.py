"""Joined-table versions as input: validation, and the input set events and tables share.

A version of a joined view (`features.inputs.TableSpec`, e.g. a user profile) arrives as a
parquet row or a JSON message (a Kafka topic keyed by the join key, latest value per key
wins) with the view's join key, features and timestamp field (`updated_at`: the time from
which the version is valid). `TableValidator` turns it into a `records.TableVersion` or a
`Rejected` with a reason code, by the same rules as event columns (`ingest.validate`):
a missing or empty key, a missing, naive or non-ISO time, a value of the wrong type, an
int32 out of range. Null features are allowed (the version says "unknown").

`InputSet` puts the event partitions and every table's partitions into one partitioned
source, so one `ingest.partitions.EventTimeSource` stamps them all with their partition's
frontier and one watermark (the minimum over all of them) orders versions and events: a
version is applied with the events of its time, whatever partition it came from. The event
partitions keep their indices (a table's come after them) and names; a table's partitions are
named ``<view>:<part>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from feast_bytewax.features.inputs import TableSpec
from feast_bytewax.ingest.timestamps import MIN_EVENT_US, parse_timestamp_us
from feast_bytewax.ingest.validate import column_value, reject
from feast_bytewax.records import Rejected, TableVersion, iso_us

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class TableValidator:
    """Raw table rows of one view -> `TableVersion` or `Rejected`. Versions days apart are
    normal for a slowly changing table: none is held as an outlier clock."""

    holds_outliers = False

    def __init__(self, table: TableSpec, max_future_us: int) -> None:
        self.table = table
        self.max_future_us = max_future_us
        self._columns = tuple((c.name, c.kind, c.dtype) for c in table.features)

    def validate(self, payload: Any, origin: str, now_us: int) -> TableVersion | Rejected:
        if isinstance(payload, dict):
            rec = payload
        else:
            try:
                rec = json.loads(payload)
            except (ValueError, TypeError, RecursionError) as e:
                return reject(payload, f"bad_json: {str(e)[:117]}", origin)
            if type(rec) is not dict:
                return reject(payload, "not_object: expected a JSON object, got "
                              f"{type(rec).__name__}", origin)
        table = self.table
        key = rec.get(table.join_key)
        if key is None:
            return reject(payload, f"missing_field: {table.join_key}", origin)
        if not isinstance(key, str):
            return reject(payload, f"bad_type: {table.join_key} must be a string, got "
                          f"{type(key).__name__}", origin)
        if not key:
            return reject(payload, f"empty_field: {table.join_key}", origin)
        ts_field = table.timestamp_field
        raw_ts = rec.get(ts_field)
        if raw_ts is None:
            return reject(payload, f"missing_field: {ts_field}", origin)
        ts = parse_timestamp_us(raw_ts)
        if type(ts) is not int:
            return reject(payload, ts.replace("event_timestamp", ts_field), origin)
        if ts < MIN_EVENT_US:
            return reject(payload, f"bad_timestamp: {ts_field} is before 1900-01-01", origin)
        if ts - now_us > self.max_future_us:
            return reject(payload, f"future_timestamp: {ts_field} is in the future by "
                          f"{(ts - now_us) / 1e6:.0f} s (max {self.max_future_us / 1e6:.0f} s)",
                          origin)
        values: dict[str, Any] = {}
        for name, kind, dtype in self._columns:
            value, reason = column_value(name, kind, rec.get(name))
            if reason is None and dtype == "int32" and value is not None \
                    and not INT32_MIN <= value <= INT32_MAX:
                reason = f"bad_type: {name} {value} is out of the int32 range"
            if reason is not None:
                return reject(payload, reason, origin)
            values[name] = value
        return TableVersion(table.view, key, ts, values, origin)

    def payload_of(self, v: TableVersion) -> str:
        """A version as the JSON object this validator accepts (for a dead letter)."""
        table = self.table
        return json.dumps({table.join_key: v.key, **v.values,
                           table.timestamp_field: iso_us(v.valid_from)}, default=str)


def table_part(view: str, part: str) -> str:
    return f"{view}:{part}"


class InputSet(FixedPartitionedSource[Any, Any]):
    """The event source's partitions, then each joined table's (``<view>:<part>``).

    :arg events: the event source (raw ``(payload, origin)`` items).
    :arg tables: view name -> a source of that view's raw version rows.
    """

    def __init__(self, events: FixedPartitionedSource,
                 tables: Mapping[str, FixedPartitionedSource]) -> None:
        self.events = events
        self.tables = dict(tables)
        self._order: list[str] | None = None
        self._owner: dict[str, tuple[str | None, str]] = {}

    def partition_order(self) -> list[str]:
        """Every partition: the events' (sorted) first, so their indices do not depend on
        which tables are joined; then each table's, by view."""
        if self._order is None:
            order = sorted(self.events.list_parts())
            owner: dict[str, tuple[str | None, str]] = {p: (None, p) for p in order}
            for view in sorted(self.tables):
                parts = sorted(self.tables[view].list_parts())
                named = [table_part(view, p) for p in parts]
                owner.update({n: (view, p) for n, p in zip(named, parts, strict=True)})
                order += named
            self._order, self._owner = order, owner
        return self._order

    def list_parts(self) -> list[str]:
        return list(self.partition_order())

    def view_of(self, part: str) -> str | None:
        """The joined view a partition carries (None: events)."""
        self.partition_order()
        return self._owner[part][0]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: Any) -> StatefulSourcePartition:
        self.partition_order()
        view, inner = self._owner[for_part]
        source = self.events if view is None else self.tables[view]
        return source.build_part(step_id, inner, resume_state)
