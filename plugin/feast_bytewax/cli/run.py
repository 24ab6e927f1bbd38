"""`feast-bytewax run`: the live dataflow, Kafka -> features -> Feast, until stopped
(SIGTERM/Ctrl-C) or a stop condition. Brokers, topic and watermark delay default to the
repo's KafkaSource."""

from __future__ import annotations

import click
from rich.console import Console

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import LiveConfig, load
from feast_bytewax.dataflow.live import run_live
from feast_bytewax.observability.progress import live_line, live_progress


@click.command("run", help=__doc__)
@model_options(LiveConfig)
@click.option("--quiet", is_flag=True, help="no live progress display")
@click.pass_context
def command(ctx: click.Context, quiet: bool, **_: object) -> int:
    cfg = load(LiveConfig, **given(ctx, LiveConfig))
    with live_progress(not quiet, Console(stderr=True), live_line) as on_progress:
        result = run_live(
            cfg, None if on_progress is None else lambda s, p: on_progress(s, p.slo),
            handle_signals=True)
    click.echo(result.summary())
    if result.stats.rejected or result.stats.late:
        click.echo(f"dead letters: {result.dead_letters}")
    if result.stop_reason and "aborted" in result.stop_reason:
        ctx.exit(0)  # a requested abort: counts in flight are not settled, nothing to check
    ctx.exit(0 if result.stats.balanced() else 1)
