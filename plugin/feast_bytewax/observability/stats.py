"""Counters that prove nothing is lost: consumed = processed + late + rejected + duplicates
(per entity).

`FlowStats` is per dataflow run (commands print it at the end); every increment is mirrored
to the process-wide Prometheus counters of `observability.metrics`. One run may serve several
entities (one feature step per join key): each entity step accounts for every valid event,
as processed, late, duplicate, or `unkeyed` (the event has no value for that entity's key),
so the law holds for each of them separately.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from feast_bytewax.observability.metrics import ENTITY_COUNTERS, PROM_ENTITY, PROM_RUN

ENTITY_FIELDS = tuple(ENTITY_COUNTERS)


@dataclass
class FlowStats:
    """Thread-safe run counters (Bytewax workers of one process are threads)."""

    consumed: int = 0
    rejected: int = 0
    rows_offline: int = 0
    rows_online: int = 0
    entities: dict[str, dict[str, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # (counter, entity) -> its labelled child: `labels()` takes a lock and builds a key per
    # call, and every shard reports after every batch
    _children: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False,
                                                  compare=False)

    def declare(self, entities: Iterable[str]) -> None:
        """Name the entity steps of the run (so a silent one still shows zeros)."""
        with self._lock:
            for e in entities:
                self.entities.setdefault(e, dict.fromkeys(ENTITY_FIELDS, 0))

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, value in deltas.items():
                if value:
                    setattr(self, name, getattr(self, name) + value)
                    PROM_RUN[name].inc(value)

    def add_entity(self, entity: str, **deltas: int) -> None:
        with self._lock:
            row = self.entities.setdefault(entity, dict.fromkeys(ENTITY_FIELDS, 0))
            for name, value in deltas.items():
                if value:
                    row[name] += value
                    child = self._children.get((name, entity))
                    if child is None:
                        child = self._children[name, entity] = PROM_ENTITY[name].labels(
                            entity=entity)
                    child.inc(value)

    def _total(self, name: str) -> int:
        return sum(row[name] for row in self.entities.values())

    # Totals over entities (with one entity: that entity's counters).
    @property
    def processed(self) -> int:
        return self._total("processed")

    @property
    def late(self) -> int:
        return self._total("late")

    @property
    def duplicates(self) -> int:
        return self._total("duplicates")

    @property
    def corrections(self) -> int:
        return self._total("corrections")

    @property
    def rows(self) -> int:
        return self._total("rows")

    @property
    def versions(self) -> int:
        return self._total("versions")

    def as_dict(self) -> dict[str, int]:
        out = {"consumed": self.consumed, "processed": self.processed, "late": self.late,
               "rejected": self.rejected, "duplicates": self.duplicates,
               "corrections": self.corrections, "rows": self.rows,
               "rows_offline": self.rows_offline, "rows_online": self.rows_online}
        return out

    def balanced(self) -> bool:
        """The conservation law, for every entity step, once the input is drained."""
        valid = self.consumed - self.rejected
        with self._lock:
            rows = list(self.entities.values())
        if not rows:
            return valid == 0
        return all(r["processed"] + r["late"] + r["unkeyed"] + r["duplicates"] == valid
                   for r in rows)

    def summary(self) -> str:
        d = self.as_dict()
        verdict = "ok" if self.balanced() else "UNBALANCED"
        text = (f"consumed={d['consumed']} processed={d['processed']} late={d['late']} "
                f"rejected={d['rejected']} duplicates={d['duplicates']} "
                f"corrections={d['corrections']} rows={d['rows']} "
                f"pushed_offline={d['rows_offline']} pushed_online={d['rows_online']}")
        if self.versions:
            text += (f" versions={self.versions} late_versions={self._total('late_versions')}")
        if len(self.entities) <= 1:
            return text + (" [consumed = processed + late + rejected + duplicates: "
                           f"{verdict}]")
        text += " [" + "; ".join(
            f"{e}: processed={r['processed']} late={r['late']} unkeyed={r['unkeyed']} "
            f"rows={r['rows']}" for e, r in sorted(self.entities.items())) + "]"
        return text + (" [per entity, consumed = processed + late + unkeyed + rejected + "
                       f"duplicates: {verdict}]")
