"""Feature rows as the frames Feast stores take: the columns of a batch source or a view.

Pure functions over `FeatureRow`s and Feast view objects (no store access): one DataFrame
per flush (`rows_to_frame`), its latest row per key (online), and which columns each write
target gets (`view_target`, `source_targets`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.records import FeatureRow

TIMESTAMP_COLUMN = "event_timestamp"

# EngineSpec/FeatureSpec dtype names -> pandas dtypes of the flushed frame.
PANDAS_DTYPES: dict[str, Any] = {
    "int64": "Int64",
    "int32": "Int32",
    "float64": "float64",
    "float32": "float32",
    "bool": "boolean",
    "string": object,
}


def nonnegative_seconds(value: float | timedelta, name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds >= 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return seconds


def rows_to_frame(rows: Sequence[FeatureRow], spec: EngineSpec) -> pd.DataFrame:
    """One DataFrame for a batch of rows: the join key, `event_timestamp` (datetime64[us, UTC])
    and one column per feature in `spec.feature_names` order (Int64 for int features, nullable;
    float64 for float features, None -> NaN)."""
    names = spec.feature_names
    width = len(names)
    for row in rows:
        if len(row.values) != width:
            raise ValueError(
                f"FeatureRow for key {row.key!r} at {row.event_timestamp} has "
                f"{len(row.values)} values, expected {width} ({', '.join(names)})"
            )
    columns: dict[str, Any] = {
        spec.join_key: pd.array([r.key for r in rows], dtype=object),
        TIMESTAMP_COLUMN: pd.DatetimeIndex(
            np.fromiter((r.event_timestamp for r in rows), dtype=np.int64, count=len(rows))
            .astype("datetime64[us]")
        ).tz_localize("UTC"),
    }
    by_feature = list(zip(*(r.values for r in rows), strict=True)) if rows else [()] * width
    for feature, values in zip(spec.features, by_feature, strict=True):
        dtype = PANDAS_DTYPES.get(feature.dtype, object)
        try:
            columns[feature.name] = pd.array(list(values), dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"feature {feature.name!r} ({feature.dtype}): values do not fit {dtype}: {exc}"
            ) from exc
    return pd.DataFrame(columns)


def latest_per_key(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """The newest row of each key (by event time; on a tie, the last one in the frame)."""
    if df[key].is_unique:
        return df
    ordered = df.sort_values(TIMESTAMP_COLUMN, kind="stable")
    return ordered.drop_duplicates(key, keep="last").reset_index(drop=True)


def latest_rows(rows: Iterable[FeatureRow]) -> list[FeatureRow]:
    """`latest_per_key` over plain rows: the newest row of each key (on a tie, the last)."""
    latest: dict[str, FeatureRow] = {}
    for r in rows:
        prev = latest.get(r.key)
        if prev is None or r.event_timestamp >= prev.event_timestamp:
            latest[r.key] = r
    return list(latest.values())


def feature_names(view: Any) -> list[str]:
    """A view's feature names without its join keys (a registry copy of a stream feature view
    lists the join key among its features)."""
    keys = {c.name for c in view.entity_columns} | set(getattr(view, "join_keys", []) or [])
    return [f.name for f in view.features if f.name not in keys]


@dataclass(frozen=True)
class SourceTarget:
    """One batch source: the view whose writes carry it, its columns, every view on it."""

    view: Any
    columns: tuple[str, ...]
    renames: dict[str, str]
    views: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ViewTarget:
    view: Any
    columns: tuple[str, ...]
    renames: dict[str, str]




def _timestamp_renames(source: Any) -> dict[str, str]:
    ts = source.timestamp_field or TIMESTAMP_COLUMN
    return {} if ts == TIMESTAMP_COLUMN else {TIMESTAMP_COLUMN: ts}


def view_target(view: Any, join_key: str) -> ViewTarget:
    """An online write target: the view (without its join key among the features) and the
    frame columns it takes."""
    names = feature_names(view)
    if len(names) != len(view.features):
        # A registry copy lists the join key as a feature too; writing it online would
        # store the key once more per row (a third of the writes here) for nothing.
        view = copy.copy(view)
        view.features = [f for f in view.features if f.name in names]
    return ViewTarget(view, (join_key, TIMESTAMP_COLUMN, *names),
                      _timestamp_renames(view.batch_source))


def source_targets(views: Iterable, spec: EngineSpec) -> list[SourceTarget]:
    """One offline write target per distinct batch source: every row once, with the columns
    of every view on that source (Feast's `push(to=OFFLINE)` writes the frame once per
    view)."""
    by_source: dict[str, list] = {}
    for view in views:
        by_source.setdefault(view.batch_source.name, []).append(view)
    targets = []
    for group in by_source.values():
        on_source = {n for v in group for n in feature_names(v)}
        features = tuple(n for n in spec.feature_names if n in on_source)
        targets.append(SourceTarget(group[0], (spec.join_key, TIMESTAMP_COLUMN, *features),
                                    _timestamp_renames(group[0].batch_source), tuple(group)))
    return targets
