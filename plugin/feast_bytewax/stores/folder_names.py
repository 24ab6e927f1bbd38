"""Names in a parquet-folder offline store: parts, commit markers, their temp files and the
writers' locks. The one place the file names are spelled, so that the commit log
(`stores.commits`), the writer locks and the collection of dead writers' leftovers
(`stores.writer_locks`) and the compaction (`stores.compaction`) agree on them."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

COMMITS = "_commits"
OUR_PART = re.compile(r"^part-(?P<writer>r[0-9A-Za-z-]+)-s(?P<seq>\d{8})\.parquet$")
OUR_MARKER = re.compile(r"^(?P<writer>r[0-9A-Za-z-]+)-s(?P<seq>\d{8})\.json$")
# the hidden temp of a part (in the folder) or of a marker (in _commits), see `_put`
OUR_TEMP = re.compile(r"^\.(?:part-)?(?P<writer>r[0-9A-Za-z-]+)-s(?P<seq>\d{8})"
                      r"\.(?:parquet|json)\.tmp$")
OUR_LOCK = re.compile(r"^\.(?P<writer>r[0-9A-Za-z-]+)\.lock$")


def new_run_id(digest: str | None = None) -> str:
    """`r<UTC time>-<hex>`: a fresh run, or (digest) one every process of a run agrees on."""
    if digest is not None:
        return f"r0-{digest[:12]}"
    return f"r{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def writer_id(run: str, partition: str) -> str:
    """`<run>-<nonce>-<partition>`: the nonce keeps two executions of one run (a replay run
    again) from ever writing the same file names."""
    return f"{run}-{uuid.uuid4().hex[:8]}-{partition}"


def part_name(writer: str, seq: int) -> str:
    return f"part-{writer}-s{seq:08d}.parquet"


def marker_name(writer: str, seq: int) -> str:
    return f"{writer}-s{seq:08d}.json"
