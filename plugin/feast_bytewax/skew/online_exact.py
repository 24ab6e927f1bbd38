"""Skew report line: the served vectors against the exact rows (provisional online values).

A live run with provisional online rows (`engine.provisional`, the default of `run`) writes
online at once and the exact, watermark-ordered rows offline. The two agree once the exact
watermark has passed, except where the input was out of order: then a provisional value was
served that the exact rows never held. The run counts that as it writes
(``feast_bytewax_online_divergent_total``); this is the same question asked of what was
actually *served*: each logged vector (Feast's logged-features format,
`skew.logged.logged_points`) against the offline store's step function, the key's latest
exact row at or before the value's own time (for a store that keeps whole seconds, the
latest in that second), feature by feature.

It is reported next to the comparison with the batch truth (`skew.logged.compare_logged`),
not instead of it: a served value that differs from the exact rows differs from the truth
too wherever the exact rows are right, so the logged mismatch rate keeps counting it. This
line says how much of that is the provisional design (and for how long such values were
served), rather than a wrong computation.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from feast_bytewax.skew.compare import values_equal
from feast_bytewax.timeutil import US_PER_S

HAS_ROW = "__exact_row"


def _exact_rows(key: str, names: list[str], off: pd.DataFrame,
                carry: pd.DataFrame | None) -> pd.DataFrame:
    """One source's rows (a window's carry-in first), newest copy per (key, ts), by time."""
    rows = off if carry is None or not len(carry) else pd.concat([carry, off],
                                                                 ignore_index=True)
    rows = rows[[key, "ts", *names]].drop_duplicates([key, "ts"], keep="last")
    return rows.assign(**{HAS_ROW: True}).sort_values("ts", kind="stable")


def served_vs_exact(lp: pd.DataFrame, key: str,
                    sources: Iterable[tuple[list[str], pd.DataFrame, pd.DataFrame | None]],
                    empties: dict, rtol: float = 1e-9, atol: float = 1e-9) -> dict:
    """How many served vectors differed from the exact rows as of their time, and how long
    after their value's time they were served. `lp`: `logged_points`; `sources`: per batch
    source, (features, its rows as `read_offline` reads them, the window's carry-in)."""
    present = lp.loc[~lp["absent"].to_numpy()] if len(lp) else lp
    compared = np.zeros(int(lp["row"].max()) + 1 if len(lp) else 0, bool)
    differs = compared.copy()
    for names, off, carry in sources:
        rows = _exact_rows(key, names, off, carry)
        for n in names:
            pts = present.loc[present["feature"] == n, ["row", key, "alt_ts", "value"]]
            if not len(pts):
                continue
            pts = pts.sort_values("alt_ts", kind="stable")
            merged = pd.merge_asof(pts, rows[[key, "ts", n, HAS_ROW]], left_on="alt_ts",
                                   right_on="ts", by=key, direction="backward")
            empty = empties.get(n)
            exact = np.where(merged[HAS_ROW].eq(True).to_numpy(),
                             merged[n].to_numpy(dtype=float),
                             np.nan if empty is None else float(empty))
            bad = ~values_equal(merged["value"].to_numpy(dtype=float), exact, rtol, atol)
            row = merged["row"].to_numpy()
            compared[row] = True
            differs[row[bad]] = True
    n = int(compared.sum())
    k = int(differs.sum())
    ages = np.zeros(0)
    if k:
        first = present.loc[present["row"].isin(np.flatnonzero(differs))] \
            .groupby("row").agg(ts=("ts", "min"), serve_ts=("serve_ts", "first"))
        ages = (first["serve_ts"] - first["ts"]).to_numpy() / US_PER_S
    return {
        "vectors": n,
        "differing_vectors": k,
        "rate": k / n if n else 0.0,
        "served_after_value_s": {
            "p50": float(np.percentile(ages, 50)) if len(ages) else None,
            "max": float(ages.max()) if len(ages) else None,
        },
    }


def summary_line(section: dict) -> str:
    """The report's line for `served_vs_exact`."""
    if not section.get("vectors"):
        return "online vs exact rows: no served vectors to compare"
    line = (f"online vs exact rows: {section['differing_vectors']:,} of "
            f"{section['vectors']:,} served vectors differed from the offline (exact) rows "
            f"as of their time ({section['rate']:.4%})")
    age = section["served_after_value_s"]
    if age["max"] is not None:
        line += f", served p50 {age['p50']:.3f} s / max {age['max']:.3f} s after their time"
    return line
