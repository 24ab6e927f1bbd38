"""`feast-bytewax generate`: write realistic events (Zipf users, sessions, jitter, late
arrivals, optionally malformed lines) to a parquet file, a folder of parts or JSON lines."""

from __future__ import annotations

from datetime import timedelta

import click

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import GenerateConfig, load
from feast_bytewax.datagen.generate import write_events


@click.command("generate", help=__doc__)
@model_options(GenerateConfig, required=["out"])
@click.pass_context
def command(ctx: click.Context, **_: object) -> int:
    cfg = load(GenerateConfig, **given(ctx, GenerateConfig))
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"duration": timedelta(hours=cfg.hours), "late_fraction": cfg.late_fraction,
              "parts": cfg.parts}
    if cfg.bad_fraction:
        kwargs["bad_fraction"] = cfg.bad_fraction
    stats = write_events(cfg.out, cfg.count, cfg.users, seed=cfg.seed, start=cfg.start,
                         **kwargs)
    click.echo(
        f"wrote {stats['rows']:,} events ({stats['bad_rows']:,} malformed, "
        f"{stats['late_rows']:,} late) for {stats['users']:,} users to {stats['path']} "
        f"[{stats['min_event_timestamp']} .. {stats['max_event_timestamp']}] "
        f"in {stats['seconds']:.1f}s"
    )
    return 0
