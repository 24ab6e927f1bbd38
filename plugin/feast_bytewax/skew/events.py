"""Skew detection, input side: the options, the raw event log read the way the replay
reads it, and the stream's lateness (visibility) model over it. See `feast_bytewax.skew.report`."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from feast_bytewax.features.spec import EngineSpec, FeatureSpec
from feast_bytewax.ingest.files import EventFileSource, list_event_files
from feast_bytewax.ingest.validate import validate_item
from feast_bytewax.records import Event
from feast_bytewax.timeutil import US_PER_S, from_us, utc_now_us


@dataclass(frozen=True)
class SkewOptions:
    """What `compute_report` needs besides the data. Times in microseconds."""

    watermark_delay_us: int = 5 * US_PER_S
    allowed_lateness_us: int = 600 * US_PER_S
    max_future_us: int = 300 * US_PER_S
    truth: str = "stream"  # or "ideal"
    rtol: float = 1e-9
    atol: float = 1e-9
    sample_keys: float = 1.0
    max_shadow_rows: int = 50_000_000
    top_keys: int = 10
    examples: int = 20
    start_us: int | None = None
    end_us: int | None = None
    s3_endpoint: str | None = None  # for s3:// event logs (default: the environment's)
    entity: str | None = None  # join key of the entity to check (default: the only one)
    # a window of a live run (`skew.window`): compare [window_start_us, window_end_us) only
    window_start_us: int | None = None
    window_end_us: int | None = None

    @property
    def windowed(self) -> bool:
        return self.window_start_us is not None




@dataclass
class EventLog:
    """Valid events in arrival order (`ts` epoch us) and the stream's visibility model."""

    events: pd.DataFrame  # key, event_timestamp (us), used columns, vis, dropped, corrected
    rejected: int
    horizon: int | None
    files: list[str] = field(default_factory=list)
    read_from: int | None = None  # event time the log was read from (None: its beginning)


def sampled_keys(keys: pd.Series, fraction: float) -> np.ndarray:
    """A stable subset of keys (crc32 of the key), `fraction` of them."""
    if fraction >= 1.0:
        return np.ones(len(keys), dtype=bool)
    cut = int(fraction * 1_000_000)
    uniq = pd.unique(keys)
    keep = {k for k in uniq if zlib.crc32(str(k).encode("utf-8")) % 1_000_000 < cut}
    return keys.isin(keep).to_numpy()


def read_events(path: str | Path, spec: EngineSpec, opts: SkewOptions,
                read_from_us: int | None = None) -> EventLog:
    """Read the raw log the way the replay does (same files, order, start/end filter and
    validation rules); invalid rows are counted and left out, as the stream does. A range
    (`start_us`) is read with the events before it that its values depend on, as the
    replay; a window (`windowed`) from `read_from_us` and up to the newest event (later
    events moved the run's watermark, see `skew.window`)."""
    if opts.windowed:
        start, end = read_from_us, None
    else:
        start = opts.start_us - spec.lookback_us if opts.start_us is not None else None
        end = opts.end_us
    df, rejected = _read_frame(path, spec, opts, start, end)
    if opts.windowed and start is not None:  # JSON lines are not filtered by the source
        df = df.loc[df["event_timestamp"].to_numpy() >= start].reset_index(drop=True)
    horizon = int(df["event_timestamp"].max()) if len(df) else None
    if opts.windowed and horizon is not None:
        horizon = min(horizon, opts.window_end_us - 1)
    df = visibility_model(df, spec.join_key, opts)
    keep = sampled_keys(df[spec.join_key], opts.sample_keys)
    df = df.loc[keep].reset_index(drop=True)
    files = list_event_files(path, opts.s3_endpoint)
    return EventLog(df, rejected, horizon, [str(p) for p in files], read_from=start)


def _read_frame(path: str | Path, spec: EngineSpec, opts: SkewOptions, start_us: int | None,
                end_us: int | None) -> tuple[pd.DataFrame, int]:
    """Valid events in arrival order (parquet rows filtered to [start_us, end_us) by the
    source), and the count of invalid records."""
    source = EventFileSource(path, batch_size=50_000,
                             start=from_us(start_us) if start_us is not None else None,
                             end=from_us(end_us) if end_us is not None else None,
                             s3_endpoint_override=opts.s3_endpoint)
    now, max_future = utc_now_us(), opts.max_future_us
    rows: list[tuple] = []
    rejected = 0
    for index, name in enumerate(sorted(source.list_parts())):
        part = source.build_part("skew", name, None)
        try:
            while True:
                try:
                    batch = part.next_batch()
                except StopIteration:
                    break
                for payload, origin in batch:
                    ev = validate_item(payload, origin, now, max_future)
                    if type(ev) is Event:
                        rows.append((ev.event_id, ev.user_id, ev.event_type, ev.amount,
                                     ev.category, ev.event_timestamp, index))
                    else:
                        rejected += 1
        finally:
            part.close()
    cols = ["event_id", spec.join_key, "event_type", "amount", "category", "event_timestamp",
            "partition"]
    df = pd.DataFrame.from_records(rows, columns=cols)
    if len(df) and df["event_id"].map(type).nunique() > 1:
        df["event_id"] = df["event_id"].astype(str)
    df["event_timestamp"] = df["event_timestamp"].astype("int64")
    return df, rejected


def visibility_model(df: pd.DataFrame, key: str, opts: SkewOptions) -> pd.DataFrame:
    """The stream's watermark over arrival order (the row order of `df` within each input
    partition, i.e. file).

    Watermark seen by event i = newest event time of its partition before i - delay. With
    one partition that is exactly the run's watermark; with several, the run's is the
    minimum over the partitions at that moment, which depends on how their reads
    interleaved: for events in order within the delay nothing is behind either way, and
    this model is the bound (an event it calls a correction may have been on time). An
    event at or behind the watermark is a correction visible from it when at most the
    allowed lateness behind, else dropped. Adds `vis` (int us), `corrected`, `dropped`.
    """

    out = df.copy()
    ts = out["event_timestamp"]
    if not len(out):
        out["vis"] = ts
        out["corrected"] = np.zeros(0, bool)
        out["dropped"] = np.zeros(0, bool)
        return out
    part = out["partition"] if "partition" in out.columns else pd.Series(0, index=out.index)
    newest_before = ts.groupby(part).cummax().groupby(part).shift(1)
    wm = newest_before - opts.watermark_delay_us
    behind = (ts <= wm).fillna(False).to_numpy(dtype=bool)
    lag = (wm - ts).to_numpy()
    corrected = behind & (lag <= opts.allowed_lateness_us)
    dropped = behind & ~corrected
    out["vis"] = np.where(corrected, np.nan_to_num(wm.to_numpy(), nan=0), ts).astype("int64")
    out["corrected"] = corrected
    out["dropped"] = dropped
    return out


def counted_mask(f: FeatureSpec, df: pd.DataFrame) -> np.ndarray:
    """Events the feature counts (all its filter clauses hold)."""
    m = np.ones(len(df), dtype=bool)
    for column, allowed in f.where:
        m &= df[column].isin(list(allowed)).to_numpy()
    return m
