"""`feast-bytewax compact`: rewrite each parquet-folder batch source's visible rows into few
large parts under one checkpoint commit (superseded and replaced rows gone), safe while runs
write (commits younger than --grace are left alone; files go one compaction later)."""

from __future__ import annotations

import click

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import CompactConfig, load
from feast_bytewax.dataflow.repo import compact_repo


@click.command("compact", help=__doc__)
@model_options(CompactConfig)
@click.pass_context
def command(ctx: click.Context, **_: object) -> int:
    cfg = load(CompactConfig, **given(ctx, CompactConfig))
    for name, r in compact_repo(cfg.repo, cfg.grace).items():
        click.echo(f"{name}: {r.absorbed_commits} commits and {r.absorbed_files} other files "
                   f"-> {r.rows:,} rows in {r.parts_written} parts; {r.files_deleted} files "
                   "deleted (absorbed by an earlier compaction)")
    return 0
