"""The small CLI commands: generate, apply, replay (argument namespace in, exit code out)."""

from __future__ import annotations

import argparse
from datetime import timedelta

from rich.console import Console

console = Console()


def generate(args: argparse.Namespace) -> int:
    from feast_bytewax.datagen.generate import write_events

    args.out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"duration": timedelta(hours=args.hours), "late_fraction": args.late_fraction}
    if args.bad_fraction:
        kwargs["bad_fraction"] = args.bad_fraction
    stats = write_events(args.out, args.events, args.users, seed=args.seed, start=args.start,
                         **kwargs)
    console.print(
        f"wrote {stats['rows']:,} events ({stats['bad_rows']:,} malformed, "
        f"{stats['late_rows']:,} late) for {stats['users']:,} users to {stats['path']} "
        f"[{stats['min_event_timestamp']} .. {stats['max_event_timestamp']}] "
        f"in {stats['seconds']:.1f}s"
    )
    return 0


def apply(args: argparse.Namespace) -> int:
    from feast_bytewax.dataflow.replay import apply_repo

    apply_repo(args.repo)
    return 0


def replay(args: argparse.Namespace) -> int:
    from feast_bytewax.cli.main import flow_config
    from feast_bytewax.observability.progress import live_progress
    from feast_bytewax.dataflow.replay import describe, run_replay

    cfg = flow_config(args)
    with live_progress(not args.quiet) as on_progress:
        result = run_replay(cfg, args.events, workers=args.workers, start=args.start,
                            end=args.end, on_progress=on_progress,
                            s3_endpoint=getattr(args, "s3_endpoint", None))
    if result.stats.rejected or result.stats.late:
        print(f"dead letters: {result.dead_letter_path}")
    print(describe(result))
    return 0 if result.stats.balanced() else 1
