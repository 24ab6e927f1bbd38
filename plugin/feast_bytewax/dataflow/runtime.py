"""What running a Bytewax flow in this process needs around `cli_main`: GC tuning, the
recovery directory, signal handling, and a progress ticker thread."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bytewax.recovery import init_db_dir

log = logging.getLogger(__name__)


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Full GC passes over millions of long-lived state objects cost ~2x; freeze them."""
    gc.collect()
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


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
