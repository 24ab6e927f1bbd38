"""What running a Bytewax flow in this process needs around `cli_main`: GC tuning, the
recovery directory (also the one Bytewax's own runner was given), signal handling, a
progress ticker thread, the one clean way to stop a run from inside it (`fatal_stop`), and
the same one-line report for the `dataflows/` entry points' settings (`exit_on_user_error`)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from bytewax.recovery import init_db_dir

from feast_bytewax.dataflow._compat import runner_recovery_dir
from feast_bytewax.errors import ConfigError, FeastBytewaxError

log = logging.getLogger(__name__)


GC_FULL_INTERVAL_S = 600.0


def manage_gc(full_every_s: float = GC_FULL_INTERVAL_S) -> Callable[[], None]:
    """Python's cyclic garbage collector for a run; returns the function that undoes it.

    What is alive now (the repo, Feast's registry, imported modules) is frozen: no pass ever
    walks it again. Then, with `full_every_s` > 0, the automatic collector is turned off and
    a daemon thread runs one full collection every `full_every_s` seconds. Why: a live run
    keeps every event of the watermark delay alive for seconds, so those events survive
    the young generation and pile up in the middle one, whose passes then stopped the
    worker for ~0.3 s every few seconds at 16k events/s: that was the p99 of freshness
    (0.37-0.41 s against 0.12-0.15 s without it, `bench/RESULTS.md`). The engine makes no
    reference cycles (a collection after 20k events through both engines found none), so
    reference counting frees everything it drops; the periodic pass reclaims cycles made
    elsewhere (a client library's), at a cost that grows with the state, so a run with a
    very large state can space it out. 0 keeps the automatic collector, with large
    thresholds (fewer passes)."""
    gc.collect()
    gc.freeze()
    if full_every_s <= 0:
        old = gc.get_threshold()
        gc.set_threshold(50_000, 20, 100)

        def restore_thresholds() -> None:
            gc.set_threshold(*old)
            gc.unfreeze()

        return restore_thresholds
    was_enabled = gc.isenabled()
    gc.disable()
    done = threading.Event()

    def collect_periodically() -> None:
        while not done.wait(full_every_s):
            started = time.perf_counter()
            freed = gc.collect()
            log.debug("full garbage collection: %d objects freed in %.3f s", freed,
                      time.perf_counter() - started)

    thread = threading.Thread(target=collect_periodically, name="feast-bytewax-gc",
                              daemon=True)
    thread.start()

    def restore() -> None:
        done.set()
        thread.join()
        if was_enabled:
            gc.enable()
        gc.unfreeze()

    return restore


@contextmanager
def gc_frozen(full_every_s: float = GC_FULL_INTERVAL_S) -> Iterator[None]:
    """`manage_gc` for the duration of a `with` block (a run in this process)."""
    restore = manage_gc(full_every_s)
    try:
        yield
    finally:
        restore()


def with_runner_recovery(cfg: Any) -> Any:
    """`cfg` (a `FlowConfig`) with the recovery directory of the ``python -m bytewax.run``
    that runs this process (``-r DIR``), for the `dataflows/` entry points: the flow must know
    whether its state is recovered (`dataflow.step` snapshots only then). One directory given
    twice differently is an error."""
    found = runner_recovery_dir()
    if found is None:
        return cfg
    if cfg.recovery_dir is not None and cfg.recovery_dir.resolve() != found.resolve():
        raise ConfigError(f"two recovery directories: bytewax.run -r {found} and "
                          f"FEAST_BYTEWAX_RECOVERY_DIR={cfg.recovery_dir}; give one")
    return cfg.model_copy(update={"recovery_dir": found})


EXIT_USER_ERROR = 2


def error_line(message: str) -> None:
    """The one line on stderr that a stop for a reason the user can act on prints."""
    sys.stderr.write(f"feast-bytewax: error: {message}\n")


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """For the `dataflows/` entry points, which load their settings and build their flow at
    import time under ``python -m bytewax.run``: there a `FeastBytewaxError` (a bad
    ``FEAST_BYTEWAX_*`` value, a missing repo...) would escape through Bytewax's runner as
    a traceback and exit 1, like a crash. Instead: its message as one line and exit 2."""
    try:
        yield
    except FeastBytewaxError as e:
        error_line(str(e))
        sys.stderr.flush()
        raise SystemExit(EXIT_USER_ERROR) from None


def ensure_recovery_dir(path: Path, partitions: int = 1) -> None:
    """Create Bytewax recovery partitions in an empty or missing directory."""
    path.mkdir(parents=True, exist_ok=True)
    if not any(path.iterdir()):
        init_db_dir(path, partitions)
        log.info("initialised %d recovery partition(s) in %s", partitions, path)


class Signals:
    """SIGINT/SIGTERM: the first one stops cleanly (`stop.request_stop`: an end of input), or
    aborts when `abort_first` (recovery on: a restart resumes from the last snapshot); a
    second one aborts. Installed only on the main thread."""

    def __init__(self, stop: Any, abort_first: bool = False) -> None:
        self.stop = stop
        self.abort_first = abort_first
        self.previous: dict[int, Any] = {}
        self.count = 0
        self.aborted: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1 and not self.abort_first:
            log.warning("%s: stopping after flushing everything (again to abort)", name)
            self.stop.request_stop(f"signal {name}")
            return
        self.aborted = f"signal {name}: aborted" + (
            "; a restart resumes from the last recovery snapshot" if self.abort_first else "")
        log.warning(self.aborted)
        raise KeyboardInterrupt

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


@contextmanager
def ticker(every_s: float, fn: Callable[[], None] | None) -> Iterator[None]:
    """Call `fn` every `every_s` seconds on a daemon thread while the block runs."""
    if fn is None:
        yield
        return
    done = threading.Event()

    def run() -> None:
        while not done.wait(every_s):
            fn()

    thread = threading.Thread(target=run, name="feast-bytewax-ticker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


EXIT_FATAL = 3


def fatal_stop(message: str, stats: Any = None, trace: bool = False) -> NoReturn:
    """End the whole run now, cleanly: one line saying what failed, the run's counters, exit
    code 3. Raising inside a Bytewax 0.21 sink or step instead ends in a Rust panic that
    hides the error (and with several processes, in a hang); `os._exit` after flushing is
    the exit its probe showed to be clean, and with recovery a restart resumes from the last
    snapshot. `trace`: the traceback too, if FEAST_BYTEWAX_DEBUG=1."""
    if trace and os.environ.get("FEAST_BYTEWAX_DEBUG", "") not in ("", "0"):
        traceback.print_exc()
    hint = "" if not trace else " (FEAST_BYTEWAX_DEBUG=1 shows the traceback)"
    error_line(f"{message}{hint}")
    if stats is not None:
        sys.stdout.write(f"{stats.summary()} [stopped early: in-flight counts not settled]\n")
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(EXIT_FATAL)
