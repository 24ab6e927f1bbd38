"""Point-in-time training frames that keep every input row and mean what the stream meant.

`get_historical_features` on a file store drops or collapses some entity rows (duplicate
(key, time) pairs, keys with no feature row yet) and returns nulls where the stream's value
was, say, a count of 0. This wraps it:

- the entity frame is de-duplicated before the call and the result joined back on
  (join key, timestamp), so the output has exactly one row per input row, in input order;
- where a view has no row for a key at or before t (all its features null), its features
  take their empty-window values from the definitions (count 0, mean null, ...): before a
  user's first event, or for a user never seen, that *is* value(k, t).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from feast_bytewax.errors import SpecError
from feast_bytewax.features.registry import make_aggregator
from feast_bytewax.features.spec import EngineSpec, load_flow_spec


def empty_values(spec: EngineSpec) -> dict[str, Any]:
    """Feature name -> its value over an empty window."""
    return {f.name: make_aggregator(f.function, dict(f.options)).empty_value
            for f in spec.features}


def entity_for(store: Any, entity_df: pd.DataFrame) -> EngineSpec:
    """The registered entity whose join key `entity_df` carries."""
    entities = load_flow_spec(store).entities
    hits = [e for e in entities if e.join_key in entity_df.columns]
    if len(hits) != 1:
        raise SpecError(f"entity_df must carry exactly one join key of "
                        f"{[e.join_key for e in entities]}; it has {list(entity_df.columns)}")
    return hits[0]


def training_frame(
    store: Any,
    entity_df: pd.DataFrame,
    features: Any,
    spec: EngineSpec | None = None,
    timestamp_column: str = "event_timestamp",
) -> pd.DataFrame:
    """`entity_df` (join key, tz-aware timestamps, any label columns) + feature columns.

    `features` is a FeatureService or a list of "view:feature" references, as for Feast.
    `spec` defaults to the registry's entity whose join key is a column of `entity_df`.
    """
    spec = spec or entity_for(store, entity_df)
    key = spec.join_key
    ts = pd.to_datetime(entity_df[timestamp_column], utc=True)
    query = pd.DataFrame({key: entity_df[key].to_numpy(), timestamp_column: ts.to_numpy()})
    query[timestamp_column] = pd.to_datetime(query[timestamp_column], utc=True)
    query = query.drop_duplicates().reset_index(drop=True)
    got = store.get_historical_features(entity_df=query, features=features).to_df()
    got[timestamp_column] = pd.to_datetime(got[timestamp_column], utc=True)
    names = [c for c in got.columns if c not in (key, timestamp_column)]
    left = entity_df.copy()
    left["__ts"] = ts.to_numpy()
    left["__ts"] = pd.to_datetime(left["__ts"], utc=True)
    left["__row"] = range(len(left))
    got = got.rename(columns={timestamp_column: "__ts"})
    clash = [c for c in names if c in left.columns]
    if clash:
        raise ValueError(f"entity_df already has feature columns {clash}")
    out = left.merge(got[[key, "__ts", *names]], on=[key, "__ts"], how="left")
    out = out.sort_values("__row").drop(columns=["__ts", "__row"]).reset_index(drop=True)
    empties = empty_values(spec)
    by_view: dict[str, list[str]] = {}
    for f in spec.features:
        if f.name in names:
            by_view.setdefault(f.view, []).append(f.name)
    for cols in by_view.values():
        missing = out[cols].isna().all(axis=1)
        if not missing.any():
            continue
        for c in cols:
            if empties[c] is not None:
                out.loc[missing, c] = empties[c]
    for f in spec.features:
        if f.name in out.columns and f.dtype.startswith("int"):
            out[f.name] = out[f.name].astype("Int64")
    return out
