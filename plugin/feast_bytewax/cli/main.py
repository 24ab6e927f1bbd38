"""`feast-bytewax`: what Feast lacks around a stream feature pipeline.

Parses arguments and delegates; each command's logic lives in its own module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

from feast_bytewax.config import FlowConfig


def _aware(text: str) -> datetime:
    """ISO-8601 with an offset (or 'Z'); naive times are refused, as everywhere."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (add Z or +00:00)")
    return dt.astimezone(UTC)


def _flow_args(p: argparse.ArgumentParser) -> None:
    d = FlowConfig()
    p.add_argument("--repo", type=Path, default=d.repo_path,
                   help="Feast repo root holding feature_store.yaml (default: .)")
    p.add_argument("--shards", type=int, default=d.shards, help="routing shards")
    p.add_argument("--watermark-delay", type=float, default=d.watermark_delay_s,
                   metavar="SECONDS", help="bounded out-of-orderness")
    p.add_argument("--allowed-lateness", type=float, default=d.allowed_lateness_s,
                   metavar="SECONDS", help="behind the watermark but still applied")
    p.add_argument("--max-future", type=float, default=d.max_future_s, metavar="SECONDS",
                   help="reject events further ahead of the wall clock")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--flush-rows", type=int, default=d.flush_rows)
    p.add_argument("--flush-interval", type=float, default=d.flush_interval_s, metavar="SECONDS")
    p.add_argument("--dead-letters", type=Path, default=d.dead_letter_path,
                   help="dead-letter JSON-lines file (relative to --repo)")
    p.add_argument("--no-online", action="store_true", help="skip the online store")
    p.add_argument("--no-offline", action="store_true", help="skip the offline store")
    p.add_argument("--workers", type=int, default=1, help="Bytewax worker threads")
    p.add_argument("--quiet", action="store_true", help="no live progress display")


def _s3_endpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible endpoint for s3:// events (default: $FEAST_S3_ENDPOINT, "
                        "$AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS)")


def flow_config(args: argparse.Namespace, **overrides) -> FlowConfig:
    """FlowConfig from the shared flow arguments (pydantic validates the ranges)."""
    values = dict(
        repo_path=args.repo, shards=args.shards, watermark_delay_s=args.watermark_delay,
        allowed_lateness_s=args.allowed_lateness, max_future_s=args.max_future,
        batch_size=args.batch_size, flush_rows=args.flush_rows,
        flush_interval_s=args.flush_interval, dead_letter_path=args.dead_letters,
        write_online=not args.no_online, write_offline=not args.no_offline,
    )
    values.update(overrides)
    return FlowConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feast-bytewax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write realistic demo events (parquet or JSON lines)")
    p.add_argument("--events", type=int, default=100_000, help="number of events")
    p.add_argument("--users", type=int, default=2_000, help="number of users")
    p.add_argument("--out", type=Path, required=True,
                   help="*.parquet, *.jsonl, or a folder (no suffix) of parquet parts")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--start", type=_aware, default=None, help="first event time (ISO, aware)")
    p.add_argument("--hours", type=float, default=24.0, help="time span of the events")
    p.add_argument("--late-fraction", type=float, default=0.01)
    p.add_argument("--bad-fraction", type=float, default=0.0,
                   help="malformed records to inject (JSON lines only)")
    p.set_defaults(handler="feast_bytewax.cli.commands:generate")

    p = sub.add_parser("apply", help="feast apply on the repo (same as `feast apply`)")
    p.add_argument("--repo", type=Path, default=Path("."))
    p.set_defaults(handler="feast_bytewax.cli.commands:apply")

    p = sub.add_parser("replay", help="run the dataflow over an event file into Feast")
    p.add_argument("--events", required=True,
                   help="parquet file, folder of parquet files, or JSON-lines file; "
                        "local or s3://bucket/prefix")
    p.add_argument("--start", type=_aware, default=None, help="only events at or after (parquet)")
    p.add_argument("--end", type=_aware, default=None, help="only events before (parquet)")
    _s3_endpoint_arg(p)
    _flow_args(p)
    p.set_defaults(handler="feast_bytewax.cli.commands:replay")

    p = sub.add_parser("demo", help="generate, apply, replay, then read features back")
    p.add_argument("--repo", type=Path, default=Path("."))
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(handler="feast_bytewax.dataflow.demo:main")

    p = sub.add_parser("run", help="run the live dataflow from a Kafka topic")
    p.add_argument("--source", required=True, help="kafka://HOST:PORT[,HOST:PORT]/TOPIC")
    _flow_args(p)
    from feast_bytewax.dataflow.live import add_run_arguments

    add_run_arguments(p)
    p.set_defaults(handler="feast_bytewax.dataflow.live:main")

    p = sub.add_parser("skew", help="recompute features in batch and compare with what was written")
    p.add_argument("--repo", type=Path, default=Path("."))
    p.add_argument("--events", required=True,
                   help="raw event log (parquet file/folder, JSON lines; local or s3://...)")
    _s3_endpoint_arg(p)
    p.add_argument("--out", type=Path, default=Path("data/skew"), help="report folder")
    d = FlowConfig()
    p.add_argument("--max-mismatch-rate", type=float, default=0.0,
                   help="exit 1 when the mismatch rate exceeds this (default 0)")
    p.add_argument("--truth", choices=["stream", "ideal"], default="stream",
                   help="compare with the stream's visibility model (default) or with every "
                        "event counted from its own time")
    p.add_argument("--start", type=_aware, default=None,
                   help="only events at or after (as given to replay)")
    p.add_argument("--end", type=_aware, default=None, help="only events before")
    p.add_argument("--shards", type=int, default=d.shards, help="routing shards of the run")
    p.add_argument("--watermark-delay", type=float, default=d.watermark_delay_s,
                   metavar="SECONDS", help="watermark delay of the run")
    p.add_argument("--allowed-lateness", type=float, default=d.allowed_lateness_s,
                   metavar="SECONDS", help="allowed lateness of the run")
    p.add_argument("--rtol", type=float, default=1e-9, help="relative tolerance for floats")
    p.add_argument("--atol", type=float, default=1e-9, help="absolute tolerance for floats")
    p.add_argument("--sample-keys", type=float, default=1.0, metavar="FRACTION",
                   help="check a stable fraction of the keys (large logs)")
    p.add_argument("--feature-service", default=None,
                   help="feature service whose logs to check (default: the one with logging)")
    p.set_defaults(handler="feast_bytewax.skew.report:main")
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="Stream feature views are experimental")
    args = build_parser().parse_args(argv)
    module, func = args.handler.split(":")
    return int(getattr(importlib.import_module(module), func)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
