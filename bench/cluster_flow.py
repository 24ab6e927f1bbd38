"""`dataflows.replay` for bench/cluster_bench.py, with a probe: when the flow is built
(imports, Feast registry and spec done) and when the process exits, written to
``$CLUSTER_BENCH_PROBE.<pid>`` as two ``time.time()`` floats, so the bench can time the run
without each process's start-up."""

import atexit
import os
import time

from dataflows.replay import flow  # noqa: F401  (bytewax.run picks it up)

_ready = time.time()
_probe = os.environ.get("CLUSTER_BENCH_PROBE")


def _write() -> None:
    if _probe:
        with open(f"{_probe}.{os.getpid()}", "w") as f:
            f.write(f"{_ready} {time.time()}\n")


atexit.register(_write)
