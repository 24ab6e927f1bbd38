"""Replay (and skew) reading the raw events from S3: `feast-bytewax replay --events
s3://BUCKET/PREFIX --start .. --end ..` on a standalone moto server writes exactly the offline
rows of the same replay over the local copy of the parts, and never reads the row groups
outside the window.

Configured as a deployment would be: credentials and region from the standard AWS
variables, the endpoint from `AWS_ENDPOINT_URL` (replay) or `--s3-endpoint` (skew).

The generated folder is partitioned by user, not by routing shard, so a shard's arrival
order depends on how the runner interleaves the files. The watermark delay exceeds the
window, so every event is released in event-time order at the end of the input and the rows
do not depend on that interleaving (as in tests/e2e/test_backfill.py's live test).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from feast_bytewax.timeutil import to_us
from tests.conftest import make_feast_repo
from tests.e2e.checks import offline_frame
from tests.services import MOTO_CREDENTIALS

pytestmark = pytest.mark.e2e

BUCKET, PREFIX = "feast-bytewax-raw", "events/v1"
KNOBS = ["--watermark-delay", "14400", "--allowed-lateness", "0", "--flush-rows", "500"]


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory, moto_server):
    """Generated parts (small row groups, arrival order) in a local folder and on S3."""
    from feast_bytewax.datagen.generate import write_events

    folder = tmp_path_factory.mktemp("raw") / "events"
    t0 = (datetime.now(UTC) - timedelta(hours=8)).replace(minute=0, second=0, microsecond=0)
    write_events(folder, 4000, 50, seed=29, start=t0, duration=timedelta(hours=6),
                 late_fraction=0.03, parts=3, row_group_size=100)
    s3 = moto_server.s3()
    s3.create_bucket(Bucket=BUCKET)
    files = sorted(folder.glob("*.parquet"))
    for f in files:
        s3.upload_file(str(f), BUCKET, f"{PREFIX}/{f.name}")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/_SUCCESS", Body=b"")  # ignored, as locally
    return {"folder": folder, "files": files, "start": t0 + timedelta(hours=2),
            "end": t0 + timedelta(hours=4), "uri": f"s3://{BUCKET}/{PREFIX}",
            "endpoint": moto_server.endpoint}


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in MOTO_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("FEAST_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def groups_in_window(path: Path, lo: datetime, hi: datetime) -> tuple[int, int]:
    """(row groups whose timestamp statistics overlap [lo, hi), all row groups)."""
    md = pq.ParquetFile(path).metadata
    col = md.schema.to_arrow_schema().get_field_index("event_timestamp")
    hits = 0
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(col).statistics
        hits += st.max >= lo and st.min < hi
    return hits, md.num_row_groups


def rows_in_window(files: list[Path], lo: datetime, hi: datetime) -> int:
    n = 0
    for f in files:
        ts = pq.read_table(f, columns=["event_timestamp"]).column("event_timestamp")
        lo_s, hi_s = pa.scalar(lo, ts.type), pa.scalar(hi, ts.type)
        n += pc.sum(pc.and_(pc.greater_equal(ts, lo_s), pc.less(ts, hi_s))).as_py() or 0
    return n


@pytest.fixture
def row_groups_read(monkeypatch):
    """Every row group the sources decode (ParquetFile.iter_batches calls)."""
    read: list[int] = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        read.extend(row_groups or range(self.metadata.num_row_groups))
        return original(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    return read


def replay_cli(repo: Path, events: str, lo: datetime, hi: datetime, capsys) -> dict:
    from feast_bytewax.cli.main import main

    code = main(["replay", "--repo", str(repo), "--events", events, "--quiet",
                 "--start", lo.isoformat(), "--end", hi.isoformat(), *KNOBS])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0, line
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_replay_from_s3_equals_local_replay_within_window(
        uploaded, aws_env, row_groups_read, capsys, tmp_path):
    lo, hi = uploaded["start"], uploaded["end"]
    # a range is read from one longest window (24 h) before it: the state needs those events
    read_from = lo - timedelta(hours=24)
    expected_groups = [groups_in_window(f, read_from, hi) for f in uploaded["files"]]
    in_window = rows_in_window(uploaded["files"], read_from, hi)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in uploaded["files"])
    assert 0 < in_window < total

    s3_repo = make_feast_repo(tmp_path / "s3")
    aws_env.setenv("AWS_ENDPOINT_URL", uploaded["endpoint"])
    s3_stats = replay_cli(s3_repo, uploaded["uri"], lo, hi, capsys)
    s3_groups = list(row_groups_read)
    aws_env.delenv("AWS_ENDPOINT_URL")
    row_groups_read.clear()

    local_repo = make_feast_repo(tmp_path / "local")
    local_stats = replay_cli(local_repo, str(uploaded["folder"]), lo, hi, capsys)

    # only the window's events entered the flow, and the same ones from S3 as from disk
    assert s3_stats["consumed"] == local_stats["consumed"] == in_window
    assert s3_stats == local_stats
    # row groups entirely outside the window were skipped by their statistics (not fetched)
    wanted = sum(h for h, _ in expected_groups)
    assert wanted < sum(n for _, n in expected_groups)
    assert len(s3_groups) == len(row_groups_read) == wanted

    s3_rows, local_rows = offline_frame(s3_repo), offline_frame(local_repo)
    assert len(s3_rows) > 500
    assert s3_rows.equals(local_rows)
    assert s3_rows["event_timestamp"].min() == to_us(lo)  # every key gets a row at the start
    assert not (s3_repo / "data/dead_letters.jsonl").exists() or \
        (s3_repo / "data/dead_letters.jsonl").read_text() == ""

    # the skew check reads the same window from S3 (endpoint given on the command line)
    from feast_bytewax.cli.main import main

    out = tmp_path / "skew"
    code = main(["skew", "--repo", str(s3_repo), "--events", uploaded["uri"],
                 "--s3-endpoint", uploaded["endpoint"], "--out", str(out),
                 "--start", lo.isoformat(), "--end", hi.isoformat(),
                 "--watermark-delay", "14400", "--allowed-lateness", "0"])
    report = json.loads((out / "skew_report.json").read_text())
    assert code == 0, report["offline"][0]
    assert report["events"] == uploaded["uri"]
    assert report["event_log"]["files"] == [
        f"{uploaded['uri']}/{f.name}" for f in uploaded["files"]]
    assert report["event_log"]["valid_events"] == in_window
    assert report["offline"][0]["mismatched_points"] == 0


def test_s3_origins_name_the_object_and_resume(uploaded, aws_env):
    from feast_bytewax.ingest.files import EventFileSource

    aws_env.setenv("FEAST_S3_ENDPOINT", uploaded["endpoint"])
    src = EventFileSource(uploaded["uri"] + "/", batch_size=64)
    names = [f.name for f in uploaded["files"]]
    assert src.list_parts() == names
    part = src.build_part("inp", names[1], None)
    first = part.next_batch()
    state = part.snapshot()
    part.close()
    assert [o for _, o in first] == [f"{uploaded['uri']}/{names[1]}:{i}" for i in range(64)]
    part = src.build_part("inp", names[1], state)
    again = part.next_batch()
    part.close()
    assert again[0][1].endswith(f"{names[1]}:64")
    local = pq.read_table(uploaded["files"][1]).slice(64, 1).to_pylist()[0]
    assert again[0][0]["event_id"] == local["event_id"]

    one = EventFileSource(f"{uploaded['uri']}/{names[0]}")
    assert one.list_parts() == [names[0]]
    with pytest.raises(FileNotFoundError):
        EventFileSource(f"s3://{BUCKET}/no/such/prefix").list_parts()
