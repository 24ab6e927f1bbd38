"""The offline commit log (`stores.commits`) against a plain model of what readers must see.

The model is written from the rules alone: a commit makes its rows visible; a replay's
commit first hides every earlier visible row inside its range (except its own run's, from
since it started); per identity (key, time) the row committed last wins. Random sequences of
live commits, replays, reruns and crashes (a writer resumed from an earlier checkpoint) must
read exactly as the model says, and a crashed writer's leftovers are never read.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feast_bytewax.stores.commits import FolderTransaction, read_committed
from feast_bytewax.stores.compaction import compact
from feast_bytewax.stores.folder_names import COMMITS, new_run_id, writer_id

FS = pafs.LocalFileSystem()


def table(rows: list[tuple[str, int, int]]) -> pa.Table:
    return pa.table({
        "user_id": [k for k, _, _ in rows],
        "event_timestamp": pa.array([t for _, t, _ in rows], pa.timestamp("us", tz="UTC")),
        "value": pa.array([v for _, _, v in rows], pa.int64()),
    })


def txn(folder: str, mode: str, run: str | None = None, replace=None) -> FolderTransaction:
    return FolderTransaction(FS, folder, writer_id(run or new_run_id(), "0"), mode,
                             ("user_id",), "event_timestamp", replace)


def part_files(folder: str) -> list[str]:
    return sorted(i.path for i in FS.get_file_info(pafs.FileSelector(folder,
                                                                      allow_not_found=True))
                  if i.type == pafs.FileType.File and i.base_name.startswith("part-"))


def read(folder: str) -> dict[tuple[str, int], int]:
    got = read_committed(FS, folder, part_files(folder), "event_timestamp")
    if got is None:
        return {}
    ts = got["event_timestamp"].cast(pa.int64()).to_pylist()
    keys = list(zip(got["user_id"].to_pylist(), ts, strict=True))
    assert len(set(keys)) == len(keys), "one row per identity"
    return dict(zip(keys, got["value"].to_pylist(), strict=True))


rows_st = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 30),
                             st.integers(0, 99)), min_size=1, max_size=8)
op_st = st.one_of(
    st.tuples(st.just("compact")),
    st.tuples(st.just("live"), rows_st),
    st.tuples(st.just("replay"), rows_st, st.integers(0, 30), st.integers(0, 30),
              st.booleans()),
    st.tuples(st.just("crash"), rows_st),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_st, min_size=1, max_size=8))
def test_readers_see_exactly_what_the_commits_say(tmp_path_factory, ops):
    folder = str(tmp_path_factory.mktemp("commits") / "src")
    model: dict[tuple[str, int], int] = {}
    last_replay: str | None = None
    for op in ops:
        if op[0] == "compact":  # readers see the same before and after, whatever came before
            compact(FS, folder, part_files(folder), "event_timestamp", ["user_id"], grace_s=0)
        elif op[0] == "live":
            w = txn(folder, "live")
            w.write(table(op[1]))
            w.checkpoint()
            model.update({(k, t): v for k, t, v in op[1]})
        elif op[0] == "replay":
            _, rows, a, b, rerun = op
            lo, hi = min(a, b), max(a, b)
            rows = [r for r in rows if lo <= r[1] <= hi]  # a replay writes inside its range
            run = last_replay if rerun and last_replay else new_run_id()
            last_replay = run
            parts = [txn(folder, "replay", run, (lo, hi)) for _ in range(2)]  # 2 partitions
            for r in rows:  # a key's rows all go to one partition (routing by key)
                parts[ord(r[0]) % 2].write(table([r]))
            for p in parts:
                p.checkpoint()
            assert read(folder) == model  # staged: nothing visible yet
            for p in parts:
                p.finish()
            model = {k: v for k, v in model.items() if not lo <= k[1] <= hi}
            model.update({(k, t): v for k, t, v in rows})
        else:  # a live writer commits, writes more, crashes; the resumed one rolls back
            w = txn(folder, "live")
            w.write(table(op[1][:1]))
            state = w.checkpoint()
            w.write(table(op[1][1:] or op[1][:1]))  # never committed
            model.update({(k, t): v for k, t, v in op[1][:1]})
            assert read(folder) == model
            again = FolderTransaction.resume(state, filesystem=FS, folder=folder, mode="live",
                                             keys=("user_id",), ts="event_timestamp")
            assert again.seq == state["seq"]
        assert read(folder) == model


def test_rollback_deletes_what_came_after_the_snapshot_and_temp_debris(tmp_path):
    folder = str(tmp_path / "src")
    w = txn(folder, "live")
    w.write(table([("a", 1, 1)]))
    state = w.checkpoint()
    w.write(table([("a", 2, 2)]))
    w.checkpoint()  # a commit Bytewax never made durable (the crash came before)
    (tmp_path / "src" / f".part-{w.writer}-s00000009.parquet.tmp").write_bytes(b"half")
    (tmp_path / "src" / COMMITS / f".{w.writer}-s00000009.json.tmp").write_bytes(b"{")
    FolderTransaction.resume(state, filesystem=FS, folder=folder, mode="live",
                             keys=("user_id",), ts="event_timestamp")
    names = sorted(p.name for p in (tmp_path / "src").iterdir())
    assert names == [COMMITS, f"part-{w.writer}-s00000000.parquet"]
    commits = sorted(p.name for p in (tmp_path / "src" / COMMITS).iterdir())
    assert commits == [f".{w.writer}.lock", f"{w.writer}-s00000001.json"]  # w is alive
    assert read(folder) == {("a", 1): 1}


def test_parts_of_another_layout_are_read_and_new_columns_read_as_null(tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / "src"
    folder.mkdir()
    pq.write_table(table([("a", 1, 1)]), folder / "part-00000001764628212345678-1a2b3c4d.parquet")
    w = txn(str(folder), "live")
    w.write(table([("b", 2, 2)]).append_column("extra", pa.array([7], pa.int64())))
    w.checkpoint()
    files = sorted(str(p) for p in folder.glob("part-*"))
    got = read_committed(FS, str(folder), files, "event_timestamp", ["user_id"])
    rows = sorted(zip(got["user_id"].to_pylist(), got["extra"].to_pylist(), strict=True))
    assert rows == [("a", None), ("b", 7)]


def test_a_column_whose_type_changed_reads_as_the_newest_part_holds_it(tmp_path, caplog):
    """A feature once declared String (its parts hold strings), then Int64: pyarrow cannot
    merge them, and every read of the folder, compaction included, failed for good. Now the
    older part's column is cast where its values allow and null where they do not."""
    folder = str(tmp_path / "src")
    for rows, values in (([("a", 1), ("b", 1)], pa.array(["x", "5"])),
                         ([("c", 2)], pa.array([2], pa.int64()))):
        w = txn(folder, "live")
        w.write(table([(k, t, 0) for k, t in rows]).set_column(2, "value", values))
        w.checkpoint()
        w.finish()
    with caplog.at_level("WARNING"):
        assert read(folder) == {("a", 1): None, ("b", 1): None, ("c", 2): 2}
    assert "'value' as string, the newest as int64" in caplog.text
    compact(FS, folder, part_files(folder), "event_timestamp", ["user_id"], grace_s=0)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert read(folder) == {("a", 1): None, ("b", 1): None, ("c", 2): 2}
    assert "as string" not in caplog.text  # compaction rewrote it in the newest type


def test_compaction_leaves_few_parts_and_deletes_one_round_later(tmp_path):
    folder = str(tmp_path / "src")
    for i in range(30):
        w = txn(folder, "live")
        w.write(table([("a", i, i), ("b", i, 2 * i)]))
        w.checkpoint()
    r = txn(folder, "replay", replace=(0, 9))
    r.write(table([("a", 5, 500)]))
    r.finish()
    want = read(folder)
    first = compact(FS, folder, part_files(folder), "event_timestamp", ["user_id"], grace_s=0)
    assert first.absorbed_commits == 31 and first.parts_written == 1 and first.rows == 41
    assert read(folder) == want and len(part_files(folder)) == 32  # nothing deleted yet
    later = txn(folder, "live")  # a writer that commits after the compaction wins
    later.write(table([("a", 5, 7)]))
    later.checkpoint()
    want[("a", 5)] = 7
    second = compact(FS, folder, part_files(folder), "event_timestamp", ["user_id"], grace_s=0)
    assert second.files_deleted == 31 + 31  # the first round's parts and markers
    assert read(folder) == want and len(part_files(folder)) == 3  # 2 absorbed by the second
    again = compact(FS, folder, part_files(folder), "event_timestamp", ["user_id"],
                    grace_s=3600)
    assert again.absorbed_commits == 0 and again.files_deleted == 4
    assert read(folder) == want and len(part_files(folder)) == 1
