"""Live terminal progress for long runs (rich), fed from the run's `FlowStats`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from feast_bytewax.observability.metrics import KAFKA_LAG
from feast_bytewax.observability.stats import FlowStats


def consumer_lag() -> dict[str, float]:
    """The per-partition lag gauge of this process, as ``{"topic/partition": lag}``."""
    out = {}
    for metric in KAFKA_LAG.collect():
        for s in metric.samples:
            out[f"{s.labels['topic']}/{s.labels['partition']}"] = s.value
    return out


def replay_line(stats: FlowStats, started: float, *_: Any) -> Text:
    d = stats.as_dict()
    rate = d["consumed"] / max(time.perf_counter() - started, 1e-9)
    return Text(
        f"consumed {d['consumed']:,}  processed {d['processed']:,}  late {d['late']:,}  "
        f"rejected {d['rejected']:,}  rows {d['rows']:,}  offline {d['rows_offline']:,}  "
        f"online {d['rows_online']:,}  ({rate:,.0f} events/s)"
    )


def live_line(stats: FlowStats, started: float, slo: Any = None) -> Text:
    """The replay line plus Kafka lag and the freshness SLO state (red while breached)."""
    text = replay_line(stats, started).plain + f"  lag {sum(consumer_lag().values()):,.0f}"
    if slo is not None and slo.last_p99 is not None:
        state = "BREACH" if slo.breached else "ok"
        text += f"  fresh p99 {slo.last_p99:.2f}s [{state}]"
    return Text(text, style="bold red" if slo is not None and slo.breached else "")


@contextmanager
def live_progress(enabled: bool = True, console: Console | None = None,
                  line: Callable[..., Text] = replay_line) -> Iterator:
    """Yields an `on_progress(stats, *extra)` callback (None when disabled or not a
    terminal); `extra` is passed on to `line`."""
    console = console or Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    started = time.perf_counter()
    with Live(Text("starting..."), console=console, refresh_per_second=4, transient=True) as live:
        yield lambda stats, *extra: live.update(line(stats, started, *extra))
