"""`feast-bytewax generate`: write realistic events (Zipf users, sessions, jitter, late
arrivals, optionally malformed lines) to a parquet file, a folder of parts or JSON lines, and
next to them the reference tables to join them with: user profile versions (valid from their
`updated_at`, some only during or after the stream) and a category risk table."""

from __future__ import annotations

from datetime import timedelta

import click

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import GenerateConfig, load
from feast_bytewax.datagen.generate import DEFAULT_START, write_events
from feast_bytewax.datagen.profiles import (
    generate_category_risk,
    generate_profiles,
    profile_counts,
    write_category_risk,
    write_profiles,
)


@click.command("generate", help=__doc__)
@model_options(GenerateConfig, required=["out"])
@click.pass_context
def command(ctx: click.Context, **_: object) -> int:
    cfg = load(GenerateConfig, **given(ctx, GenerateConfig))
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    duration = timedelta(hours=cfg.hours)
    kwargs = {"duration": duration, "late_fraction": cfg.late_fraction, "parts": cfg.parts}
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

    # The same users, seed and window as the events, so every event id has its profiles.
    start = DEFAULT_START if cfg.start is None else cfg.start
    profiles = generate_profiles(cfg.users, start, duration, cfg.seed)
    path = write_profiles(cfg.profiles or cfg.out.parent / "profiles.parquet", profiles)
    c = profile_counts(profiles, start, duration)
    click.echo(
        f"wrote {c['versions']:,} profile versions for {c['users']:,} users to {path} "
        f"({c['before_start']:,} before the events, {c['during']:,} during, "
        f"{c['after_end']:,} after; {c['users_without_version_at_start']:,} users without a "
        f"profile at the start)"
    )
    risk = generate_category_risk(cfg.seed, as_of=start - timedelta(days=1))
    path = write_category_risk(cfg.category_risk or cfg.out.parent / "category_risk.parquet",
                               risk)
    click.echo(f"wrote {risk.num_rows} category risks to {path}")
    return 0
