"""Offline rows == the reference, for the events one phase of bench/kafka_redis_bench.py
produced (issue 11: "offline rows still equal to the reference").

- The events: the producer is deterministic (`datagen.generate_columns` with a seed) and
  writes the microsecond timestamp it stamped on every message it sent (`--stamps`), so
  `sent_events` rebuilds every message exactly (same `_Payloads` code, JSON-decoded).
- The reference: the semantics of tests/reference.py `expected_rows` (each key's minimal
  change points up to the newest event time, every event on time, candidate times from
  `reference.change_candidates`, filters from `reference.counted`, empty values from
  `reference.empty_value`), computed with per-feature FIFO windows instead of recomputing
  every window from scratch: the brute force is O(events per key ^ 2) and the hottest Zipf
  user has ~15% of the events. Every check also runs `reference.expected_rows` itself on a
  sample of keys and counts any difference (`crosscheck`).
- The comparison: what tests/e2e/checks.py `check_rows` asserts, counted instead of raised:
  the keys with rows, each row time and value up to the newest event (values within 1e-9),
  rows after it equal to the reference's value at their time, no duplicate row times.
  The spec is the one the flow ran (compiled from the measured revision's feast_repo/).
  The bench gives the flow no profile versions and the category risk table is empty, so
  the joined columns are missing (`max_amount_to_credit_24h` empty) and every risk lookup
  falls back to 0.0 (`risky_purchase_count_1h` = 0), as the reference without `enrich`.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from fractions import Fraction
from pathlib import Path
from typing import Any


def sent_events(n: int, users: int, seed: int, stamps) -> list[dict]:
    """The events a `_produce` run sent, as reference dicts (event time in epoch us)."""
    from bench.kafka_redis_bench import _Payloads

    payloads = _Payloads(n, users, seed)
    out = []
    for i, ts in enumerate(stamps.tolist()):
        e = json.loads(payloads.message(i, ts))
        e["event_timestamp"] = ts
        out.append(e)
    return out


class Fifo:
    """One aggregation over a window whose values enter and leave first-in first-out
    (missing values are kept in line but not aggregated, as `reference.aggregate`)."""

    def __init__(self, function: str) -> None:
        from tests import reference as ref

        self.fn = ref.canonical(function)
        self.empty = ref.empty_value(function)
        self.q: deque = deque()
        self.n = self.pushed = self.popped = 0
        self.total = Fraction(0)  # exact: float(total) is math.fsum of the values
        self.mono: deque = deque()  # (index, value), for min / max
        self.counts: Counter = Counter()

    def push(self, v: Any) -> None:
        from tests import reference as ref

        i = self.pushed
        self.pushed += 1
        if ref.is_missing(v):
            self.q.append(None)
            return
        self.q.append(v)
        self.n += 1
        if self.fn in ("sum", "mean"):
            self.total += Fraction(v)
        elif self.fn in ("min", "max"):
            worse = (lambda a: a <= v) if self.fn == "max" else (lambda a: a >= v)
            while self.mono and worse(self.mono[-1][1]):
                self.mono.pop()
            self.mono.append((i, v))
        elif self.fn in ("count_distinct", "approx_count_distinct"):
            self.counts[v] += 1

    def pop(self) -> None:
        i = self.popped
        self.popped += 1
        v = self.q.popleft()
        if v is None:
            return
        self.n -= 1
        if self.fn in ("sum", "mean"):
            self.total -= Fraction(v)
        elif self.fn in ("min", "max"):
            if self.mono and self.mono[0][0] == i:
                self.mono.popleft()
        elif self.fn in ("count_distinct", "approx_count_distinct"):
            self.counts[v] -= 1
            if not self.counts[v]:
                del self.counts[v]

    def value(self) -> Any:
        if not self.n:
            return self.empty
        if self.fn == "count":
            return self.n
        if self.fn == "sum":
            return float(self.total)
        if self.fn == "mean":
            return float(self.total) / self.n
        if self.fn in ("min", "max"):
            return self.mono[0][1]
        if self.fn in ("count_distinct", "approx_count_distinct"):
            return len(self.counts)
        raise ValueError(f"unknown aggregation function {self.fn!r}")


def feature_series(feature, items: list[dict], times: list[int]) -> list[Any]:
    """value(k, t) of one feature at each of the ascending `times`, as
    `reference.feature_value` defines it for on-time events (`items`: one key's events in
    event-time order)."""
    from tests import reference as ref

    sel = [e for e in items if ref.counted(feature, e)]
    ts = [e["event_timestamp"] for e in sel]
    vals = [e.get(feature.column) for e in sel]
    agg = Fifo(feature.function)
    hi = lo = 0
    out = []
    if feature.kind == "session":
        gap = feature.window_us
        start = list(range(len(ts)))
        for j in range(1, len(ts)):
            if ts[j] - ts[j - 1] < gap:
                start[j] = start[j - 1]
    elif feature.kind != "sliding":
        raise ValueError(f"unknown window kind {feature.kind!r}")
    for t in times:
        new_hi = bisect_right(ts, t)
        if feature.kind == "sliding":
            s = feature.slide_us
            new_lo = min(new_hi, bisect_left(ts, (t // s + 1) * s - feature.window_us))
        else:
            new_lo = start[new_hi - 1] if new_hi else 0
        for j in range(hi, new_hi):
            agg.push(vals[j])
        for _ in range(lo, max(lo, new_lo)):
            agg.pop()
        hi, lo = new_hi, max(lo, new_lo)
        if feature.kind == "session" and (not new_hi or t - ts[new_hi - 1] >= feature.window_us):
            out.append(agg.empty)
        else:
            out.append(agg.value())
    return out


def by_key(spec, events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in sorted(events, key=lambda e: e["event_timestamp"]):
        out.setdefault(e[spec.join_key], []).append(e)
    return out


def expected_rows(spec, keyed: dict[str, list[dict]], end: int) -> dict[str, list]:
    """`reference.expected_rows(spec, events, end)` (every event on time), fast."""
    from tests import reference as ref

    out = {}
    for key, items in keyed.items():
        cands = sorted(c for c in ref.change_candidates(
            spec, [(e, e["event_timestamp"]) for e in items]) if c <= end)
        series = [feature_series(f, items, cands) for f in spec.features]
        previous, rows = ref.empty_vector(spec), []
        for t, now in zip(cands, zip(*series, strict=True), strict=True):
            if now != previous:
                rows.append((t, now))
                previous = now
        if rows:
            out[key] = rows
    return out


def _same(a: tuple, b: tuple) -> bool:
    from tests.e2e.checks import close

    return all(close(x, y) for x, y in zip(a, b, strict=True))


def crosscheck(spec, keyed: dict[str, list[dict]], end: int, fast: dict, keys: int = 300,
               busy: int = 300) -> dict:
    """`reference.expected_rows` (the brute force) on `keys` keys spread over the event
    counts plus the busiest key with at most `busy` events, against the fast rows."""
    from tests import reference as ref

    order = sorted(keyed, key=lambda k: (len(keyed[k]), k))
    small = [k for k in order if len(keyed[k]) <= busy]
    sample = set(small[:: max(1, len(small) // keys)][:keys]) | set(small[-1:])
    differ = rows = 0
    for key in sorted(sample):
        want = ref.expected_rows(spec, keyed[key], end).get(key, [])
        mine = fast.get(key, [])
        rows += len(want)
        if len(want) != len(mine) or any(
                t != u or not _same(a, b) for (t, a), (u, b) in zip(want, mine, strict=True)):
            differ += 1
    return {"keys": len(sample), "rows": rows, "keys_differing": differ,
            "max_events_per_key": max((len(keyed[k]) for k in sample), default=0)}


def offline_rows(repo: Path, spec, corrupt: bool = False) -> dict[str, list[tuple[int, tuple]]]:
    """Every row a reader of the repo's offline store sees for the entity's push source,
    per key in time order (values in `spec.feature_names` order). `corrupt`: drop the
    first row and change a value of the last (to show the check fails when rows differ)."""
    import pandas as pd
    from feast import FeatureStore

    from tests.e2e.checks import offline_frame

    store = FeatureStore(repo_path=str(repo))
    df = offline_frame(repo, store.get_data_source(spec.push_source).batch_source.name)
    names = list(spec.feature_names)
    if corrupt and len(df) > 1:
        df = df.iloc[1:].reset_index(drop=True)
        last = df[names[0]].iloc[-1]
        df.loc[len(df) - 1, names[0]] = (0 if pd.isna(last) else last) + 1
    out: dict[str, list[tuple[int, tuple]]] = {}
    ts = df["event_timestamp"].tolist()
    cols = [df[n].astype(object).where(df[n].notna(), None).tolist() for n in names]
    for i, key in enumerate(df[spec.join_key].tolist()):
        out.setdefault(key, []).append((ts[i], tuple(c[i] for c in cols)))
    return out


def check_offline(repo: Path, spec, events: list[dict], corrupt: bool = False) -> dict:
    """The repo's offline rows against the reference for exactly `events`: counts of rows
    missing, extra (or duplicated) and wrong, as tests/e2e/checks.py `check_rows` checks."""
    t0 = time.perf_counter()
    keyed = by_key(spec, events)
    end = max(e["event_timestamp"] for e in events)
    want = expected_rows(spec, keyed, end)
    t_ref = time.perf_counter() - t0
    got = offline_rows(repo, spec, corrupt)
    missing = extra = wrong = 0
    examples: list[str] = []
    after: dict[str, list[tuple[int, tuple]]] = {}
    for key in sorted(set(want) | set(got)):
        mine = got.get(key, [])
        stamps = [t for t, _ in mine]
        dup = len(stamps) - len(set(stamps))
        if dup or stamps != sorted(stamps):
            extra += dup
            examples.append(f"{key}: row times not strictly increasing")
        w = dict(want.get(key, []))
        g = {t: v for t, v in mine if t <= end}
        if any(t > end for t in stamps):
            after[key] = [(t, v) for t, v in mine if t > end]
        for t in sorted(w.keys() - g.keys()):
            missing += 1
            examples.append(f"{key} @ {t}: reference row missing")
        for t in sorted(g.keys() - w.keys()):
            extra += 1
            examples.append(f"{key} @ {t}: row not in the reference {g[t]}")
        for t in sorted(w.keys() & g.keys()):
            if not _same(g[t], w[t]):
                wrong += 1
                examples.append(f"{key} @ {t}: {g[t]} != reference {w[t]}")
    for key, rows in after.items():  # a live watermark moved past the newest event
        expect = [tuple(v) for v in zip(*(feature_series(f, keyed.get(key, []),
                                                         [t for t, _ in rows])
                                          for f in spec.features), strict=True)]
        for (t, v), e in zip(rows, expect, strict=True):
            if not _same(v, e):
                wrong += 1
                examples.append(f"{key} @ {t} (after the newest event): {v} != {e}")
    cross = crosscheck(spec, keyed, end, want)
    n = sum(len(v) for v in got.values())
    bad = missing + extra + wrong
    return {"ok": bad == 0 and n > 0 and not cross["keys_differing"], "rows": n,
            "reference_rows": sum(len(v) for v in want.values()),
            "rows_after_newest_event": sum(len(v) for v in after.values()),
            "keys": len(want), "mismatches": bad, "missing": missing, "extra": extra,
            "wrong": wrong, "examples": examples[:5], "crosscheck": cross,
            "corrupted": corrupt, "reference_s": round(t_ref, 2),
            "seconds": round(time.perf_counter() - t0, 2)}


def check_phase(res: dict, repo: Path, spec, args) -> dict:
    """`check_offline` of one phase of kafka_redis_bench: its events rebuilt from the seed
    and the producer's stamps; the flow's late / correction counts beside (the reference
    assumes every event on time, which the per-partition time order guarantees)."""
    import numpy as np

    try:
        stamps = np.load(res["stamps_file"])
        events = sent_events(len(stamps), args.users, res["seed"], stamps)
        out = check_offline(repo, spec.entity("user_id"), events, args.corrupt_check)
    except Exception as e:  # reported as NO, with the error, not hidden
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    out.update(late=res.get("late"), corrections=res.get("corrections"))
    return out


def verdict(check: dict | None) -> str:
    """``yes (N rows)`` / ``NO (k mismatches ...)`` / ``-``."""
    if not check:
        return "-"
    if "error" in check:
        return f"NO ({check['error']})"
    cross = check["crosscheck"]
    if check["ok"]:
        return f"yes ({check['rows']:,} rows)"
    why = (f"{check['mismatches']:,} mismatches: {check['missing']:,} missing, "
           f"{check['extra']:,} extra, {check['wrong']:,} wrong, of {check['rows']:,} rows")
    if cross["keys_differing"]:
        why += f"; fast reference != brute force on {cross['keys_differing']} keys"
    return f"NO ({why})"
