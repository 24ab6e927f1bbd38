"""Feature logging through the LoggingProvider: in-process `get_online_features` and the
unchanged `feast serve` both leave log rows in Feast's logged-features format that read
back (through Feast) with the served values, their event timestamps and the serve time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_feast_repo

pytestmark = pytest.mark.e2e

SERVICE = "user_fraud_features"
LOGGING_YAML = """
provider: feast_bytewax.stores.feature_logging.LoggingProvider
feast_bytewax_logging:
  flush_interval_s: 0.2
"""


def enable_logging(repo: Path) -> None:
    text = (repo / "feature_store.yaml").read_text().replace("provider: local\n", "")
    (repo / "feature_store.yaml").write_text(text + LOGGING_YAML)


@pytest.fixture(scope="module")
def served_repo(tmp_path_factory) -> Path:
    from feast_bytewax.config import ReplayConfig
    from feast_bytewax.dataflow.replay import run_replay
    from feast_bytewax.datagen.generate import write_events

    repo = make_feast_repo(tmp_path_factory.mktemp("logging") / "repo")
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    write_events(repo / "data/events.parquet", 600, 12, seed=5, start=start,
                 duration=timedelta(hours=2))
    run_replay(ReplayConfig(repo=repo, events=str(repo / "data/events.parquet")))
    enable_logging(repo)
    return repo


def users(repo: Path) -> list[str]:
    return sorted(pd.read_parquet(repo / "data/events.parquet")["user_id"].unique())


def log_dir(repo: Path) -> Path:
    return repo / "data/feature_logs" / SERVICE


def clear_logs(repo: Path) -> None:
    """Flush what earlier tests' stores still buffer, then remove the logs."""
    import shutil

    from feast_bytewax.stores.feature_log_buffer import flush_all

    flush_all()
    shutil.rmtree(log_dir(repo), ignore_errors=True)


def read_logs(repo: Path) -> pd.DataFrame:
    from feast import FeatureStore

    from feast_bytewax.stores.feature_logging import read_logged_features

    store = FeatureStore(repo_path=str(repo))
    return read_logged_features(store, SERVICE)


def test_logging_provider_is_loaded_and_passes_through(served_repo):
    from feast import FeatureStore

    from feast_bytewax.stores.feature_logging import LoggingProvider

    store = FeatureStore(repo_path=str(served_repo))
    assert isinstance(store._get_provider(), LoggingProvider)
    u = users(served_repo)[:3]
    got = store.get_online_features(features=store.get_feature_service(SERVICE),
                                    entity_rows=[{"user_id": x} for x in u]).to_dict()
    assert got["user_id"] == u
    assert all(v is not None for v in got["purchase_count_30m"])


def test_in_process_reads_are_logged_with_values_and_timestamps(served_repo):
    from feast import FeatureStore
    from feast.feature_logging import LOG_TIMESTAMP_FIELD, REQUEST_ID_FIELD

    clear_logs(served_repo)
    store = FeatureStore(repo_path=str(served_repo))
    service = store.get_feature_service(SERVICE)
    u = [*users(served_repo)[:4], "never_seen"]
    before = datetime.now(UTC)
    resp = store.get_online_features(features=service, entity_rows=[{"user_id": x} for x in u])
    store.get_online_features(features=service, entity_rows=[{"user_id": u[0]}])
    # a request by feature references (not a logged service) is not logged
    store.get_online_features(features=["user_login_features:failed_logins_10m"],
                              entity_rows=[{"user_id": u[0]}])
    after = datetime.now(UTC)
    provider = store._get_provider()
    provider.flush_feature_logs()
    logs = read_logs(served_repo)
    assert len(logs) == 6
    assert logs[REQUEST_ID_FIELD].nunique() == 2
    first = logs[logs[REQUEST_ID_FIELD] == logs[REQUEST_ID_FIELD].value_counts().index[0]]
    first = first.set_index("user_id").loc[u]
    served = resp.to_dict()
    proto = resp.proto
    names = list(proto.metadata.feature_names.val)
    views = {p.name_to_use(): [f.name for f in p.features]
             for p in service.feature_view_projections}
    for view, feats in views.items():
        for f in feats:
            col = f"{view}__{f}"
            want = served[f]
            got = first[col].tolist()
            assert [None if pd.isna(g) else g for g in got] == want, col
            vec = proto.results[names.index(f)]
            want_ts = [t.seconds * 1_000_000 + t.nanos // 1000 for t in vec.event_timestamps]
            got_ts = [int((t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1))
                      for t in first[f"{col}__timestamp"]]
            assert got_ts == want_ts, col
            assert first[f"{col}__status"].tolist() == [int(s) for s in vec.statuses]
    # never_seen: NOT_FOUND (3) with the 1970 timestamp; the others PRESENT and recent
    assert first.loc["never_seen", "user_login_features__failed_logins_10m__status"] == 3
    assert first.loc[u[0], "user_login_features__failed_logins_10m__status"] == 1
    ts = pd.to_datetime(first[LOG_TIMESTAMP_FIELD], utc=True)
    assert (ts >= before - timedelta(milliseconds=1)).all() and (ts <= after).all()
    assert provider.feature_log.stats["dropped"] == 0


def test_background_thread_flushes_without_being_asked(served_repo):
    from feast import FeatureStore

    clear_logs(served_repo)
    store = FeatureStore(repo_path=str(served_repo))
    service = store.get_feature_service(SERVICE)
    for x in users(served_repo):
        store.get_online_features(features=service, entity_rows=[{"user_id": x}])
    deadline = time.time() + 10
    while time.time() < deadline:
        if store._get_provider().feature_log.stats["rows_written"] == len(users(served_repo)):
            break
        time.sleep(0.05)
    assert len(read_logs(served_repo)) == len(users(served_repo))


def test_sample_rate_is_honoured(served_repo, tmp_path):
    from feast import FeatureService, FeatureStore
    from feast.feature_logging import LoggingConfig
    from feast.infra.offline_stores.file_source import FileLoggingDestination

    clear_logs(served_repo)
    store = FeatureStore(repo_path=str(served_repo))
    svc = store.get_feature_service(SERVICE)
    sampled = FeatureService(
        name="sampled", features=[store.get_stream_feature_view("user_login_features")],
        logging_config=LoggingConfig(
            destination=FileLoggingDestination(path=str(tmp_path / "sampled")),
            sample_rate=0.25))
    store.apply([sampled])
    sampled = store.get_feature_service("sampled")
    for _ in range(400):
        store.get_online_features(features=sampled, entity_rows=[{"user_id": "u1"}])
    store._get_provider().flush_feature_logs()
    n = len(pd.read_parquet(tmp_path / "sampled"))
    assert 50 <= n <= 150  # binomial(400, 0.25): mean 100, sd 8.7
    assert svc.logging_config.sample_rate == 1.0
    store.delete_feature_service("sampled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_feast_serve_requests_are_logged(served_repo):
    """The unchanged `feast serve` (gunicorn + uvicorn worker) with the provider in
    feature_store.yaml: every request lands in the logs, flushed at the latest on shutdown."""
    import requests

    clear_logs(served_repo)
    text = (served_repo / "feature_store.yaml").read_text()
    # a long interval: the rows must come from the shutdown flush
    (served_repo / "feature_store.yaml").write_text(
        text.replace("flush_interval_s: 0.2", "flush_interval_s: 600"))
    port = _free_port()
    feast = Path(sys.executable).with_name("feast")
    proc = subprocess.Popen(
        [str(feast), "-c", str(served_repo), "serve", "-h", "127.0.0.1", "-p", str(port),
         "-w", "1", "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.time() < deadline, "feast serve did not start"
            time.sleep(0.3)
        us = users(served_repo)
        bodies = []
        for i in range(0, len(us), 3):
            r = requests.post(f"{url}/get-online-features", timeout=10, json={
                "feature_service": SERVICE, "entities": {"user_id": us[i:i + 3]}})
            r.raise_for_status()
            bodies.append(r.json())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        (served_repo / "feature_store.yaml").write_text(text)
    logs = read_logs(served_repo)
    assert len(logs) == len(us), out.decode(errors="replace")[-2000:]
    assert logs["__request_id"].nunique() == len(bodies)
    # the served JSON and the log agree value for value
    body = bodies[0]
    names = body["metadata"]["feature_names"]
    row0 = logs.set_index("user_id").loc[body["results"][0]["values"][0]]
    for name, res in zip(names[1:], body["results"][1:], strict=True):
        view = next(c for c in logs.columns if c.endswith(f"__{name}"))
        got = row0[view]
        want = res["values"][0]
        assert (pd.isna(got) and want is None) or got == pytest.approx(want), name
