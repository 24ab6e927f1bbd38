"""`dataflows.live` for bench/kafka_redis_cluster.py, with a probe: when the flow is built
(imports, Feast registry and spec done), when the process exits, this process's flow
counters then, and where feast_bytewax and dataflows came from, written as JSON to
``$KAFKA_REDIS_PROBE.<pid>``, so the bench can time a cluster run without each process's
start-up and check every record was read by the revision measured."""

import atexit
import json
import os
import time

import dataflows.live
import feast_bytewax
from dataflows.live import flow, parts, stats  # noqa: F401  (bytewax.run picks `flow` up)

_ready = time.time()
_probe = os.environ.get("KAFKA_REDIS_PROBE")


def _write() -> None:
    if _probe:
        with open(f"{_probe}.{os.getpid()}", "w") as f:
            json.dump({"ready": _ready, "exit": time.time(), "stop": parts.stop.reason,
                       "feast_bytewax": feast_bytewax.__file__,
                       "dataflows": dataflows.live.__file__, **stats.as_dict()}, f)


atexit.register(_write)
