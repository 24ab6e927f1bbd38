"""Live terminal progress for long runs (rich), fed from the run's `FlowStats`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.text import Text

from feast_bytewax.observability.metrics import FlowStats


def _line(stats: FlowStats, started: float) -> Text:
    d = stats.as_dict()
    rate = d["consumed"] / max(time.perf_counter() - started, 1e-9)
    return Text(
        f"consumed {d['consumed']:,}  processed {d['processed']:,}  late {d['late']:,}  "
        f"rejected {d['rejected']:,}  rows {d['rows']:,}  offline {d['rows_offline']:,}  "
        f"online {d['rows_online']:,}  ({rate:,.0f} events/s)"
    )


@contextmanager
def live_progress(enabled: bool = True, console: Console | None = None) -> Iterator:
    """Yields an `on_progress(stats)` callback (None when disabled or not a terminal)."""
    console = console or Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    started = time.perf_counter()
    with Live(Text("starting..."), console=console, refresh_per_second=4, transient=True) as live:
        yield lambda stats: live.update(_line(stats, started))
