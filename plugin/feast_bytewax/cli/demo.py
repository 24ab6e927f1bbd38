"""`feast-bytewax demo`: the README's main command, end to end on the embedded stores:
generate events -> feast apply -> replay (SQLite online + parquet offline) -> read the
features back through Feast, online and point-in-time."""

from __future__ import annotations

import click

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import DemoConfig, load
from feast_bytewax.dataflow.demo import run_demo


@click.command("demo", help=__doc__)
@model_options(DemoConfig)
@click.pass_context
def command(ctx: click.Context, **_: object) -> int:
    result = run_demo(load(DemoConfig, **given(ctx, DemoConfig)))
    ctx.exit(0 if result.stats.balanced() else 1)
