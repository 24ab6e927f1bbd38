"""How often, and for how long, the online (provisional) value differed from the exact one.

With provisional online rows (`engine.provisional`) a key's online value is a step
function of time written ahead of the watermark, and its exact value is the step function
of the offline rows, which come later, in time order. Each exact row closes an interval of
the exact function: [previous exact row, this row) held the previous row's vector. Over it
the provisional function is known by then (its rows are ahead), so the time the two
disagreed is measured exactly, per interval, and counted:

- `compared`: exact intervals compared; `divergent`: those where the two differed at all;
- `divergent_seconds`: total event-time seconds of disagreement.

Both are Prometheus counters (`feast_bytewax_online_divergent_*`, per entity) and part of
the run's summary. A key whose two functions agree and have nothing pending is forgotten,
so the tracker holds only keys in flux (bounded by the keys active within the watermark
delay), not a copy of the online store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from feast_bytewax.observability.metrics import (
    ONLINE_COMPARED,
    ONLINE_DIVERGENT,
    ONLINE_DIVERGENT_SECONDS,
)
from feast_bytewax.records import PROVISIONAL, FeatureRow


def same_vector(a: tuple, b: tuple, rel: float = 1e-9) -> bool:
    """Equal feature vectors; floats within `rel` (a correction sums in another order)."""
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y or (x != x and y != y):  # equal, or both NaN
            continue
        if isinstance(x, float) and isinstance(y, float) \
                and abs(x - y) <= rel * max(1.0, abs(x), abs(y)):
            continue
        return False
    return True


@dataclass(slots=True)
class _Key:
    before: tuple | None = None  # the provisional vector at `since` (None: no row yet)
    pending: deque = field(default_factory=deque)  # provisional (ts, vec) after `since`
    since: int | None = None  # time of the last exact row
    exact: tuple | None = None  # its vector


class Divergence:
    """Per sink partition: provisional vs exact rows of its keys (see the module doc)."""

    def __init__(self, entity: str) -> None:
        self.entity = entity
        self.keys: dict[Any, _Key] = {}
        self.compared = 0
        self.divergent = 0
        self.divergent_us = 0

    def observe(self, rows: Iterable[FeatureRow]) -> None:
        """Rows as the sink receives them (provisional and exact, in arrival order)."""
        compared = divergent = us = 0
        keys = self.keys
        for r in rows:
            k = keys.get(r.key)
            if k is None:
                k = keys[r.key] = _Key()
            if r.cause == PROVISIONAL:
                if k.since is not None and r.event_timestamp <= k.since:
                    k.before = r.values  # already covered by exact rows: the latest wins
                else:
                    k.pending.append((r.event_timestamp, r.values))
                continue
            d = self._close(k, r.event_timestamp)
            if d is not None:
                compared += 1
                if d:
                    divergent += 1
                    us += d
            k.since, k.exact = r.event_timestamp, r.values
            if not k.pending and k.before is not None and same_vector(k.before, k.exact):
                del keys[r.key]  # agreeing, nothing pending: nothing to remember
        if compared:
            self.compared += compared
            self.divergent += divergent
            self.divergent_us += us
            ONLINE_COMPARED.labels(entity=self.entity).inc(compared)
            if divergent:
                ONLINE_DIVERGENT.labels(entity=self.entity).inc(divergent)
                ONLINE_DIVERGENT_SECONDS.labels(entity=self.entity).inc(us / 1e6)

    @staticmethod
    def _close(k: _Key, until: int) -> int | None:
        """Microseconds of disagreement over [k.since, until), or None when there was no
        interval to compare (the key's first exact row here). Consumes the provisional
        rows before `until`."""
        pending = k.pending
        if k.since is None or k.exact is None:
            while pending and pending[0][0] < until:
                k.before = pending.popleft()[1]
            return None
        t, prov, off = k.since, k.before, 0
        while pending and pending[0][0] < until:
            ts, vec = pending.popleft()
            if ts > t and (prov is None or not same_vector(prov, k.exact)):
                off += ts - t
            t, prov = max(t, ts), vec
        if until > t and (prov is None or not same_vector(prov, k.exact)):
            off += until - t
        k.before = prov
        return off

    def summary(self) -> str:
        return (f"online vs exact: {self.compared} intervals compared, {self.divergent} "
                f"differed, {self.divergent_us / 1e6:.3f} s of event time in all")
