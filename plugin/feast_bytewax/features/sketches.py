"""Approximate aggregators backed by Apache DataSketches, with the aggregator contract.

`approx_count_distinct` keeps an HLL sketch (`datasketches.hll_sketch`, HLL_8 registers) of
2**lg_k buckets per IR: constant memory however many distinct values a window holds, at a
relative standard error of about 1.04 / sqrt(2**lg_k) (1.6 % for the default lg_k = 12).
`lg_k` comes from the view tag `feast_bytewax.hll_lg_k` (options key `hll_lg_k`).

HLL cannot take a value back out, so `exact_revert` is False: sliding windows combine panes
with the two-stacks queue, as for min/max.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from datasketches import hll_sketch, hll_union, tgt_hll_type

from feast_bytewax.features.aggregators import Aggregator

OPTION_LG_K = "hll_lg_k"
DEFAULT_LG_K = 12
MIN_LG_K, MAX_LG_K = 4, 21
_TGT = tgt_hll_type.HLL_8


def _hash_key(x: Any) -> str:
    """The string an HLL hashes for a value: a type tag, then a canonical text.

    The tag keeps the number 1 and the string "1" distinct, and makes the empty string a
    value (DataSketches silently ignores empty strings). Values Python calls equal count
    once, as in the exact `count_distinct`: 1, 1.0 and True; 0.0 and -0.0.
    """
    if isinstance(x, str):
        return "s" + x
    if isinstance(x, numbers.Integral):
        return f"n{int(x)}"
    if isinstance(x, numbers.Real):
        f = float(x)
        return f"n{int(f)}" if f.is_integer() else f"n{f!r}"
    return f"o{x}"


class HllState:
    """A picklable holder of one `hll_sketch` (the sketch itself cannot be pickled)."""

    __slots__ = ("sketch",)

    def __init__(self, sketch: hll_sketch) -> None:
        self.sketch = sketch

    def __getstate__(self) -> bytes:
        return self.sketch.serialize_compact()

    def __setstate__(self, state: bytes) -> None:
        self.sketch = hll_sketch.deserialize(state)

    def __repr__(self) -> str:
        return f"HllState(lg_k={self.sketch.lg_config_k}, estimate={self.sketch.get_estimate()})"


def _lg_k(options: Mapping[str, str]) -> int:
    raw = options.get(OPTION_LG_K, DEFAULT_LG_K)
    try:
        lg_k = int(str(raw).strip())
    except ValueError:
        raise ValueError(
            f"option {OPTION_LG_K!r} must be an integer in {MIN_LG_K}..{MAX_LG_K}, got {raw!r}"
        ) from None
    if not MIN_LG_K <= lg_k <= MAX_LG_K:
        raise ValueError(
            f"option {OPTION_LG_K!r} must be in {MIN_LG_K}..{MAX_LG_K}, got {lg_k}"
        )
    return lg_k



class ApproxCountDistinct(Aggregator):
    """Approximate number of distinct non-missing values (HLL). IR: `HllState`."""

    name = "approx_count_distinct"
    dtype = "int64"
    exact_revert = False
    empty_value = 0

    def __init__(self, options: Mapping[str, str] | None = None) -> None:
        super().__init__(options)
        self.lg_k = _lg_k(self.options)

    def empty(self) -> HllState:
        return HllState(hll_sketch(self.lg_k, _TGT))

    def update(self, ir: HllState, x: Any) -> HllState:
        if x is None or x != x:
            return ir
        ir.sketch.update(_hash_key(x))
        return ir

    def merge(self, a: HllState, b: HllState) -> HllState:
        if b.sketch.is_empty():
            return a
        union = hll_union(self.lg_k)
        union.update(a.sketch)
        union.update(b.sketch)
        a.sketch = union.get_result(_TGT)
        return a

    def result(self, ir: HllState) -> int:
        return round(ir.sketch.get_estimate())

    def copy(self, ir: HllState) -> HllState:
        return HllState(hll_sketch.deserialize(ir.sketch.serialize_updatable()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lg_k={self.lg_k})"
