"""The life of one run, shared by its feature steps and sinks in this process."""

from __future__ import annotations

import threading


class RunLifecycle:
    """What one run's steps and sinks share in this process: whether the input really ended
    (the feature steps saw `on_eof`), as opposed to an abort, and the final watermark then
    (the newest event time of the input: the same in every shard of every process)."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.end_us: int | None = None

    def finished(self, end_us: int | None) -> None:
        if end_us is not None and (self.end_us is None or end_us > self.end_us):
            self.end_us = end_us
        self.ended.set()

    def __getstate__(self) -> dict:
        return {"ended": self.ended.is_set(), "end_us": self.end_us}

    def __setstate__(self, state: dict) -> None:
        self.ended = threading.Event()
        self.end_us = state["end_us"]
        if state["ended"]:
            self.ended.set()
