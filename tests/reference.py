"""Brute-force reference for shared/spec/features.md, written from the spec text alone.

Every engine test compares against this module, so it is deliberately naive: each value is
recomputed from the raw event list by the formula in features.md, with no panes, no
incremental state and no shared code with the engine (engine.py, panes.py) or with
aggregators.py. Only spec.py is used, to read the compiled feature definitions.

Events are dicts with the fields of shared/spec/events.md; `event_timestamp` is epoch
microseconds (int). An event's identity is its index in the list passed in.

Visibility (late-but-allowed events): `visible` maps an event index to the time from which
the event counts (its own event time when on time, the watermark when it is a correction),
or to None when the event is late and never counts. Indices missing from `visible` count
from their own event time; `visible=None` means every event is on time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from feast_bytewax.features.spec import EngineSpec, FeatureSpec, compile_views

# What a feature is worth over no events (the table in aggregators.py / README).
EMPTY: dict[str, Any] = {
    "count": 0,
    "sum": 0.0,
    "mean": None,
    "min": None,
    "max": None,
    "count_distinct": 0,
    "approx_count_distinct": 0,
}
ALIASES = {"avg": "mean", "nunique": "count_distinct"}

Visible = Mapping[int, int | None] | None
Item = tuple[dict, int]  # (event, time from which it is visible)


def canonical(function: str) -> str:
    return ALIASES.get(function, function)


def empty_value(function: str) -> Any:
    return EMPTY[canonical(function)]


def empty_vector(spec: EngineSpec) -> tuple:
    return tuple(empty_value(f.function) for f in spec.features)


def is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def aggregate(function: str, values: Sequence[Any]) -> Any:
    """Aggregate the non-missing values; exact (fsum) so it is the best float there is."""
    xs = [x for x in values if not is_missing(x)]
    fn = canonical(function)
    if not xs:
        return EMPTY[fn]
    if fn == "count":
        return len(xs)
    if fn == "sum":
        return math.fsum(xs)
    if fn == "mean":
        return math.fsum(xs) / len(xs)
    if fn == "min":
        return min(xs)
    if fn == "max":
        return max(xs)
    if fn in ("count_distinct", "approx_count_distinct"):
        return len(set(xs))  # the reference is exact even for the approximate function
    raise ValueError(f"unknown aggregation function {function!r}")


def counted(feature: FeatureSpec, event: dict) -> bool:
    """Does the feature count this event (all `where` clauses hold)?"""
    return all(event.get(column) in allowed for column, allowed in feature.where)


def _visible_time(index: int, event: dict, visible: Visible) -> int | None:
    if visible is None:
        return event["event_timestamp"]
    return visible.get(index, event["event_timestamp"])


def feature_value(feature: FeatureSpec, items: Sequence[Item], t: int) -> Any:
    """value(k, t) of one feature over the key's (event, visible time) pairs."""
    known = [e for e, vis in items
             if vis <= t and e["event_timestamp"] <= t and counted(feature, e)]
    if feature.kind == "sliding":
        w, s = feature.window_us, feature.slide_us
        lo = (t // s + 1) * s - w
        chosen = [e for e in known if lo <= e["event_timestamp"] <= t]
    elif feature.kind == "session":
        gap = feature.window_us
        times = sorted(e["event_timestamp"] for e in known)
        if not times or t - times[-1] >= gap:
            return empty_value(feature.function)
        i = len(times) - 1  # walk back from the latest event while the gaps stay < G
        while i > 0 and times[i] - times[i - 1] < gap:
            i -= 1
        start = times[i]
        chosen = [e for e in known if start <= e["event_timestamp"] <= t]
    else:
        raise ValueError(f"unknown window kind {feature.kind!r}")
    return aggregate(feature.function, [e.get(feature.column) for e in chosen])


def vector(spec: EngineSpec, items: Sequence[Item], t: int) -> tuple:
    return tuple(feature_value(f, items, t) for f in spec.features)


def _items(spec: EngineSpec, events: Sequence[dict], key: str, visible: Visible) -> list[Item]:
    out = []
    for i, e in enumerate(events):
        if e.get(spec.join_key) != key:
            continue
        vis = _visible_time(i, e, visible)
        if vis is not None:
            out.append((e, vis))
    return out


def value_at(
    spec: EngineSpec, events: Sequence[dict], key: str, t_us: int, visible: Visible = None
) -> tuple:
    """The feature vector of `key` as of `t_us`, in `spec.features` order."""
    return vector(spec, _items(spec, events, key, visible), t_us)


def arrival_model(
    events_in_arrival_order: Sequence[dict],
    delay_us: int,
    lateness_us: int,
    group_of: Callable[[str], Any] = lambda user: 0,
) -> tuple[dict[int, int | None], set[int]]:
    """Replay arrival order through per-group watermarks; return (visible, late).

    Watermark of a group = newest event time seen in that group before this event - delay.
    An event at or behind it is a correction visible from the watermark when it is at most
    `lateness_us` behind, else late (visible None, and in the returned set). Every other
    event is visible from its own event time.
    """
    newest: dict[Any, int] = {}
    visible: dict[int, int | None] = {}
    late: set[int] = set()
    for i, e in enumerate(events_in_arrival_order):
        t = e["event_timestamp"]
        group = group_of(e["user_id"])
        if group in newest and t <= newest[group] - delay_us:
            watermark = newest[group] - delay_us
            if watermark - t <= lateness_us:
                visible[i] = watermark
            else:
                visible[i] = None
                late.add(i)
        else:
            visible[i] = t
        newest[group] = max(newest.get(group, t), t)
    return visible, late


def change_candidates(spec: EngineSpec, items: Sequence[Item]) -> set[int]:
    """Every time at which a key's vector may change: an event becomes visible, a pane
    leaves a sliding window (floor(t_e/S)*S + W), a session expires (t_e + G)."""
    times: set[int] = set()
    for f in spec.features:
        for e, vis in items:
            if not counted(f, e):
                continue
            t_e = e["event_timestamp"]
            times.add(vis)
            if f.kind == "sliding":
                times.add(t_e // f.slide_us * f.slide_us + f.window_us)
            else:
                times.add(t_e + f.window_us)
    return times


def expected_rows(
    spec: EngineSpec, events: Sequence[dict], end_us: int, visible: Visible = None
) -> dict[str, list[tuple[int, tuple]]]:
    """Each key's step function up to `end_us` inclusive, as its minimal change points.

    Keys whose vector never leaves the all-empty vector have no entry.
    """
    by_key: dict[str, list[Item]] = defaultdict(list)
    for i, e in enumerate(events):
        vis = _visible_time(i, e, visible)
        if vis is not None:
            by_key[e[spec.join_key]].append((e, vis))
    out: dict[str, list[tuple[int, tuple]]] = {}
    for key, items in by_key.items():
        previous = empty_vector(spec)
        rows = []
        for t in sorted(c for c in change_candidates(spec, items) if c <= end_us):
            now = vector(spec, items, t)
            if now != previous:
                rows.append((t, now))
                previous = now
        if rows:
            out[key] = rows
    return out


def shipped_spec() -> EngineSpec:
    """Compile every StreamFeatureView declared in feast_repo/features.py.

    The view objects were never `feast apply`-ed, so their join keys come from the entities
    declared in feast_repo/entities.py.
    """
    from feast import Entity, StreamFeatureView

    from feast_repo import entities, features

    views = [v for v in vars(features).values() if isinstance(v, StreamFeatureView)]
    ents = [e for e in vars(entities).values() if isinstance(e, Entity)]
    return compile_views(views, entities=ents)


def same_value(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Feature values equal for tests: both missing (None, NaN, pandas NA), or numbers within
    `rel` (means are compared to 1e-9; counts are exact in floats)."""
    import pandas as pd

    a_missing, b_missing = bool(pd.isna(a)), bool(pd.isna(b))
    if a_missing or b_missing:
        return a_missing and b_missing
    return abs(float(a) - float(b)) <= rel * max(1.0, abs(float(b)))
