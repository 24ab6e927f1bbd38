"""Replay sources (EventFileSource) and the dead-letter sink, through real bytewax flows."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main

from feast_bytewax.dataflow.deadletters import (
    DeadLetterSink,
    count_by_code,
    keyed,
    read_dead_letters,
)
from feast_bytewax.datagen.generate import write_events
from feast_bytewax.ingest.files import EventFileSource, list_event_files
from feast_bytewax.ingest.timestamps import EpochUs
from feast_bytewax.ingest.validate import validate_item
from feast_bytewax.records import Event, Late, Rejected, dead_letter_record
from feast_bytewax.timeutil import to_us, utc_now_us

START = datetime(2026, 10, 1, tzinfo=UTC)
HOUR_US = 3_600_000_000


def run_source(src) -> list:
    out: list = []
    flow = Dataflow("src_test")
    s = op.input("inp", flow, src)
    op.output("out", s, TestingSink(out))
    run_main(flow)
    return out


def drain(part) -> list:
    out = []
    while True:
        try:
            out.extend(part.next_batch())
        except StopIteration:
            return out


@pytest.fixture
def parquet_file(tmp_path):
    p = tmp_path / "ev.parquet"
    write_events(p, 2500, 60, seed=3, start=START, duration=timedelta(hours=2), row_group_size=700)
    return p


def test_parquet_file_every_row_once_in_order(parquet_file):
    out = run_source(EventFileSource(parquet_file, batch_size=300))
    t = pq.read_table(parquet_file)
    assert len(out) == t.num_rows == 2500
    assert [o for _, o in out] == [f"ev.parquet:{i}" for i in range(2500)]
    assert [r["event_id"] for r, _ in out] == t.column("event_id").to_pylist()
    ts = t.column("event_timestamp").cast(pa.int64()).to_pylist()
    assert [r["event_timestamp"] for r, _ in out] == ts
    assert all(type(r["event_timestamp"]) is EpochUs for r, _ in out)
    now = utc_now_us()
    evs = [validate_item(r, o, now, HOUR_US) for r, o in out]
    assert all(isinstance(e, Event) for e in evs)
    assert evs[5].origin == "ev.parquet:5" and evs[5].event_timestamp == ts[5]


def test_parquet_folder_one_partition_per_file(tmp_path):
    folder = tmp_path / "ev"
    write_events(folder, 3000, 60, seed=3, start=START, parts=3, row_group_size=400)
    (folder / "_SUCCESS").write_text("")  # markers and hidden files are ignored
    src = EventFileSource(folder, batch_size=250)
    assert src.list_parts() == [f"part-{i:05d}.parquet" for i in range(3)]
    out = run_source(src)
    assert len(out) == 3000
    assert len({r["event_id"] for r, _ in out}) == 3000
    for f in list_event_files(folder):
        n = pq.ParquetFile(f).metadata.num_rows
        origins = [o for _, o in out if o.startswith(f.name + ":")]
        assert origins == [f"{f.name}:{i}" for i in range(n)]  # in file order, once each


def test_parquet_multi_worker_flow(tmp_path):
    """Two workers share the files: every row still arrives exactly once."""
    from bytewax.testing import cluster_main

    folder = tmp_path / "ev"
    write_events(folder, 2000, 40, seed=9, start=START, parts=4)
    out: list = []
    flow = Dataflow("mw")
    s = op.input("inp", flow, EventFileSource(folder, batch_size=128))
    op.output("out", op.map("origin", s, lambda x: x[1]), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert len(out) == 2000
    assert len(set(out)) == 2000


def test_jsonl_lines_with_origin_and_raw_text(tmp_path):
    p = tmp_path / "ev.jsonl"
    write_events(p, 1200, 30, seed=4, start=START, bad_fraction=0.05)
    with open(p, "ab") as f:
        f.write(b"\n")  # blank line: passed on, rejected downstream
        f.write(b'{"event_id": "\xff"}\r\n')  # not UTF-8, CRLF
        f.write(b'{"no": "newline"}')  # last line without a newline
    text_lines = p.read_bytes().split(b"\n")
    out = run_source(EventFileSource(p, batch_size=100))
    assert len(out) == 1203
    assert [o for _, o in out] == [f"ev.jsonl:{i}" for i in range(1, 1204)]
    assert [x for x, _ in out[:1200]] == [b.decode() for b in text_lines[:1200]]
    assert out[1200][0] == ""
    assert out[1201][0] == b'{"event_id": "\xff"}'  # bytes: undecodable, no \r
    assert out[1202][0] == '{"no": "newline"}'
    now = utc_now_us()
    res = [validate_item(x, o, now, HOUR_US) for x, o in out]
    codes = Counter(r.reason.split(":")[0] for r in res if isinstance(r, Rejected))
    assert codes["bad_json"] >= 2
    assert sum(codes.values()) > 50
    assert all(r.origin == o for r, (_, o) in zip(res, out, strict=True))


def test_jsonl_resume_from_snapshot(tmp_path):
    p = tmp_path / "ev.jsonl"
    write_events(p, 1000, 30, seed=4, start=START)
    src = EventFileSource(p, batch_size=64)
    full = drain(src.build_part("s", "ev.jsonl", None))
    part = src.build_part("s", "ev.jsonl", None)
    head = part.next_batch() + part.next_batch() + part.next_batch()
    state = part.snapshot()
    part.close()
    assert state[0] == 192 and state[1] == sum(len(x.encode()) + 1 for x, _ in head)
    tail = drain(src.build_part("s", "ev.jsonl", state))
    assert head + tail == full
    # an int state (line index) resumes too
    assert drain(src.build_part("s", "ev.jsonl", 192)) == tail
    # a finished partition snapshots the end
    done = src.build_part("s", "ev.jsonl", None)
    drain(done)
    assert done.snapshot() == (1000, p.stat().st_size)


def test_parquet_resume_from_snapshot(parquet_file):
    src = EventFileSource(parquet_file, batch_size=300)
    full = drain(src.build_part("s", "ev.parquet", None))
    for k in (1, 2, 3, 5):  # 300..1500: inside and across row groups of 700
        part = src.build_part("s", "ev.parquet", None)
        head = []
        for _ in range(k):
            head += part.next_batch()
        state = part.snapshot()
        part.close()
        assert state == len(head)
        tail = drain(src.build_part("s", "ev.parquet", state))
        assert head + tail == full, k
    assert drain(src.build_part("s", "ev.parquet", 2500)) == []
    assert drain(src.build_part("s", "ev.parquet", 701))[0][1] == "ev.parquet:701"


def test_parquet_time_filter(parquet_file):
    t = pq.read_table(parquet_file)
    ts = t.column("event_timestamp").cast(pa.int64()).to_pylist()
    lo, hi = START + timedelta(minutes=30), START + timedelta(minutes=70)
    out = run_source(EventFileSource(parquet_file, batch_size=200, start=lo, end=hi))
    expect = [i for i, v in enumerate(ts) if to_us(lo) <= v < to_us(hi)]
    assert 0 < len(expect) < len(ts)
    assert [o for _, o in out] == [f"ev.parquet:{i}" for i in expect]  # true row numbers


def test_parquet_filter_skips_row_groups_and_resumes(parquet_file):
    lo = START + timedelta(minutes=100)
    src = EventFileSource(parquet_file, batch_size=300, start=lo)
    part = src.build_part("s", "ev.parquet", None)
    first = part.next_batch()
    assert first == []  # a whole row group before `start` is skipped without reading rows
    assert part.snapshot() == 700
    rest = drain(part)
    assert rest and all(r["event_timestamp"] >= to_us(lo) for r, _ in rest)


def test_parquet_odd_files(tmp_path):
    """Missing column, naive timestamps, nanosecond tz-aware timestamps, nulls."""
    ns = pa.array([1_793_521_800_123_456_789, None], pa.int64()).cast(pa.timestamp("ns", "UTC"))
    pq.write_table(
        pa.table(
            {
                "event_id": [1, 2],
                "user_id": ["a", "b"],
                "event_type": ["view", "view"],
                "amount": [0.0, 0.0],
                "category": ["x", "y"],
                "event_timestamp": ns,
            }
        ),
        tmp_path / "ns.parquet",
    )
    naive = pa.array([1_793_521_800_000_000], pa.int64()).cast(pa.timestamp("us"))
    pq.write_table(
        pa.table(
            {
                "event_id": [3],
                "user_id": ["c"],
                "event_type": ["view"],
                "amount": [0.0],
                "event_timestamp": naive,
                "extra": [1],
            }
        ),
        tmp_path / "naive.parquet",
    )
    out = run_source(EventFileSource(tmp_path))
    res = {o: validate_item(r, o, utc_now_us(), HOUR_US) for r, o in out}
    assert res["ns.parquet:0"].event_timestamp == 1_793_521_800_123_456
    assert res["ns.parquet:1"].reason.startswith("missing_field: event_timestamp")
    # naive file also lacks `category`: the first failing rule is reported
    assert res["naive.parquet:0"].reason.startswith("missing_field: category")


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        EventFileSource(tmp_path / "nope.parquet").list_parts()


# --- dead letters ---------------------------------------------------------------------------

EV = Event(7, "u1", "view", 0.0, "books", 1_793_521_800_000_000, "ev.jsonl:3")


def test_dead_letter_records():
    rj = dead_letter_record(Rejected("{bad", "bad_json: Expecting value", "ev.jsonl:2"))
    assert rj == {
        "kind": "rejected",
        "code": "bad_json",
        "reason": "bad_json: Expecting value",
        "origin": "ev.jsonl:2",
        "payload": "{bad",
    }
    lt = dead_letter_record(Late(EV, "too_late: 90 s behind", 1_793_521_890_000_000))
    assert lt["kind"] == "late" and lt["code"] == "too_late"
    assert lt["origin"] == "ev.jsonl:3" and lt["watermark"] == 1_793_521_890_000_000
    assert lt["payload"]["event_id"] == 7
    assert lt["payload"]["event_timestamp"] == "2026-11-01T08:30:00+00:00"
    # the payload is input again: validated, it is the same event
    assert validate_item(lt["payload"], "ev.jsonl:3", EV.event_timestamp, 0) == EV
    assert keyed(Late(EV, "r", 0))[0] == "ev.jsonl"
    with pytest.raises(TypeError):
        dead_letter_record(EV)


def test_dead_letter_sink_in_flow_with_parts(tmp_path):
    p = tmp_path / "ev.jsonl"
    st = write_events(p, 3000, 30, seed=4, start=START, bad_fraction=0.05)
    now = utc_now_us()
    flow = Dataflow("dl")
    s = op.input("inp", flow, EventFileSource(p, batch_size=100))
    v = op.map("validate", s, lambda x: validate_item(x[0], x[1], now, HOUR_US))
    bad = op.filter("rejected", v, lambda x: isinstance(x, Rejected))
    op.output("dead", op.map("key", bad, keyed), DeadLetterSink(tmp_path / "dead.jsonl", parts=2))
    run_main(flow)
    files = DeadLetterSink(tmp_path / "dead.jsonl", parts=2).files()
    assert [f.name for f in files] == ["dead.p0.jsonl", "dead.p1.jsonl"]
    recs = list(read_dead_letters(tmp_path / "dead.jsonl", parts=2))
    assert len(recs) == st["bad_rows"]
    lines = p.read_text().splitlines()
    for r in recs:
        assert r["kind"] == "rejected"
        line_no = int(r["origin"].split(":")[1])
        assert r["payload"] == lines[line_no - 1]  # the original text
    assert len(count_by_code(recs)) == 11


class _Boom(Exception):
    pass


def _recovery_flow(src_path, dead_path, now, fail_at: int | None, seen: list):
    def validate(x):
        seen.append(x[1])
        if fail_at is not None:
            time.sleep(0.0005)  # spread the crashing run over several epochs
        if fail_at is not None and len(seen) == fail_at:
            raise _Boom(f"crash at {x[1]}")
        return validate_item(x[0], x[1], now, HOUR_US)

    flow = Dataflow("recover")
    s = op.input("inp", flow, EventFileSource(src_path, batch_size=10))
    bad = op.filter("rejected", op.map("validate", s, validate), lambda x: isinstance(x, Rejected))
    op.output("dead", op.map("key", bad, keyed), DeadLetterSink(dead_path))
    return flow


def test_crash_and_resume_is_exactly_once(tmp_path):
    """Source offsets + dead-letter truncation: a crash and a resume give the clean output."""
    p = tmp_path / "ev.jsonl"
    write_events(p, 2000, 30, seed=4, start=START, bad_fraction=0.05)
    now = utc_now_us()
    clean = tmp_path / "clean.jsonl"
    run_main(_recovery_flow(p, clean, now, None, []))

    db = tmp_path / "db"
    db.mkdir()
    init_db_dir(db, 1)
    rc = RecoveryConfig(db)
    dead = tmp_path / "dead.jsonl"
    seen1: list = []
    with pytest.raises(Exception, match="validate"):  # BytewaxRuntimeError wrapping _Boom
        run_main(
            _recovery_flow(p, dead, now, 1500, seen1),
            epoch_interval=timedelta(milliseconds=100),
            recovery_config=rc,
        )
    # lines were written after the last snapshot: the resume must drop them, not repeat them
    assert dead.stat().st_size > 0
    seen2: list = []
    run_main(
        _recovery_flow(p, dead, now, None, seen2),
        epoch_interval=timedelta(milliseconds=100),
        recovery_config=rc,
    )
    assert seen2, "resumed run read nothing"
    assert seen2[0] != "ev.jsonl:1", "resumed from the start, not from the snapshot"
    assert int(seen2[0].split(":")[1]) <= 1500  # nothing skipped
    assert seen2[-1] == "ev.jsonl:2000"
    assert dead.read_bytes() == clean.read_bytes()


def test_dead_letter_partition_truncates_on_resume(tmp_path):
    sink = DeadLetterSink(tmp_path / "d.jsonl")
    part = sink.build_part("s", "0", None)
    part.write_batch([Rejected("a", "bad_json: x", "f:1")])
    state = part.snapshot()
    part.write_batch([Rejected("b", "bad_json: y", "f:2")])  # after the snapshot: replayed
    part.close()
    part = sink.build_part("s", "0", state)
    part.write_batch([Rejected("b", "bad_json: y", "f:2")])
    part.close()
    assert [r["payload"] for r in read_dead_letters(tmp_path / "d.jsonl")] == ["a", "b"]
    # a fresh run appends (dead letters accumulate across runs)
    part = sink.build_part("s", "0", None)
    part.write_batch([Rejected("c", "bad_json: z", "f:3")])
    part.close()
    assert [r["payload"] for r in read_dead_letters(tmp_path / "d.jsonl")] == ["a", "b", "c"]


def test_dead_letters_of_an_attempt_that_crashed_before_its_first_snapshot_are_replaced(
        tmp_path):
    """With recovery, a fresh start may be the restart of an attempt that never snapshotted:
    its lines are replayed, so they must not stay twice."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"kind": "rejected", "payload": "old run"}) + "\n")
    sink = DeadLetterSink(path, recovery=tmp_path / "rec")
    part = sink.build_part("s", "0", None)
    part.write_batch([Rejected("a", "bad_json: x", "f:1")])  # then a SIGKILL
    part._f.flush()
    again = sink.build_part("s", "0", None)  # the restart: no snapshot was committed
    again.write_batch([Rejected("a", "bad_json: x", "f:1")])
    again.close()
    assert [r["payload"] for r in read_dead_letters(path)] == ["old run", "a"]
