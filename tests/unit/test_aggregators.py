"""One contract suite for every aggregator in the registry, checked against a naive oracle.

The oracle below is plain Python over the non-missing values (len, sum, min, max, set); it
shares no code with feast_bytewax.features.aggregators. Every registered function must have
an oracle here, so a new aggregator cannot join the registry untested.
"""

from __future__ import annotations

import math
import pickle
from functools import reduce

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feast_bytewax.features.registry import ALIASES, REGISTRY, make_aggregator
from feast_bytewax.features.sketches import ApproxCountDistinct

PROPS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------- the oracle

def present(values: list) -> list:
    """The values that count: drop None and float NaN (0, '' and False stay)."""
    return [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]


ORACLES = {
    "count": lambda v: len(v),
    "sum": lambda v: float(sum(v)),
    "mean": lambda v: sum(v) / len(v) if v else None,
    "min": lambda v: min(v) if v else None,
    "max": lambda v: max(v) if v else None,
    "count_distinct": lambda v: len(set(v)),
    "approx_count_distinct": lambda v: len(set(v)),
}
INT_RESULTS = {"count", "count_distinct", "approx_count_distinct"}
FLOAT_RESULTS = {"sum", "mean"}
APPROX = {"approx_count_distinct"}
# HLL relative standard error is about 1.04 / sqrt(2**lg_k); the default lg_k is 12.
HLL_RSE_12 = 1.04 / math.sqrt(2**12)

NAMES = sorted(ORACLES)
EXACT_REVERT = [n for n in NAMES if REGISTRY[n].exact_revert]


def oracle(name: str, values: list):
    return ORACLES[name](present(values))


def scale(values: list) -> float:
    return 1.0 + sum(abs(x) for x in present(values) if isinstance(x, int | float))


def assert_result(name: str, got, values: list, lg_k: int = 12) -> None:
    """`got` is the feature value of `values`, within each function's own tolerance."""
    expected = oracle(name, values)
    if name in APPROX:
        assert type(got) is int, got
        tol = max(1.0, 3 * 1.04 / math.sqrt(2**lg_k) * expected)
        assert abs(got - expected) <= tol, (got, expected)
    elif expected is None:
        assert got is None, got
    elif name in FLOAT_RESULTS:
        assert type(got) is float, got
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9 * scale(values)), values
    else:
        if name in INT_RESULTS:
            assert type(got) is int, got
        assert got == expected, (got, expected)


def assert_same(name: str, a, b, values: list) -> None:
    """Two feature values of the same data agree (floats up to rounding, HLL up to error)."""
    if name in APPROX:
        expected = oracle(name, values)
        assert abs(a - b) <= max(1.0, 2 * 3 * HLL_RSE_12 * expected), (a, b)
    elif name in FLOAT_RESULTS and a is not None and b is not None:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9 * scale(values))
    else:
        assert a == b, (a, b)


# ---------------------------------------------------------------- helpers and strategies

def fold(agg, values):
    ir = agg.empty()
    for x in values:
        ir = agg.update(ir, x)
    return ir


def fold_by_merge(agg, values):
    """The same data through prepare + a balanced tree of merges."""
    irs = [agg.prepare(x) for x in values] or [agg.empty()]
    while len(irs) > 1:
        irs = [agg.merge(irs[i], irs[i + 1]) if i + 1 < len(irs) else irs[i]
               for i in range(0, len(irs), 2)]
    return irs[0]


def snapshot(agg, ir):
    return pickle.dumps(ir), agg.result(ir)


MISSING = st.sampled_from([None, math.nan])
NUMBERS = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-(10**6), 10**6)
# Few categories so duplicates are common; 1, 1.0 and "1" test equality across types.
CATEGORIES = (
    st.sampled_from(["books", "toys", "garden", "Books", "", "1"])
    | st.integers(-2, 5)
    | st.sampled_from([0.0, -0.0, 1.0, 2.5])
)
ELEMENTS = {
    "count": MISSING | NUMBERS | CATEGORIES,
    "sum": MISSING | NUMBERS,
    "mean": MISSING | NUMBERS,
    "min": MISSING | NUMBERS,
    "max": MISSING | NUMBERS,
    "count_distinct": MISSING | CATEGORIES,
    "approx_count_distinct": MISSING | CATEGORIES,
}


def values_of(name: str, max_size: int = 40):
    return st.lists(ELEMENTS[name], max_size=max_size)


# ---------------------------------------------------------------- the registry

def test_every_registered_function_has_an_oracle():
    assert "approx_count_distinct" in REGISTRY
    assert set(REGISTRY) == set(ORACLES)
    assert set(ALIASES.values()) <= set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert cls.name == name
        assert cls.dtype in ("int64", "float64")


@pytest.mark.parametrize("name", NAMES)
def test_empty_gives_empty_value(name):
    agg = make_aggregator(name)
    assert agg.result(agg.empty()) == oracle(name, [])
    assert repr(agg.result(agg.empty())) == repr(REGISTRY[name].empty_value)


def test_aliases_resolve():
    assert type(make_aggregator("avg")) is REGISTRY["mean"]
    assert type(make_aggregator("nunique")) is REGISTRY["count_distinct"]


# ---------------------------------------------------------------- properties, all functions

@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_fold_matches_oracle(name, data):
    agg = make_aggregator(name)
    values = data.draw(values_of(name))
    assert_result(name, agg.result(fold(agg, values)), values)


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_prepare_and_merge_match_oracle(name, data):
    agg = make_aggregator(name)
    values = data.draw(values_of(name))
    assert_result(name, agg.result(fold_by_merge(agg, values)), values)


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_merge_of_folds_is_fold_of_concatenation(name, data):
    agg = make_aggregator(name)
    a, b = data.draw(values_of(name)), data.draw(values_of(name))
    merged = agg.result(agg.merge(fold(agg, a), fold(agg, b)))
    assert_result(name, merged, a + b)
    assert_same(name, merged, agg.result(fold(agg, a + b)), a + b)


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_merge_is_associative(name, data):
    agg = make_aggregator(name)
    a, b, c = (data.draw(values_of(name, 25)) for _ in range(3))
    left = agg.merge(agg.merge(fold(agg, a), fold(agg, b)), fold(agg, c))
    right = agg.merge(fold(agg, a), agg.merge(fold(agg, b), fold(agg, c)))
    assert_result(name, agg.result(left), a + b + c)
    assert_result(name, agg.result(right), a + b + c)
    assert_same(name, agg.result(left), agg.result(right), a + b + c)


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_merge_never_mutates_its_second_argument(name, data):
    agg = make_aggregator(name)
    a, b, more = (data.draw(values_of(name, 25)) for _ in range(3))
    second = fold(agg, b)
    before = snapshot(agg, second)
    merged = agg.merge(fold(agg, a), second)
    assert snapshot(agg, second) == before
    # ... nor shares state with it: growing the merged IR leaves `second` alone.
    merged = agg.merge(fold(agg, more), merged)
    for x in more:
        merged = agg.update(merged, x)
    assert snapshot(agg, second) == before
    assert_result(name, agg.result(second), b)
    # Merging into an empty IR must not alias the second argument either.
    into_empty = agg.merge(agg.empty(), second)
    for x in more:
        into_empty = agg.update(into_empty, x)
    assert snapshot(agg, second) == before


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_copy_shares_no_mutable_state(name, data):
    agg = make_aggregator(name)
    values, more = data.draw(values_of(name)), data.draw(values_of(name, 20))
    original = fold(agg, values)
    before = snapshot(agg, original)
    dup = agg.copy(original)
    assert snapshot(agg, dup) == before
    for x in more:
        dup = agg.update(dup, x)
    dup = agg.merge(dup, fold(agg, more))
    if agg.exact_revert:
        for x in more:
            dup = agg.revert(dup, x)
    assert snapshot(agg, original) == before
    # and the other way round: mutating the original leaves the copy alone
    dup = agg.copy(original)
    for x in more:
        original = agg.update(original, x)
    original = agg.merge(original, fold(agg, more))
    assert snapshot(agg, dup) == before


@pytest.mark.parametrize("name", NAMES)
@PROPS
@given(data=st.data())
def test_pickle_round_trip_preserves_result_and_behaviour(name, data):
    agg = make_aggregator(name)
    values, more = data.draw(values_of(name)), data.draw(values_of(name, 20))
    ir = fold(agg, values)
    back = pickle.loads(pickle.dumps(ir))
    assert agg.result(back) == agg.result(ir)
    # the restored IR keeps working like the original
    for x in more:
        ir, back = agg.update(ir, x), agg.update(back, x)
    assert agg.result(back) == agg.result(ir)
    ir = agg.merge(ir, fold(agg, more))
    back = agg.merge(back, fold(agg, more))
    assert agg.result(back) == agg.result(ir)
    assert_result(name, agg.result(back), values + more + more)


# ---------------------------------------------------------------- exact revert / unmerge

@pytest.mark.parametrize("name", EXACT_REVERT)
@PROPS
@given(data=st.data())
def test_revert_gives_fold_of_remainder_and_empties_exactly(name, data):
    agg = make_aggregator(name)
    values = data.draw(values_of(name))
    order = data.draw(st.permutations(range(len(values))))
    k = data.draw(st.integers(0, len(values)))
    removed, kept = order[:k], order[k:]
    ir = fold(agg, values)
    for i in removed:
        ir = agg.revert(ir, values[i])
    assert_result(name, agg.result(ir), [values[i] for i in kept])
    for i in kept:
        ir = agg.revert(ir, values[i])
    # No drift: exactly the empty IR, not a float residue that merely rounds to it.
    assert repr(agg.result(ir)) == repr(REGISTRY[name].empty_value)
    assert repr(ir) == repr(agg.empty())
    assert agg.result(agg.update(ir, 7.5)) == oracle(name, [7.5])


@pytest.mark.parametrize("name", EXACT_REVERT)
@PROPS
@given(data=st.data())
def test_unmerge_gives_fold_of_remainder_and_empties_exactly(name, data):
    agg = make_aggregator(name)
    a, b = data.draw(values_of(name)), data.draw(values_of(name))
    whole = agg.merge(fold(agg, a), fold(agg, b))
    sub = fold(agg, b)
    before = snapshot(agg, sub)
    rest = agg.unmerge(whole, sub)
    assert snapshot(agg, sub) == before
    assert_result(name, agg.result(rest), a)
    rest = agg.unmerge(rest, fold(agg, a))
    assert repr(agg.result(rest)) == repr(REGISTRY[name].empty_value)
    assert repr(rest) == repr(agg.empty())
    assert agg.result(agg.update(rest, 7.5)) == oracle(name, [7.5])


def test_sum_revert_leaves_no_drift_after_cancellation():
    # 0.1 + 0.2 - 0.1 - 0.2 is 2.7e-17 in floats; an emptied window must read 0.0 exactly.
    agg = make_aggregator("sum")
    ir = fold(agg, [0.1, 0.2])
    ir = agg.revert(agg.revert(ir, 0.1), 0.2)
    assert repr(agg.result(ir)) == "0.0"
    assert make_aggregator("mean").result(ir) is None


# ---------------------------------------------------------------- table of edge cases

NAN = math.nan
EDGE_CASES = [
    # inputs, then count, sum, mean, min, max, count_distinct, approx_count_distinct
    ([], 0, 0.0, None, None, None, 0, 0),
    ([None], 0, 0.0, None, None, None, 0, 0),
    ([NAN], 0, 0.0, None, None, None, 0, 0),
    ([None, NAN, None], 0, 0.0, None, None, None, 0, 0),
    ([0], 1, 0.0, 0.0, 0, 0, 1, 1),
    ([0.0], 1, 0.0, 0.0, 0.0, 0.0, 1, 1),
    ([None, 1.0, NAN], 1, 1.0, 1.0, 1.0, 1.0, 1, 1),
    ([NAN, 3.0, 1.0], 2, 4.0, 2.0, 1.0, 3.0, 2, 2),
    ([3.0, NAN, -1.0], 2, 2.0, 1.0, -1.0, 3.0, 2, 2),
    ([2, 2, 2], 3, 6.0, 2.0, 2, 2, 1, 1),
    ([1, 1.0], 2, 2.0, 1.0, 1, 1, 1, 1),
    ([0.0, -0.0], 2, 0.0, 0.0, 0.0, 0.0, 1, 1),
    ([-5.5, 2.5, None], 2, -3.0, -1.5, -5.5, 2.5, 2, 2),
    ([math.inf, 1.0], 2, math.inf, math.inf, 1.0, math.inf, 2, 2),
]
CATEGORY_CASES = [
    # inputs, then count, count_distinct, approx_count_distinct
    ([""], 1, 1, 1),
    (["a", "a", "b", None], 3, 2, 2),
    (["1", 1], 2, 2, 2),
    (["books", "Books", "books ", NAN], 3, 3, 3),
    ([False], 1, 1, 1),
]
COLUMNS = ["count", "sum", "mean", "min", "max", "count_distinct", "approx_count_distinct"]


def _edge_params():
    for values, *expected in EDGE_CASES:
        for name, want in zip(COLUMNS, expected, strict=True):
            yield pytest.param(name, values, want, id=f"{name}-{values!r}")
    for values, *expected in CATEGORY_CASES:
        cols = ["count", "count_distinct", "approx_count_distinct"]
        for name, want in zip(cols, expected, strict=True):
            yield pytest.param(name, values, want, id=f"{name}-{values!r}")


@pytest.mark.parametrize(("name", "values", "expected"), list(_edge_params()))
def test_edge_cases(name, values, expected):
    agg = make_aggregator(name)
    for got in (agg.result(fold(agg, values)), agg.result(fold_by_merge(agg, values))):
        assert repr(got) == repr(expected)
        assert type(got) is type(expected)


def test_edge_table_covers_every_function():
    assert set(COLUMNS) == set(REGISTRY)


# ---------------------------------------------------------------- approx_count_distinct

@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 30_000),
    salt=st.text(min_size=1, max_size=8),
    parts=st.integers(1, 6),
)
def test_hll_estimate_within_three_standard_errors(n, salt, parts):
    agg = ApproxCountDistinct()
    keys = [f"{salt}:{i}" for i in range(n)]
    # every key twice, spread over `parts` overlapping partial sketches, then merged
    irs = [agg.empty() for _ in range(parts)]
    for i, key in enumerate(keys + keys[::-1]):
        irs[i % parts] = agg.update(irs[i % parts], key)
    merged = reduce(agg.merge, irs)
    direct = fold(agg, keys)
    for got in (agg.result(merged), agg.result(direct)):
        assert abs(got - n) <= max(1.0, 3 * HLL_RSE_12 * n), (got, n)


def test_hll_counts_numbers_and_strings_like_python_equality():
    agg = ApproxCountDistinct()
    values = [1, 1.0, True, "1", 0.0, -0.0, 0, 2.5, "2.5", 10**30, float(10**30)]
    assert agg.result(fold(agg, values)) == len(set(values)) == 7


def test_hll_lg_k_option():
    assert ApproxCountDistinct().lg_k == 12
    agg = make_aggregator("approx_count_distinct", {"hll_lg_k": "14"})
    assert agg.lg_k == 14
    ir = fold(agg, [f"k{i}" for i in range(50_000)])
    assert abs(agg.result(ir) - 50_000) <= 3 * 1.04 / 2**7 * 50_000
    assert pickle.loads(pickle.dumps(ir)).sketch.lg_config_k == 14
    # coarse sketches are coarse, but still sketches of the same data
    coarse = make_aggregator("approx_count_distinct", {"hll_lg_k": "4"})
    assert abs(coarse.result(fold(coarse, range(10_000))) - 10_000) <= 0.5 * 10_000


@pytest.mark.parametrize("bad", ["3", "22", "-1", "twelve", "", "12.5"])
def test_hll_lg_k_option_is_validated(bad):
    with pytest.raises(ValueError, match="hll_lg_k"):
        make_aggregator("approx_count_distinct", {"hll_lg_k": bad})


def test_hll_is_not_revertible():
    agg = ApproxCountDistinct()
    assert agg.exact_revert is False
    with pytest.raises(NotImplementedError):
        agg.revert(agg.prepare("a"), "a")
