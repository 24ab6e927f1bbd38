"""`dataflow.runtime.manage_gc`: the automatic collector is off during a run, a periodic full
collection still reclaims reference cycles, and everything is put back afterwards."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from feast_bytewax.dataflow.runtime import gc_frozen


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle(collected: threading.Event) -> None:
    """Two objects that only a cycle collection can free; `collected` is set when it does."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    weakref.finalize(a, collected.set)


def test_a_run_turns_the_automatic_collector_off_and_collects_cycles_on_its_own_clock():
    assert gc.isenabled()
    thresholds = gc.get_threshold()
    collected = threading.Event()
    with gc_frozen(0.2):
        assert not gc.isenabled()
        _cycle(collected)
        # allocations that would trigger many automatic passes do not free the cycle ...
        junk = [[i] for i in range(200_000)]
        del junk
        assert not collected.is_set()
        # ... the periodic full collection does
        assert collected.wait(5.0), "the periodic full collection did not run"
    assert gc.isenabled()
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


def test_interval_zero_keeps_the_automatic_collector():
    collected = threading.Event()
    with gc_frozen(0):
        assert gc.isenabled()
        _cycle(collected)
        started = time.monotonic()
        while not collected.is_set() and time.monotonic() - started < 5.0:
            junk = [[i] for i in range(100_000)]  # young passes run as usual
            del junk
        assert collected.is_set()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_what_was_alive_before_the_run_is_frozen_during_it():
    before = gc.get_freeze_count()
    with gc_frozen(60.0):
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0
