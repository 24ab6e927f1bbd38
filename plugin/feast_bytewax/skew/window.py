"""Skew detection over a recent window of a live run (`skew --since 15m`): which instants
are compared, and how far back the events must be read to recompute them.

Why a window: a periodic check (cron, a Kubernetes CronJob) must cost what the window
costs, not what the whole archive costs. Why the arithmetic matters: a feature's value at an
instant t depends on the events of the window before t, so a window [since, until) compares
only the rows and served values stamped in it, but recomputes them from events read from
`since - lookback` (the longest window). A session has no fixed length: the read start moves
back until no key's session that is still open at `since` starts before it (see
`session_read_start`). Events after `until` are read too: they do not change any value
before `until`, but they moved the run's watermark, so they decide which earlier events were
late (the visibility model, `skew.events`).

The default end leaves the newest `watermark_delay + settle` out: a live run writes the
exact row of an event once the watermark passes it, so the newest seconds have no rows yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from feast_bytewax.errors import ConfigError
from feast_bytewax.features.spec import EngineSpec
from feast_bytewax.skew.events import EventLog, SkewOptions, counted_mask, read_events
from feast_bytewax.timeutil import US_PER_S, from_us, parse_instant


@dataclass(frozen=True)
class Window:
    """[start_us, end_us): the instants compared, epoch microseconds."""

    start_us: int
    end_us: int


def resolve_window(since: str, until: str | None, now_us: int, watermark_delay_s: float,
                   settle_s: float) -> Window:
    """`--since` / `--until` as a window. A duration in `--until` counts back from now, one
    in `--since` back from the window's end (so consecutive cron runs with the same --since
    tile time without gaps); no `--until`: now - watermark delay - settle."""
    if until is not None:
        end = parse_instant(until, now_us)
    else:
        end = now_us - round((watermark_delay_s + settle_s) * US_PER_S)
    start = parse_instant(since, end)
    if start >= end:
        raise ConfigError(f"skew window: --since {since} ({from_us(start).isoformat()}) is not "
                          f"before its end ({from_us(end).isoformat()})")
    return Window(start, end)


def read_start(window_start_us: int, spec: EngineSpec) -> int:
    """Where the events must start for the values at the window's start to be exact,
    sessions aside: one longest window before it."""
    return window_start_us - spec.lookback_us


def read_window_events(path: Any, spec: EngineSpec, opts: SkewOptions) -> EventLog:
    """The events a window's values depend on: from one longest window before it, moved
    back (doubling the distance, at least one gap at a time) while a session still open at
    the window's start may begin earlier (`session_cut`). Ends once the read start is a
    gap or more before every such session (or before the log's first event)."""
    ws = opts.window_start_us
    lo = read_start(ws, spec)
    gap = max((f.window_us for f in spec.features if f.kind == "session"), default=0)
    while True:
        log = read_events(path, spec, opts, read_from_us=lo)
        if not session_cut(spec, log.events, lo, ws):
            return log
        lo -= max(ws - lo, gap)


def session_cut(spec: EngineSpec, events: pd.DataFrame, read_from_us: int,
                window_start_us: int) -> bool:
    """True when events read from `read_from_us` may cut a session that is still open at
    the window's start: some key's first session (of counted events) begins within one gap
    of the read start, so an earlier event may belong to it, and lasts until at least one
    gap before the window. Then the read must start earlier."""
    key = spec.join_key
    for f in spec.features:
        if f.kind != "session" or not len(events):
            continue
        gap = f.window_us
        m = counted_mask(f, events)
        df = pd.DataFrame({"k": events[key].to_numpy()[m],
                           "t": events["event_timestamp"].to_numpy()[m]})
        if df.empty:
            continue
        df = df.sort_values(["k", "t"], kind="stable")
        k, t = df["k"].to_numpy(), df["t"].to_numpy()
        new_key = np.r_[True, k[1:] != k[:-1]]
        new_session = new_key | np.r_[True, np.diff(t) >= gap]
        sid = np.cumsum(new_session)
        first_sid = sid[new_key][np.cumsum(new_key) - 1]
        first = df.loc[sid == first_sid].groupby("k")["t"].agg(["min", "max"])
        if ((first["min"] < read_from_us + gap) & (first["max"] >= window_start_us - gap)).any():
            return True
    return False
