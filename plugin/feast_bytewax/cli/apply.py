"""`feast-bytewax apply`: compile every stream view of the repo (an unknown function or an
undeclared column fails here, before anything is registered), then `feast apply`."""

from __future__ import annotations

import click

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import RepoSettings, load
from feast_bytewax.dataflow.repo import apply_repo


@click.command("apply", help=__doc__)
@model_options(RepoSettings)
@click.pass_context
def command(ctx: click.Context, **_: object) -> int:
    cfg = load(RepoSettings, **given(ctx, RepoSettings))
    spec = apply_repo(cfg.repo)
    for e in spec.entities:
        click.echo(f"{e.join_key}: {len(e.features)} feature(s) in {', '.join(e.views)}")
    return 0
