"""Make the repo root importable: `feast_repo` (the Feast definitions) and `tests.reference`."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
