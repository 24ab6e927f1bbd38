"""The `dataflows/` entry points under Bytewax's own runner (``python -m bytewax.run
dataflows.<name>``) with a bad setting: they load it at import time, inside Bytewax's runner,
where a `ConfigError` used to escape as a 14-line traceback with exit 1 (what a crash gives).
Now it is one ``feast-bytewax: error:`` line naming the variable, and exit 2. Each case fails
before any store or broker is touched, so no service is needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

import feast_bytewax
from feast_bytewax.dataflow.runtime import EXIT_USER_ERROR

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = Path(feast_bytewax.__file__).resolve().parents[1]  # the code under test


def run_entry_point(args: list[str], settings: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEAST_BYTEWAX_")}
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(settings)
    return subprocess.run([sys.executable, "-m", "bytewax.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("module", "settings", "named"), [
    ("dataflows.live", {"FEAST_BYTEWAX_SHARDS": "abc"}, "FEAST_BYTEWAX_SHARDS"),
    ("dataflows.replay", {"FEAST_BYTEWAX_WATERMARK_DELAY": "-1"},
     "FEAST_BYTEWAX_WATERMARK_DELAY"),
])
def test_a_bad_setting_is_one_line_and_exit_2(module, settings, named):
    proc = run_entry_point([module], settings)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_USER_ERROR, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("feast-bytewax: error: "), lines
    assert named in lines[0], lines


def test_two_recovery_directories_are_one_line_and_exit_2(tmp_path):
    """The runner's ``-r DIR`` and a different FEAST_BYTEWAX_RECOVERY_DIR
    (`with_runner_recovery`, also run at import time)."""
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    proc = run_entry_point(["dataflows.replay", "-r", str(recovery), "-s", "1", "-b", "0"],
                           {"FEAST_BYTEWAX_RECOVERY_DIR": str(tmp_path / "elsewhere")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_USER_ERROR, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and "two recovery directories" in lines[0], lines
