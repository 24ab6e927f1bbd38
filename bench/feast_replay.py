"""Contender D1, in its own process: the replay into Feast's embedded stores.

    python -m bench.feast_replay feast_replay --events F --spec S --out J --repo COPY

Apart from `bench.contenders` (same arguments and JSON result) because it is the only
contender that loads Feast: keeping Feast's imports out of the other children keeps their
peak RSS to what they need.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.contenders import _cpu, main
from feast_bytewax.config import ReplayConfig
from feast_bytewax.dataflow.replay import run_replay
from feast_bytewax.dataflow.repo import apply_repo, quiet_feast_warnings


def feast_replay(args) -> dict[str, Any]:
    """`feast_bytewax.dataflow.replay.run_replay` (what `feast-bytewax replay` runs) into a
    copy of the repo (sqlite online store, parquet-folder offline store) under bench/out.
    Timed: the replay only (`feast apply` is reported apart)."""
    if not args.repo:
        raise SystemExit("feast_replay needs --repo (a copy of the Feast repo)")
    quiet_feast_warnings()
    repo = Path(args.repo).resolve()
    events = Path(args.events).resolve()
    os.chdir(repo)  # relative store paths land in the copy, never in the project's data/
    t0 = time.perf_counter()
    apply_repo(repo)
    apply_s = time.perf_counter() - t0
    c0 = _cpu()
    res = run_replay(ReplayConfig(repo=repo, events=str(events), workers=1))
    cpu = _cpu() - c0
    st = res.stats
    assert st.balanced(), st.summary()
    return {"events": st.consumed, "seconds": res.seconds, "cpu_seconds": cpu, "rows": st.rows,
            "rows_offline": st.rows_offline, "rows_online": st.rows_online,
            "late": st.late, "corrections": st.corrections, "apply_seconds": apply_s,
            "summary": st.summary()}


if __name__ == "__main__":
    sys.exit(main(contenders={"feast_replay": feast_replay}))
