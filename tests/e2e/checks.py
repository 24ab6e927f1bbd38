"""Shared end-to-end helpers: events as Kafka messages, the offline rows a repo holds, and
the row-for-row check against the brute-force reference (tests/reference.py)."""

from __future__ import annotations

import json
import math
import re
import socket
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from feast import FeatureStore

from feast_bytewax.datagen.generate import generate_events
from feast_bytewax.stores.parquet_folder import read_source_frame
from feast_bytewax.timeutil import to_us
from tests import reference as ref

SPEC = ref.shipped_spec()
NAMES = SPEC.feature_names
SOURCE = "user_features_batch"


def as_json(e: dict) -> bytes:
    return json.dumps({**e, "event_timestamp": e["event_timestamp"].isoformat()}).encode()


def as_ref(e: dict) -> dict:
    return {**e, "event_timestamp": to_us(e["event_timestamp"])}


def stream(n: int, users: int, seed: int, minutes: float = 40, **kw) -> list[dict]:
    """Generated events ending ~3 minutes ago (the live flow rejects future times)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes + 5)
    return list(generate_events(n, users, start=start, duration=timedelta(minutes=minutes),
                                seed=seed, **kw))


def missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def close(a, b) -> bool:
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def offline_frame(repo: Path, source: str = SOURCE) -> pd.DataFrame:
    """The rows a reader of the offline store sees (what `get_historical_features` joins),
    sorted by key and time, timestamps as epoch us."""
    store = FeatureStore(repo_path=str(repo))
    df = read_source_frame(store.config, store.get_data_source(source))
    df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]").astype("int64")
    return df.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)


def offline_rows(repo: Path) -> dict[str, list[tuple[int, tuple]]]:
    """Every row the offline store shows, per key, in time order (values in NAMES order)."""
    df = offline_frame(repo)
    out: dict[str, list[tuple[int, tuple]]] = {}
    ts = df["event_timestamp"].tolist()
    cols = [df[n].astype(object).where(df[n].notna(), None).tolist() for n in NAMES]
    for i, key in enumerate(df["user_id"].tolist()):
        out.setdefault(key, []).append((ts[i], tuple(c[i] for c in cols)))
    return out


def check_rows(repo: Path, events: list[dict], visible=None, end: int | None = None) -> int:
    """Offline rows == the reference's change points up to the newest event time (or `end`);
    rows after it (a live watermark moved on) hold the reference's value. Returns the number
    of rows checked."""
    end = max(e["event_timestamp"] for e in events) if end is None else end
    got = offline_rows(repo)
    want = ref.expected_rows(SPEC, events, end, visible)
    got_upto = {k: [r for r in rows if r[0] <= end] for k, rows in got.items()}
    got_upto = {k: v for k, v in got_upto.items() if v}
    assert sorted(got_upto) == sorted(want), "keys with rows differ from the reference"
    n = 0
    for key, rows in want.items():
        mine = got_upto[key]
        assert [t for t, _ in mine] == [t for t, _ in rows], f"row times of {key}"
        for (t, a), (_, b) in zip(mine, rows, strict=True):
            assert all(close(x, y) for x, y in zip(a, b, strict=True)), (key, t, a, b)
            n += 1
    for key, rows in got.items():
        for t, values in rows:
            if t > end:
                expect = ref.value_at(SPEC, events, key, t, visible)
                assert all(close(x, y) for x, y in zip(values, expect, strict=True)), (key, t)
                n += 1
    for rows in got.values():  # per key, row timestamps strictly increase
        stamps = [t for t, _ in rows]
        assert stamps == sorted(set(stamps))
    return n


def metric(port: int, name: str) -> float | None:
    """One sample of a Prometheus metric served on 127.0.0.1:port (None: not served yet)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return None
    m = re.search(rf"^{name} (\S+)$", text.decode(), re.M)
    return float(m.group(1)) if m else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary_numbers(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
