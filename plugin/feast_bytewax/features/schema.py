"""The event schema the features may read: the spec's six fields plus declared extra columns.

shared/spec/events.md fixes six fields (`event_id`, `user_id`, `event_type`, `amount`,
`category`, `event_timestamp`) with their validation rules. Anything else an aggregation,
a filter or an entity key reads (a `merchant_id`, a `discount`) is declared once, in
`feast_repo/`, as a column of the event stream's `KafkaSource` message format
(`JsonFormat(schema_json="merchant_id STRING, discount DOUBLE, ...")`, Spark DDL as in Feast's
own stream processor). Declared extra columns are validated by their type; a column a
definition reads but nobody declared is a `SpecError` when the definitions compile, not an
`AttributeError` inside a worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from feast_bytewax.errors import SpecError

# Spark DDL type names -> the kinds validation knows.
DDL_KINDS = {
    "string": "string", "varchar": "string", "char": "string",
    "bigint": "int", "long": "int", "int": "int", "integer": "int", "smallint": "int",
    "tinyint": "int", "short": "int", "byte": "int",
    "double": "double", "float": "double", "real": "double",
    "boolean": "bool", "bool": "bool",
    "timestamp": "timestamp",
}
# The spec's fields and the kinds they have (event_id may be an int or a string).
CORE_KINDS = {
    "event_id": "id", "user_id": "string", "event_type": "string", "amount": "double",
    "category": "string", "event_timestamp": "timestamp",
}
NUMERIC_KINDS = frozenset({"int", "double"})
_COMPATIBLE = {"id": {"int", "string"}}
_FIELD = re.compile(r"^`?([A-Za-z_][A-Za-z0-9_]*)`?\s+([A-Za-z]+)(\s*\([^)]*\))?(\s+NOT\s+NULL)?$",
                    re.IGNORECASE)



@dataclass(frozen=True, slots=True)
class EventSchema:
    """Columns an event may carry: the spec's six, plus `extra` (column, kind) pairs."""

    extra: tuple[tuple[str, str], ...] = ()
    declared_by: str | None = None  # the KafkaSource whose message format declared it

    def kind(self, column: str) -> str | None:
        if column in CORE_KINDS:
            return CORE_KINDS[column]
        return dict(self.extra).get(column)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*CORE_KINDS, *(c for c, _ in self.extra))

    @property
    def extra_columns(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.extra)

    def where(self) -> str:
        if self.declared_by:
            return f"KafkaSource {self.declared_by!r}"
        return "the spec's event fields"


def parse_schema_ddl(ddl: str, declared_by: str | None = None) -> EventSchema:
    """`"merchant_id STRING, discount DOUBLE"` -> an `EventSchema`. The spec's own fields may be
    listed too (with a compatible type); anything unknown is a `SpecError`."""
    who = f"KafkaSource {declared_by!r}" if declared_by else "event schema"
    extra: list[tuple[str, str]] = []
    for item in filter(None, (p.strip() for p in ddl.split(","))):
        m = _FIELD.match(item)
        if not m:
            raise SpecError(f"{who}: schema field {item!r} is not `name TYPE` (Spark DDL)")
        name, type_name = m.group(1), m.group(2).lower()
        kind = DDL_KINDS.get(type_name)
        if kind is None:
            raise SpecError(f"{who}: column {name!r} has type {type_name.upper()}; supported: "
                            f"{sorted({t.upper() for t in DDL_KINDS})}")
        core = CORE_KINDS.get(name)
        if core is not None:
            if kind != core and kind not in _COMPATIBLE.get(core, ()):
                raise SpecError(f"{who}: column {name!r} is {type_name.upper()}, but the event "
                                f"spec makes it {core}")
            continue
        if name in dict(extra):
            raise SpecError(f"{who}: column {name!r} is declared twice")
        extra.append((name, kind))
    return EventSchema(tuple(extra), declared_by)
