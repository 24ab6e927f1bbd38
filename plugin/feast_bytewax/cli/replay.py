"""`feast-bytewax replay`: run the dataflow over an event file, a folder of parquet parts or
an s3:// prefix (default: the event archive of the repo's KafkaSource) into Feast, then
print the run's accounting; exits 1 if consumed != processed + late + rejected."""

from __future__ import annotations

import click

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import ReplayConfig, load
from feast_bytewax.dataflow.replay import run_replay
from feast_bytewax.observability.progress import live_progress


@click.command("replay", help=__doc__)
@model_options(ReplayConfig)
@click.option("--quiet", is_flag=True, help="no live progress display")
@click.pass_context
def command(ctx: click.Context, quiet: bool, **_: object) -> int:
    cfg = load(ReplayConfig, **given(ctx, ReplayConfig))
    with live_progress(not quiet) as on_progress:
        result = run_replay(cfg, on_progress=on_progress)
    if result.stats.rejected or result.stats.late:
        click.echo(f"dead letters: {result.dead_letter_path}")
    click.echo(result.describe())
    ctx.exit(0 if result.stats.balanced() else 1)
