"""Function names of Feast `Aggregation`s -> aggregator classes.

One table for every aggregator (the exact ones in `aggregators`, the sketches in `sketches`),
so the spec compiler, the engine and the training-frame helper agree on what a name means.
"""

from __future__ import annotations

from collections.abc import Mapping

from feast_bytewax.errors import SpecError
from feast_bytewax.features.aggregators import (
    Aggregator,
    Count,
    CountDistinct,
    Max,
    Mean,
    Min,
    Sum,
)
from feast_bytewax.features.sketches import ApproxCountDistinct

REGISTRY: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (Count, Sum, Mean, Min, Max, CountDistinct, ApproxCountDistinct)
}
ALIASES = {"avg": "mean", "nunique": "count_distinct"}


def valid_functions() -> list[str]:
    """Every accepted `Aggregation.function` string, sorted (for error messages)."""
    return sorted(set(REGISTRY) | set(ALIASES))


def validate_function(function: str, where: str = "") -> str:
    """Return the canonical name, or raise `SpecError` with the list of valid ones."""
    canonical = ALIASES.get(function, function)
    if canonical not in REGISTRY:
        raise SpecError(
            f"{where}: unknown aggregation function {function!r}; valid: {valid_functions()}"
        )
    return canonical


def make_aggregator(function: str, options: Mapping[str, str] | None = None) -> Aggregator:
    """Instantiate the aggregator for a Feast `Aggregation.function` string."""
    return REGISTRY[validate_function(function, "aggregation")](options)
