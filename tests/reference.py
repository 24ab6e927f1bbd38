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


def _filter_text(v: Any) -> Any:
    """A column value as a filter clause spells it (`risky=true` matches a True)."""
    return str(v).lower() if isinstance(v, bool) else v


def counted(feature: FeatureSpec, event: dict) -> bool:
    """Does the feature count this event (all `where` clauses hold)?"""
    return all(_filter_text(event.get(column)) in allowed for column, allowed in feature.where)


def _visible_time(index: int, event: dict, visible: Visible) -> int | None:
    if visible is None:
        return event["event_timestamp"]
    return visible.get(index, event["event_timestamp"])


Enrich = Callable[[dict, int], dict] | None  # (event, query time) -> the event with columns


def feature_value(feature: FeatureSpec, items: Sequence[Item], t: int,
                  enrich: Enrich = None) -> Any:
    """value(k, t) of one feature over the key's (event, visible time) pairs. `enrich`
    adds the joined / looked-up / derived columns an event has as of query time t."""
    known = [e if enrich is None else enrich(e, t) for e, vis in items
             if vis <= t and e["event_timestamp"] <= t]
    known = [e for e in known if counted(feature, e)]
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


def vector(spec: EngineSpec, items: Sequence[Item], t: int, enrich: Enrich = None) -> tuple:
    return tuple(feature_value(f, items, t, enrich) for f in spec.features)


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
    spec: EngineSpec, events: Sequence[dict], key: str, t_us: int, visible: Visible = None,
    enrich: Enrich = None,
) -> tuple:
    """The feature vector of `key` as of `t_us`, in `spec.features` order."""
    return vector(spec, _items(spec, events, key, visible), t_us, enrich)


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


def change_candidates(spec: EngineSpec, items: Sequence[Item], enrich: Enrich = None) -> set[int]:
    """Every time at which a key's vector may change: an event becomes visible, a pane
    leaves a sliding window (floor(t_e/S)*S + W), a session expires (t_e + G)."""
    times: set[int] = set()
    for f in spec.features:
        for e, vis in items:
            if enrich is None and not counted(f, e):
                continue
            t_e = e["event_timestamp"]
            times.add(vis)
            if f.kind == "sliding":
                times.add(t_e // f.slide_us * f.slide_us + f.window_us)
            else:
                times.add(t_e + f.window_us)
    return times


def expected_rows(
    spec: EngineSpec, events: Sequence[dict], end_us: int, visible: Visible = None,
    enrich: Enrich = None, extra_times: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, list[tuple[int, tuple]]]:
    """Each key's step function up to `end_us` inclusive, as its minimal change points.

    Keys whose vector never leaves the all-empty vector have no entry. `enrich`: see
    `feature_value`; `extra_times`: more candidate change times per key (the times late
    table versions became visible).
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
        cands = change_candidates(spec, items, enrich) | set((extra_times or {}).get(key, ()))
        for t in sorted(c for c in cands if c <= end_us):
            now = vector(spec, items, t, enrich)
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
    from feast import Entity, FeatureView, StreamFeatureView

    from feast_repo import entities, features

    views = [v for v in vars(features).values() if isinstance(v, StreamFeatureView)]
    tables = [v for v in vars(features).values()
              if isinstance(v, FeatureView) and not isinstance(v, StreamFeatureView)]
    ents = [e for e in vars(entities).values() if isinstance(e, Entity)]
    return compile_views(views, entities=ents, feature_views=tables)


def same_value(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Feature values equal for tests: both missing (None, NaN, pandas NA), or numbers within
    `rel` (means are compared to 1e-9; counts are exact in floats)."""
    import pandas as pd

    a_missing, b_missing = bool(pd.isna(a)), bool(pd.isna(b))
    if a_missing or b_missing:
        return a_missing and b_missing
    return abs(float(a) - float(b)) <= rel * max(1.0, abs(float(b)))


# -- stream-table joins (issue 10), from the text --------------------------------

def version_model(arrivals: Sequence[dict], delay_us: int, lateness_us: int
                  ) -> tuple[dict[int, int | None], dict[int, tuple[int, bool]], set[int]]:
    """Arrival order of events AND table versions (dicts with ``"version": True``, their
    ``event_timestamp`` = valid-from time) through one watermark (newest time seen - delay).

    Returns (visible time of each event index, {version index: (visible time, correctable)},
    indices of late events). A version at or behind the watermark is visible from it; it is
    correctable when at most `lateness_us` behind and lateness > 0 (the engine keeps events
    to rebuild from only then), else too late: only events applied after it join it.
    """
    newest: int | None = None
    visible: dict[int, int | None] = {}
    versions: dict[int, tuple[int, bool]] = {}
    late: set[int] = set()
    for i, e in enumerate(arrivals):
        t = e["event_timestamp"]
        w = None if newest is None else newest - delay_us
        if e.get("version"):
            if w is not None and t <= w:
                versions[i] = (w, lateness_us > 0 and w - t <= lateness_us)
            else:
                versions[i] = (t, True)
        elif w is not None and t <= w:
            if w - t <= lateness_us:
                visible[i] = w
            else:
                visible[i] = None
                late.add(i)
        else:
            visible[i] = t
        newest = t if newest is None else max(newest, t)
    return visible, versions, late


def profile_enricher(arrivals: Sequence[dict], visible: Mapping[int, int | None],
                     versions: Mapping[int, tuple[int, bool]],
                     risk: Mapping[str, float] | None = None, fallback: float = 0.0) -> Enrich:
    """The columns of issue 10 for an event as of query time t, computed from the raw data:

    - the profile version an event joins: the latest `updated_at` <= its event time among
      the versions the stream knew for it by t (a correctable version counts from its
      visible time for every event; a too-late one only for events applied after it);
    - `amount_to_credit` = amount / credit_score (missing without a profile or with 0);
    - `category_risk__risk` = risk of the event's category (else the fallback) and
      `risky` = that >= 0.8.
    """
    applied = {id(arrivals[i]): (vis, i) for i, vis in visible.items() if vis is not None}
    by_user: dict[str, list[tuple[int, dict, int, bool, int]]] = defaultdict(list)
    for i, (vis, correctable) in versions.items():
        v = arrivals[i]
        by_user[v["user_id"]].append((v["event_timestamp"], v, vis, correctable, i))

    def enrich(e: dict, t: int) -> dict:
        a, idx = applied[id(e)]
        best = None
        for vt, v, vis, correctable, vi in by_user.get(e["user_id"], ()):
            if vt > e["event_timestamp"] or vis > t:
                continue
            if not correctable and not (a > vis or (a == vis and idx > vi)):
                continue
            if best is None or vt > best[0] or (vt == best[0] and vi > best[1]):
                best = (vt, vi, v)
        out = dict(e)
        profile = best[2] if best is not None else {}
        for c in ("account_age_days", "credit_score", "segment"):
            out[c] = profile.get(c)
        score = out["credit_score"]
        out["amount_to_credit"] = (e["amount"] / score if score not in (None, 0) else None)
        if risk is not None:
            r = risk.get(e["category"], fallback)
            out["category_risk__risk"] = r
            out["risky"] = r >= 0.8
        return out

    return enrich
