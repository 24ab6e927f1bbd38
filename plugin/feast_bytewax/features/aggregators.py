"""One small class per aggregation function, one contract for all of them.

Contract (chronon's IR verbs, river's one-class-per-statistic):

- `empty()` -> the IR of no values; `prepare(x)` -> the IR of one value;
- `update(ir, x)` folds one value in; `merge(a, b)` combines two IRs;
- `revert(ir, x)` / `unmerge(a, b)` take a value / an IR back out, only where that is exact
  (`exact_revert = True`): sliding windows subtract an evicted pane instead of re-folding;
- `result(ir)` -> the feature value; the empty IR gives `empty_value` (0 for counts, None for
  mean/min/max; see the table in README);
- `copy(ir)` -> an IR that shares no mutable state with `ir`.

`update`, `merge`, `revert` and `unmerge` may mutate their first argument and return the new
IR: callers always use the return value. They never mutate the second argument. IRs are
picklable (they are snapshotted for recovery).

Missing values (None, NaN) are skipped by every function: they change no IR.
The registry of function names is `feast_bytewax.features.registry`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar


def is_missing(x: Any) -> bool:
    """None and float NaN are missing; everything else (0, '', False) is a value."""
    return x is None or (isinstance(x, float) and math.isnan(x))


class Aggregator(ABC):
    """Base class; subclasses set `name`, `dtype`, `exact_revert`, `empty_value`."""

    name: ClassVar[str]
    dtype: ClassVar[str]
    exact_revert: ClassVar[bool] = False
    # True when `merge(a, b)` always equals a or b (min, max): a sliding window can then
    # drop every candidate that a newer one dominates.
    monotonic: ClassVar[bool] = False
    empty_value: ClassVar[Any] = None

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        self.options = dict(options or {})

    @abstractmethod
    def empty(self) -> Any: ...

    def prepare(self, x: Any) -> Any:
        return self.update(self.empty(), x)

    @abstractmethod
    def update(self, ir: Any, x: Any) -> Any: ...

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any: ...

    def revert(self, ir: Any, x: Any) -> Any:
        raise NotImplementedError(f"{self.name} has no exact revert")

    def unmerge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError(f"{self.name} has no exact unmerge")

    @abstractmethod
    def result(self, ir: Any) -> Any: ...

    def copy(self, ir: Any) -> Any:
        return ir

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Count(Aggregator):
    """Number of non-missing values. IR: int."""

    name = "count"
    dtype = "int64"
    exact_revert = True
    empty_value = 0

    def empty(self) -> int:
        return 0

    def update(self, ir: int, x: Any) -> int:
        return ir if x is None or x != x else ir + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def revert(self, ir: int, x: Any) -> int:
        return ir if x is None or x != x else ir - 1

    def unmerge(self, a: int, b: int) -> int:
        return a - b

    def result(self, ir: int) -> int:
        return ir


class Sum(Aggregator):
    """Sum of values; 0.0 when empty. IR: [sum, n]; n lets an emptied window reset the float
    sum to exactly 0, so subtract-on-evict cannot leave drift behind."""

    name = "sum"
    dtype = "float64"
    exact_revert = True
    empty_value = 0.0

    def empty(self) -> list:
        return [0.0, 0]

    def update(self, ir: list, x: Any) -> list:
        if x is None or x != x:
            return ir
        ir[0] += x
        ir[1] += 1
        return ir

    def merge(self, a: list, b: list) -> list:
        a[0] += b[0]
        a[1] += b[1]
        return a

    def revert(self, ir: list, x: Any) -> list:
        if x is None or x != x:
            return ir
        ir[1] -= 1
        ir[0] = ir[0] - x if ir[1] else 0.0
        return ir

    def unmerge(self, a: list, b: list) -> list:
        a[1] -= b[1]
        a[0] = a[0] - b[0] if a[1] else 0.0
        return a

    def result(self, ir: list) -> float:
        return ir[0] if ir[1] else 0.0

    def copy(self, ir: list) -> list:
        return [ir[0], ir[1]]


class Mean(Sum):
    """Arithmetic mean; None when empty. Same IR as `Sum`."""

    name = "mean"
    empty_value = None

    def result(self, ir: list) -> float | None:
        return ir[0] / ir[1] if ir[1] else None


class _Extreme(Aggregator):
    """Min or max; None when empty. IR: the value or None. Not revertible, but `monotonic`:
    sliding windows keep a monotonic queue of (pane, best) candidates (see panes.py), so a
    24 h max holds a handful of entries instead of every pane of the day."""

    dtype = "float64"
    monotonic = True
    _pick: ClassVar[Any]

    def empty(self) -> None:
        return None

    def update(self, ir: Any, x: Any) -> Any:
        if x is None or x != x:
            return ir
        return x if ir is None else type(self)._pick(ir, x)

    def merge(self, a: Any, b: Any) -> Any:
        if b is None:
            return a
        return b if a is None else type(self)._pick(a, b)

    def result(self, ir: Any) -> Any:
        return ir


class Max(_Extreme):
    name = "max"
    _pick = max


class Min(_Extreme):
    name = "min"
    _pick = min


class CountDistinct(Aggregator):
    """Exact number of distinct non-missing values. IR: {value: multiplicity}; the
    multiplicities make pane eviction exact."""

    name = "count_distinct"
    dtype = "int64"
    exact_revert = True
    empty_value = 0

    def empty(self) -> dict:
        return {}

    def update(self, ir: dict, x: Any) -> dict:
        if x is None or x != x:
            return ir
        ir[x] = ir.get(x, 0) + 1
        return ir

    def merge(self, a: dict, b: dict) -> dict:
        for k, c in b.items():
            a[k] = a.get(k, 0) + c
        return a

    def revert(self, ir: dict, x: Any) -> dict:
        if x is None or x != x:
            return ir
        c = ir[x] - 1
        if c:
            ir[x] = c
        else:
            del ir[x]
        return ir

    def unmerge(self, a: dict, b: dict) -> dict:
        for k, c in b.items():
            left = a[k] - c
            if left:
                a[k] = left
            else:
                del a[k]
        return a

    def result(self, ir: dict) -> int:
        return len(ir)

    def copy(self, ir: dict) -> dict:
        return dict(ir)
