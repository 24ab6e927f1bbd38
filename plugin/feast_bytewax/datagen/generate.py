"""Synthetic event streams with real shapes (shared/spec/events.md, "generator realism").

What the generated stream looks like:

- **Users**: ``n_users`` ids (``u000000`` ...), popularity Zipf-like (``zipf_s``, default 1.1:
  with 10k users the hottest user has ~15% of the events); the rank -> user mapping is a
  seeded permutation so the hot user is not simply ``u000000``.
- **Sessions**: events come in bursts. A session has a geometric number of events (mean
  ``mean_session_events``) spaced by exponential gaps (mean ``mean_gap_s``); session starts
  follow a diurnal rate (peak mid-afternoon UTC) inside ``[start, start + duration)``.
- **Event mix**: ``event_mix`` (default view 70%, purchase 15%, login_ok 10%, login_failed 5%).
- **Amounts**: purchases log-normal (median ~20, rounded to cents), 0.0 for other types.
- **Categories**: a small vocabulary with skewed global popularity; each user has a favourite
  category used 60% of the time. Login events have category ``""``.
- **Arrival order != event-time order**: every event arrives ``Exp(jitter_s)`` seconds after its
  event time; a ``late_fraction`` arrives an extra ``Uniform(late_delay_s)`` seconds late. Rows
  are produced in arrival order.
- **Bad input** (``bad_fraction`` > 0, JSON lines only): a fraction of rows is replaced by
  malformed lines, one kind per row, each kind named by the validator reason code it must
  produce (see `BAD_KINDS`).
- ``event_id`` is an int64, ``0..n-1`` in event-time order (unique within one generated set).
- JSON lines use several timestamp spellings, as real producers do: ``Z`` for most users,
  ``+00:00`` for some and a local offset (``+05:30``, ``-07:00`` ...) for others, always the
  same instant.

The columns are drawn by `feast_bytewax.datagen.columns` (numpy, vectorised); this module renders
them as dicts, JSON lines (with the malformed ones) or parquet, and re-exports its names.
Everything is deterministic for a ``seed``; each aspect draws from its own seeded stream, so
e.g. raising ``bad_fraction`` does not change the good events' users or times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from feast_bytewax.datagen.columns import (
    BAD_KINDS,
    CATEGORIES,
    DEFAULT_START,
    EVENT_MIX,
    TZ_STYLES,
    EventColumns,
    generate_columns,
)
from feast_bytewax.timeutil import from_us

__all__ = [
    "BAD_KINDS",
    "CATEGORIES",
    "DEFAULT_START",
    "EVENT_MIX",
    "BadLine",
    "EventColumns",
    "generate_columns",
    "generate_events",
    "write_events",
]

_US = 1_000_000


class BadLine(str):
    """A malformed JSON-lines row; ``code`` is the reason code the validator must give."""

    code: str

    def __new__(cls, text: str, code: str) -> BadLine:
        s = super().__new__(cls, text)
        s.code = code
        return s


# --- rendering ------------------------------------------------------------------------------


def _iso_strings(ts_us: np.ndarray, tz_style: np.ndarray) -> list[str]:
    """ISO-8601 with offset, vectorised; each row in its tz style (same instant)."""
    out = np.empty(len(ts_us), dtype=object)
    for i, (suffix, off_s) in enumerate(TZ_STYLES):
        m = tz_style == i
        if not m.any():
            continue
        local = (ts_us[m] + off_s * _US).astype("datetime64[us]")
        s = np.datetime_as_string(local, unit="us").astype(object)
        out[m] = s + suffix
    return out.tolist()


def _bad_line(rec: dict, kind: str, rng: np.random.Generator) -> BadLine:
    """Corrupt one JSON-ready record (timestamp already an ISO string) into `kind`."""
    d = dict(rec)
    ts = d["event_timestamp"]
    if kind == "bad_json":
        text = json.dumps(d)
        return BadLine(text[: int(rng.integers(1, len(text) - 1))], kind)
    if kind == "not_object":
        return BadLine(json.dumps(list(d.values())), kind)
    if kind == "missing_field":
        d.pop(
            ("event_id", "user_id", "event_type", "amount", "event_timestamp")[
                int(rng.integers(0, 5))
            ]
        )
    elif kind == "bad_type":
        d["amount"] = str(d["amount"])
    elif kind == "empty_field":
        d["user_id"] = ""
    elif kind == "unknown_event_type":
        d["event_type"] = ("click", "VIEW", "add_to_cart", "")[int(rng.integers(0, 4))]
    elif kind == "negative_amount":
        d["amount"] = -round(float(d["amount"]) + 1.0, 2)
    elif kind == "non_finite_amount":
        d["amount"] = float("nan")
    elif kind == "naive_timestamp":
        d["event_timestamp"] = datetime.fromisoformat(ts).replace(tzinfo=None).isoformat()
    elif kind == "bad_timestamp":
        d["event_timestamp"] = ("not-a-time", "2026-13-45T99:00:00Z", "")[int(rng.integers(0, 3))]
    elif kind == "future_timestamp":
        dt = datetime.fromisoformat(ts)
        d["event_timestamp"] = dt.replace(year=dt.year + 100, day=min(dt.day, 28)).isoformat()
    else:  # pragma: no cover
        raise ValueError(kind)
    return BadLine(json.dumps(d), kind)


def _iter_json_lines(cols: EventColumns) -> Iterator[str]:
    """JSON text per row (no newline), bad rows as `BadLine`s."""
    n = len(cols)
    chunk = 100_000
    uid_json = [json.dumps(u) for u in cols.user_ids.tolist()]
    type_json = [json.dumps(t) for t in cols.event_types]
    cat_json = [json.dumps(c) for c in cols.categories] + ['""']  # index -1 -> ""
    rng = np.random.default_rng(cols.bad_seed)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        ids = cols.event_id[lo:hi].tolist()
        users = cols.user_idx[lo:hi].tolist()
        types = cols.type_idx[lo:hi].tolist()
        amts = cols.amount[lo:hi].tolist()
        cats = cols.category_idx[lo:hi].tolist()
        tss = _iso_strings(cols.ts_us[lo:hi], cols.tz_style[lo:hi])
        bad = cols.bad_kind[lo:hi]
        lines = [
            f'{{"event_id": {i}, "user_id": {uid_json[u]}, "event_type": {type_json[t]}, '
            f'"amount": {a!r}, "category": {cat_json[c]}, "event_timestamp": "{ts}"}}'
            for i, u, t, a, c, ts in zip(ids, users, types, amts, cats, tss, strict=True)
        ]
        for j in np.flatnonzero(bad >= 0).tolist():
            lines[j] = _bad_line(json.loads(lines[j]), BAD_KINDS[bad[j]], rng)
        yield from lines


def generate_events(
    n_events: int,
    n_users: int,
    start: datetime | None = None,
    duration: timedelta = timedelta(hours=24),
    seed: int = 7,
    late_fraction: float = 0.01,
    jitter_s: float = 2.0,
    late_delay_s: tuple[float, float] = (60.0, 600.0),
    bad_fraction: float = 0.0,
    **kwargs: Any,
) -> Iterator[dict | BadLine]:
    """Events as dicts, in arrival order.

    Good rows are dicts with the spec's fields; ``event_timestamp`` is a tz-aware UTC
    ``datetime`` (as a parquet row reads). With ``bad_fraction`` > 0, malformed rows are
    yielded as `BadLine` strings (raw JSON-lines text whose ``.code`` is the validator reason
    code they must produce), because some of them (bad JSON) cannot be dicts at all.
    Extra keyword arguments go to `generate_columns` (``zipf_s``, ``event_mix`` ...).
    """
    cols = generate_columns(
        n_events, n_users, start, duration, seed, late_fraction, jitter_s, late_delay_s,
        bad_fraction, **kwargs,
    )  # fmt: skip
    cats = [*cols.categories, ""]
    user_ids = cols.user_ids.tolist()
    types = cols.event_types
    bad_lines = _iter_json_lines(cols) if (cols.bad_kind >= 0).any() else None
    chunk = 100_000
    for lo in range(0, len(cols), chunk):
        hi = min(len(cols), lo + chunk)
        rows = zip(
            cols.event_id[lo:hi].tolist(),
            cols.user_idx[lo:hi].tolist(),
            cols.type_idx[lo:hi].tolist(),
            cols.amount[lo:hi].tolist(),
            cols.category_idx[lo:hi].tolist(),
            cols.ts_us[lo:hi].tolist(),
            strict=True,
        )
        for eid, u, t, a, c, ts in rows:
            if bad_lines is not None:
                line = next(bad_lines)
                if isinstance(line, BadLine):
                    yield line
                    continue
            yield {
                "event_id": eid,
                "user_id": user_ids[u],
                "event_type": types[t],
                "amount": a,
                "category": cats[c],
                "event_timestamp": from_us(ts),
            }


def _arrow_table(cols: EventColumns, rows: np.ndarray | None = None):
    import pyarrow as pa

    sel = (lambda a: a) if rows is None else (lambda a: a[rows])
    cats = pa.array([*cols.categories, ""], pa.string())
    cat_idx = sel(cols.category_idx).astype(np.int64)
    cat_idx[cat_idx < 0] = len(cols.categories)
    return pa.table(
        {
            "event_id": pa.array(sel(cols.event_id), pa.int64()),
            "user_id": pa.array(cols.user_ids, pa.string()).take(pa.array(sel(cols.user_idx))),
            "event_type": pa.array(list(cols.event_types), pa.string()).take(
                pa.array(sel(cols.type_idx).astype(np.int64))
            ),
            "amount": pa.array(sel(cols.amount), pa.float64()),
            "category": cats.take(pa.array(cat_idx)),
            "event_timestamp": pa.array(sel(cols.ts_us), pa.int64()).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )


def write_events(
    path: str | Path,
    n_events: int,
    n_users: int,
    seed: int = 7,
    start: datetime | None = None,
    **kwargs: Any,
) -> dict:
    """Generate events and write them in arrival order; return stats.

    Format by path: ``*.parquet`` -> one parquet file (``event_timestamp`` timestamp[us, UTC],
    ``event_id`` int64); ``*.jsonl`` / ``*.json`` -> JSON lines; a path without a suffix -> a
    folder of ``part-NNNNN.parquet`` files (``parts`` kwarg, default 4), rows partitioned by
    user (each user's rows stay in one file, in arrival order), like a keyed topic.
    Other keyword arguments as in `generate_columns` (``duration``, ``late_fraction``,
    ``jitter_s``, ``late_delay_s``, ``bad_fraction``, ``zipf_s``, ...). ``bad_fraction`` is
    refused for parquet (a typed column cannot hold most malformed values).

    :returns: ``{"path", "format", "rows", "bad_rows", "late_rows", "out_of_order_rows",
        "users", "min_event_timestamp", "max_event_timestamp" (ISO, UTC), "min_event_us",
        "max_event_us", "seconds"}``.
    """
    t0 = time.perf_counter()
    path = Path(path)
    parts = int(kwargs.pop("parts", 4))
    row_group_size = int(kwargs.pop("row_group_size", 100_000))
    suffix = path.suffix.lower()
    fmt = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", "": "parquet-folder"}.get(
        suffix
    )
    if fmt is None:
        raise ValueError(f"unsupported output {path}: use .parquet, .jsonl/.json or a folder")
    if fmt != "jsonl" and kwargs.get("bad_fraction", 0.0) > 0:
        raise ValueError("bad_fraction is only supported for JSON lines output")
    cols = generate_columns(n_events, n_users, start=start, seed=seed, **kwargs)

    if fmt == "jsonl":
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            buf: list[str] = []
            for line in _iter_json_lines(cols):
                buf.append(line)
                if len(buf) >= 100_000:
                    f.write("\n".join(buf) + "\n")
                    buf.clear()
            if buf:
                f.write("\n".join(buf) + "\n")
    else:
        import pyarrow.parquet as pq

        if fmt == "parquet":
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(_arrow_table(cols), path, row_group_size=row_group_size)
        else:
            path.mkdir(parents=True, exist_ok=True)
            for old in path.glob("part-*.parquet"):
                old.unlink()
            part_of = cols.user_idx % max(parts, 1)
            for p in range(max(parts, 1)):
                rows = np.flatnonzero(part_of == p)
                pq.write_table(
                    _arrow_table(cols, rows),
                    path / f"part-{p:05d}.parquet",
                    row_group_size=row_group_size,
                )

    good = cols.bad_kind < 0
    ts_good = cols.ts_us[good]
    lo = int(ts_good.min()) if len(ts_good) else None
    hi = int(ts_good.max()) if len(ts_good) else None
    return {
        "path": str(path),
        "format": fmt,
        "rows": len(cols),
        "bad_rows": int((~good).sum()),
        "late_rows": int(cols.late.sum()),
        "out_of_order_rows": int(cols.out_of_order().sum()),
        "users": len(np.unique(cols.user_idx)),
        "min_event_us": lo,
        "max_event_us": hi,
        "min_event_timestamp": from_us(lo).isoformat() if lo is not None else None,
        "max_event_timestamp": from_us(hi).isoformat() if hi is not None else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
