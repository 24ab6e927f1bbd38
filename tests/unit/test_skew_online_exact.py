"""`skew.online_exact.served_vs_exact`: served vectors against the exact offline rows as of
their time, on hand-made logged points and rows (every case of the comparison)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from feast_bytewax.skew.online_exact import served_vs_exact, summary_line

S = 1_000_000


def points(rows: list[tuple]) -> pd.DataFrame:
    """(row, key, feature, value, ts_s, serve_s[, absent]) -> logged points."""
    out = []
    for r in rows:
        row, key, feature, value, ts, serve, *absent = r
        out.append({"row": row, "user_id": key, "feature": feature, "value": value,
                    "absent": bool(absent and absent[0]), "ts": ts * S, "alt_ts": ts * S,
                    "serve_ts": serve * S})
    return pd.DataFrame(out)


def test_served_vectors_are_compared_with_the_latest_exact_row_at_their_time():
    off = pd.DataFrame({"user_id": ["u1", "u1", "u1"], "ts": [5 * S, 10 * S, 10 * S],
                        "f": [1.0, 9.0, 2.0], "g": [1.0, 1.0, 1.0]})  # 10 s: newest copy 2.0
    lp = points([
        (0, "u1", "f", 2.0, 10, 11), (0, "u1", "g", 1.0, 10, 11),  # equal
        (1, "u1", "f", 3.0, 12, 14.5), (1, "u1", "g", 1.0, 12, 14.5),  # f: exact still 2.0
        (2, "u2", "f", 0.0, 3, 4), (2, "u2", "g", np.nan, 3, 4),  # no row: the empty vector
        (3, "u2", "f", 7.0, 3, 6),  # no exact row, not empty: differs
        (4, "u1", "f", np.nan, 0, 20, True),  # NOT_FOUND: not compared here
        (5, "u1", "f", 1.0, 7, 8),  # between rows: the 5 s one
    ])
    got = served_vs_exact(lp, "user_id", [(["f", "g"], off, None)], {"f": 0, "g": None})
    assert got["vectors"] == 5 and got["differing_vectors"] == 2
    assert got["rate"] == 2 / 5
    assert got["served_after_value_s"] == {"p50": 2.75, "max": 3.0}  # 2.5 s and 3 s
    assert "2 of 5 served vectors differed" in summary_line(got)


def test_a_window_carry_in_row_holds_at_the_window_start():
    carry = pd.DataFrame({"user_id": ["u1"], "ts": [1 * S], "f": [4.0]})
    off = pd.DataFrame({"user_id": ["u1"], "ts": [50 * S], "f": [5.0]})
    lp = points([(0, "u1", "f", 4.0, 20, 21), (1, "u1", "f", 5.0, 20, 21)])
    got = served_vs_exact(lp, "user_id", [(["f"], off, carry)], {"f": 0})
    assert (got["vectors"], got["differing_vectors"]) == (2, 1)
    assert summary_line({"vectors": 0}).endswith("no served vectors to compare")
