"""FeastWriter and the Bytewax FeastSink against a real Feast repo (SQLite + parquet folder)."""

from __future__ import annotations

import pickle
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore

from feast_bytewax.dataflow.feast_sink import FeastSink, FeastSinkPartition
from feast_bytewax.dataflow.lifecycle import RunLifecycle
from feast_bytewax.dataflow.writer import FeastWriter, rows_to_frame
from feast_bytewax.features.spec import EngineSpec, load_spec
from feast_bytewax.records import FeatureRow
from feast_bytewax.stores.parquet_folder import read_source_frame
from feast_bytewax.timeutil import from_us, to_us

FOLDER = Path("data/offline/user_features")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SERVICE = "user_fraud_features"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(feast_repo_dir: Path) -> FeatureStore:
    return FeatureStore(repo_path=str(feast_repo_dir))


@pytest.fixture
def spec(store: FeatureStore) -> EngineSpec:
    return load_spec(store)


def make_row(spec: EngineSpec, key: str, minute: float, cause: str = "event", **values):
    """A FeatureRow at T0 + minute; features not given are None."""
    unknown = set(values) - set(spec.feature_names)
    assert not unknown, unknown
    return FeatureRow(
        key=key,
        event_timestamp=to_us(T0 + timedelta(minutes=minute)),
        values=tuple(values.get(n) for n in spec.feature_names),
        cause=cause,
    )


def full_row(spec: EngineSpec, key: str, minute: float, n: int) -> FeatureRow:
    """A row whose values all derive from n (ints for int features)."""
    return make_row(
        spec, key, minute, purchase_count_30m=n, avg_amount_1h=n / 4, max_amount_24h=n * 1.5,
        failed_logins_10m=n % 3, distinct_categories_session=n % 5,
        max_amount_to_credit_24h=n / 1000, risky_purchase_count_1h=n % 4,
    )


def offline_frame(repo: Path) -> pd.DataFrame:
    """What readers of the offline store see (committed parts only)."""
    store = FeatureStore(repo_path=str(repo))
    return read_source_frame(store.config, store.get_data_source("user_features_batch"))


def part_files(repo: Path) -> list[Path]:
    return sorted((repo / FOLDER).glob("part-*.parquet"))


def online(store: FeatureStore, keys: list[str]) -> dict[str, list]:
    return store.get_online_features(
        features=store.get_feature_service(SERVICE),
        entity_rows=[{"user_id": k} for k in keys],
    ).to_dict(include_event_timestamps=True)


def plain(value):
    """None for any missing value (None, NaN, pd.NA), else the value."""
    return None if value is None or pd.isna(value) else value


# ---------------------------------------------------------------------------------------
# The frame
# ---------------------------------------------------------------------------------------


def test_rows_to_frame_types_and_columns(spec: EngineSpec) -> None:
    rows = [
        full_row(spec, "u1", 0, 4),
        make_row(spec, "u2", 1.5, cause="decay", purchase_count_30m=0),
    ]
    df = rows_to_frame(rows, spec)
    assert list(df.columns) == ["user_id", "event_timestamp", *spec.feature_names]
    assert str(df["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert df["event_timestamp"].tolist() == [T0, T0 + timedelta(minutes=1.5)]
    for feature in spec.features:
        expected = {"int64": "Int64", "float64": "float64"}[feature.dtype]
        assert str(df[feature.name].dtype) == expected, feature.name
    assert df["purchase_count_30m"].tolist() == [4, 0]
    assert df["avg_amount_1h"].iloc[0] == 1.0 and pd.isna(df["avg_amount_1h"].iloc[1])
    assert df["failed_logins_10m"].iloc[1] is pd.NA

    with pytest.raises(ValueError, match=f"expected {len(spec.features)}"):
        rows_to_frame([FeatureRow("u1", 0, (1, 2), "event")], spec)
    with pytest.raises(ValueError, match="purchase_count_30m"):
        rows_to_frame([make_row(spec, "u1", 0, purchase_count_30m=1.5)], spec)


# ---------------------------------------------------------------------------------------
# Offline
# ---------------------------------------------------------------------------------------


def test_each_flush_appends_one_part_and_offline_holds_every_row_once(
    store: FeatureStore, spec: EngineSpec, feast_repo_dir: Path
) -> None:
    writer = FeastWriter(store, spec, max_interval=3600)
    written: list[FeatureRow] = []
    for flush in range(3):
        rows = [full_row(spec, f"u{k}", flush * 10 + k, flush * 100 + k) for k in range(4)]
        rows.append(full_row(spec, "u0", flush * 10 + 5, flush * 100 + 50))  # u0 twice
        writer.write(rows)
        written += rows
        assert writer.pending == len(rows)
        assert writer.flush() == len(rows)
        assert len(part_files(feast_repo_dir)) == flush + 1
        assert len(offline_frame(feast_repo_dir)) == len(written) - len(rows)  # not committed
        writer.checkpoint()
        assert len(offline_frame(feast_repo_dir)) == len(written)

    df = offline_frame(feast_repo_dir)
    # one batch source: exactly its columns, in a fixed order, and every row exactly once
    # (Feast's push() would append the frame once per view: 3 times here)
    assert list(df.columns) == ["user_id", "event_timestamp", *spec.feature_names]
    assert len(df) == len(written)
    got = sorted(
        (r.user_id, to_us(r.event_timestamp.to_pydatetime()),
         *(plain(getattr(r, n)) for n in spec.feature_names))
        for r in df.itertuples(index=False)
    )
    assert got == sorted((r.key, r.event_timestamp, *r.values) for r in written)
    stats = writer.stats()
    assert stats["rows_offline"] == len(written) and stats["flushes"] == 3
    assert stats["rows_in"] == len(written) and stats["rows_pending"] == 0


def test_historical_features_as_of_given_times(
    store: FeatureStore, spec: EngineSpec, feast_repo_dir: Path
) -> None:
    writer = FeastWriter(store, spec, max_rows=7, max_interval=3600)
    written = [
        full_row(spec, f"u{k}", minute, 10 * minute + k)
        for minute in range(0, 60, 6) for k in range(3) if (minute + k) % 4
    ]
    written.append(make_row(spec, "u1", 61, cause="decay", purchase_count_30m=0))
    for i in range(0, len(written), 5):
        writer.write(written[i:i + 5])
    writer.close()
    assert writer.stats()["flushes"] >= 3

    times = [-5, 0, 3, 7, 12, 30, 59, 61, 90]
    entity_df = pd.DataFrame(
        [(f"u{k}", T0 + timedelta(minutes=m)) for k in range(4) for m in times],
        columns=["user_id", "event_timestamp"],
    )
    entity_df["row"] = range(len(entity_df))
    out = store.get_historical_features(
        entity_df, store.get_feature_service(SERVICE)
    ).to_df().set_index("row")

    # independent as-of reference: the newest written row at or before t
    by_key: dict[str, list[FeatureRow]] = {}
    for row in written:
        by_key.setdefault(row.key, []).append(row)
    checked = 0
    for rid, key, t in zip(entity_df["row"], entity_df["user_id"], entity_df["event_timestamp"],
                           strict=True):
        earlier = [r for r in by_key.get(key, []) if from_us(r.event_timestamp) <= t]
        if not earlier:
            # file-store quirk: entity rows without any feature row at or before t are
            # dropped (or come back all null)
            if rid in out.index:
                assert all(plain(out.loc[rid, n]) is None for n in spec.feature_names)
            continue
        expected = max(earlier, key=lambda r: r.event_timestamp).values
        got = tuple(plain(out.loc[rid, n]) for n in spec.feature_names)
        assert got == expected, (key, t)
        checked += 1
    assert checked >= 20


# ---------------------------------------------------------------------------------------
# Online
# ---------------------------------------------------------------------------------------


def test_online_holds_the_latest_row_per_key_with_its_timestamp(
    store: FeatureStore, spec: EngineSpec
) -> None:
    writer = FeastWriter(store, spec, max_interval=3600)
    writer.write([full_row(spec, "u1", 1, 1), full_row(spec, "u2", 2, 2)])
    writer.flush()
    # in one flush: u1 twice in arrival order, u2's newest row arrives before an older one
    writer.write([
        full_row(spec, "u1", 10, 10), full_row(spec, "u1", 11, 11),
        full_row(spec, "u2", 12, 12), full_row(spec, "u2", 5, 5),
        full_row(spec, "u3", 3, 3),
    ])
    writer.flush()
    assert writer.stats()["rows_online"] == len(spec.views) * (2 + 3)  # coalesced x views

    result = online(store, ["u1", "u2", "u3", "nobody"])
    expected = {"u1": (11, 11), "u2": (12, 12), "u3": (3, 3)}
    for i, key in enumerate(["u1", "u2", "u3"]):
        n, minute = expected[key]
        values = full_row(spec, key, minute, n).values
        for name, value in zip(spec.feature_names, values, strict=True):
            assert result[name][i] == value, (key, name)
            ts = T0 + timedelta(minutes=minute)
            assert result[f"{name}__ts"][i] == int(ts.timestamp()), (key, name)
    assert all(result[n][3] is None for n in spec.feature_names)


def test_a_decayed_all_null_row_still_overwrites_online(
    store: FeatureStore, spec: EngineSpec
) -> None:
    writer = FeastWriter(store, spec, max_interval=3600)
    writer.write([full_row(spec, "u1", 0, 8), full_row(spec, "u2", 0, 9)])
    writer.flush()
    writer.write([
        # purchases left their windows: count 0, mean and max undefined
        make_row(spec, "u1", 90, cause="decay", purchase_count_30m=0),
        # everything expired: a view whose features are all null (Feast's
        # write_to_online_store would silently skip such a frame)
        make_row(spec, "u2", 95, cause="decay"),
    ])
    writer.flush()
    result = online(store, ["u1", "u2"])
    u1 = {n: result[n][0] for n in spec.feature_names}
    assert u1["purchase_count_30m"] == 0
    assert u1["avg_amount_1h"] is None and u1["max_amount_24h"] is None
    assert u1["failed_logins_10m"] is None
    assert result["avg_amount_1h__ts"][0] == int((T0 + timedelta(minutes=90)).timestamp())
    for name in spec.feature_names:
        assert result[name][1] is None, name
        assert result[f"{name}__ts"][1] == int((T0 + timedelta(minutes=95)).timestamp())


# ---------------------------------------------------------------------------------------
# Flush policy, resolution
# ---------------------------------------------------------------------------------------


def test_flush_policy_rows_interval_close(
    store: FeatureStore, spec: EngineSpec, feast_repo_dir: Path
) -> None:
    clock = FakeClock()
    writer = FeastWriter(store, spec, max_rows=3, max_interval=timedelta(seconds=1), clock=clock)
    assert writer.write([full_row(spec, "u1", 0, 1), full_row(spec, "u2", 0, 1)]) == 0
    assert writer.pending == 2 and writer.stats()["flushes"] == 0
    assert writer.write([full_row(spec, "u3", 0, 1)]) == 3  # max_rows reached
    assert writer.pending == 0 and writer.stats()["flushes"] == 1

    clock.now = 0.5
    assert writer.write([full_row(spec, "u1", 1, 2)]) == 0
    clock.now = 1.6  # a second after the last flush (at 0.0)
    assert writer.write([full_row(spec, "u1", 2, 3)]) == 2
    assert writer.stats()["flushes"] == 2

    clock.now = 1.7
    writer.write([full_row(spec, "u9", 3, 4)])
    assert writer.pending == 1
    writer.close()
    writer.close()  # idempotent
    assert writer.pending == 0 and writer.stats()["flushes"] == 3
    assert writer.flush() == 0 and writer.stats()["flushes"] == 3  # empty flush: no part
    with pytest.raises(RuntimeError, match="closed"):
        writer.write([full_row(spec, "u1", 4, 5)])
    assert len(part_files(feast_repo_dir)) == 3
    assert len(offline_frame(feast_repo_dir)) == 6  # close() at the end of input commits
    assert writer.stats()["flush_seconds_total"] > 0


def test_online_flushes_on_its_own_clock_offline_waits_for_its_own(
    store: FeatureStore, spec: EngineSpec, feast_repo_dir: Path
) -> None:
    """`online_interval`: the online store is written every 50 ms, the offline one keeps
    `max_interval` (one large part), and a checkpoint flushes both."""
    clock = FakeClock()
    writer = FeastWriter(store, spec, max_interval=10.0, online_interval=0.05, clock=clock)
    writer.write([full_row(spec, "u1", 0, 1)])
    assert writer.stats()["rows_online"] == 0
    for i in range(1, 5):  # every 60 ms a row: each write flushes online, none offline
        clock.now = 0.06 * i
        assert writer.write([full_row(spec, f"u{i + 1}", i, 1)]) == 0
        assert writer.stats()["rows_online"] == (i + 1) * len(writer._online_targets)
        got = online(store, [f"u{i + 1}"])  # readable online at once
        assert got["failed_logins_10m"] == [1]
    assert writer.stats()["rows_offline"] == 0 and part_files(feast_repo_dir) == []
    writer.checkpoint()
    assert writer.stats()["rows_online"] == 5 * len(writer._online_targets)
    assert len(part_files(feast_repo_dir)) == 1 and len(offline_frame(feast_repo_dir)) == 5
    writer.close()


def test_views_resolved_once_and_validated(store: FeatureStore, spec: EngineSpec) -> None:
    writer = FeastWriter(store, spec)
    assert sorted(v.name for v in writer.views) == sorted(spec.views)
    assert {v.stream_source.name for v in writer.views} == {spec.push_source}

    from dataclasses import replace

    with pytest.raises(ValueError, match="not in the registry"):
        FeastWriter(store, replace(spec, views=(*spec.views, "no_such_view")))
    narrow = replace(spec, features=tuple(f for f in spec.features
                                          if f.name != "avg_amount_1h"))
    with pytest.raises(ValueError, match="avg_amount_1h"):
        FeastWriter(store, narrow)
    with pytest.raises(ValueError, match="max_rows"):
        FeastWriter(store, spec, max_rows=0)


# ---------------------------------------------------------------------------------------
# Bytewax
# ---------------------------------------------------------------------------------------


def test_partition_flushes_on_snapshot_and_close(
    store: FeatureStore, spec: EngineSpec, feast_repo_dir: Path
) -> None:
    ended = RunLifecycle()
    ended.finished(None)
    part = FeastSinkPartition(FeastWriter(store, spec, max_rows=10**6, max_interval=3600),
                              ended, None, (None, None))
    part.write_batch([full_row(spec, "u1", 0, 1), full_row(spec, "u2", 0, 2)])
    assert not (feast_repo_dir / FOLDER).exists()
    state = part.snapshot()
    assert list(state["txns"]) == ["user_features_batch"]
    assert len(offline_frame(feast_repo_dir)) == 2
    assert online(store, ["u2"])["purchase_count_30m"] == [2]
    part.write_batch([full_row(spec, "u2", 1, 3)])
    part.close()
    assert online(store, ["u2"])["purchase_count_30m"] == [3]
    assert len(offline_frame(feast_repo_dir)) == 3


def test_bytewax_flow_writes_keyed_rows_through_the_sink(
    spec: EngineSpec, feast_repo_dir: Path
) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    rows = [full_row(spec, f"u{i % 5}", i, i) for i in range(40)]
    sink = FeastSink(feast_repo_dir, partitions=3, max_rows=7)  # spec from the registry
    sink = pickle.loads(pickle.dumps(sink))  # nothing Feast inside before build_part
    assert sink.list_parts() == ["feast-0", "feast-1", "feast-2"]

    flow = Dataflow("feast_sink_test")
    stream = op.input("rows", flow, TestingSource(rows, batch_size=6))
    keyed = op.key_on("by_user", stream, lambda r: r.key)
    op.output("feast", keyed, sink)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_main(flow)

    offline = offline_frame(feast_repo_dir)
    assert len(offline) == len(rows)
    assert sorted(offline["purchase_count_30m"].tolist()) == list(range(40))
    store = FeatureStore(repo_path=str(feast_repo_dir))
    result = online(store, [f"u{k}" for k in range(5)])
    assert result["purchase_count_30m"] == [35, 36, 37, 38, 39]
