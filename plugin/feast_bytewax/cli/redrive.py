"""`feast-bytewax redrive`: write the payloads of dead letters back out as event JSON lines.

Every dead letter keeps its original payload (a rejected record's text, a late event as the
object the validator accepts). Fix what needs fixing in the output, add it to the event
archive (a folder reads one partition per file), and replay the range it belongs to: a
replay replaces its range's rows, so the fixed events count with their neighbours (replaying
the dead letters alone would compute features from them alone)."""

from __future__ import annotations

import click

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import RedriveConfig, load
from feast_bytewax.dataflow.deadletters import redrive


@click.command("redrive", help=__doc__)
@model_options(RedriveConfig, required=["out"])
@click.pass_context
def command(ctx: click.Context, **_: object) -> int:
    cfg = load(RedriveConfig, **given(ctx, RedriveConfig))
    kinds = ("rejected", "late") if cfg.kind == "all" else (cfg.kind,)
    counts = redrive(cfg.resolve(cfg.dead_letters), cfg.out, kinds)
    click.echo(", ".join(f"{n:,} {k}" for k, n in counts.items()) + f" -> {cfg.out}")
    return 0
