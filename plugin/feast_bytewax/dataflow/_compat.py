"""The one Bytewax runner internal the `dataflows/` entry points read, behind a checked door.

Under ``python -m bytewax.run dataflows.live -r DIR ...`` Bytewax's runner owns recovery:
the module builds its flow at import, before the runner hands the recovery directory to
`cli_main`, and Bytewax gives a flow no way to ask. The flow must know, though: without
recovery its shards skip the per-epoch state snapshot (`dataflow.step`), and the dead-letter
sinks keep their exactly-once session next to the recovery store. So `runner_recovery_dir`
re-reads the runner's own arguments with its private `_parse_args` (the same parser, the
same ``BYTEWAX_RECOVERY_DIRECTORY`` variable), which it refuses to do under a Bytewax it was
not written for.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

from bytewax import run

WRITTEN_FOR = "0.21."
BYTEWAX_VERSION = version("bytewax")
if not BYTEWAX_VERSION.startswith(WRITTEN_FOR):
    raise ImportError(
        f"feast_bytewax.dataflow reads Bytewax {WRITTEN_FOR}x runner arguments; found bytewax "
        f"{BYTEWAX_VERSION}. Install bytewax=={WRITTEN_FOR}* (as pyproject.toml pins)."
    )


def runner_recovery_dir() -> Path | None:
    """The ``-r`` directory of the ``python -m bytewax.run`` this process is, else None
    (also when the process is not Bytewax's runner at all)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "bytewax.run":
        return None
    found = run._parse_args().recovery_directory
    return None if found is None else Path(found)
