"""`feast-bytewax skew`: recompute every feature in DuckDB from the raw event log (SQL
generated from the same definitions, not the streaming engine), compare with the offline
rows and the logged served vectors, write a JSON + HTML report; exits 1 above
--max-mismatch-rate. `--since 15m` checks a recent window of a live run (for cron or a
Kubernetes CronJob); `--metrics-file` / `--pushgateway` export the verdict as gauges."""

from __future__ import annotations

import time
from pathlib import Path

import click

from feast_bytewax.cli.options import given, model_options
from feast_bytewax.config import SkewConfig, load
from feast_bytewax.dataflow.replay import events_path
from feast_bytewax.dataflow.repo import open_store
from feast_bytewax.features.spec import load_flow_spec
from feast_bytewax.observability.skew_metrics import write_skew_metrics
from feast_bytewax.skew.report import run_skew


@click.command("skew", help=__doc__)
@model_options(SkewConfig)
@click.pass_context
def command(ctx: click.Context, **_: object) -> int:
    cfg = load(SkewConfig, **given(ctx, SkewConfig))
    store = open_store(cfg.repo)
    events = cfg.events or events_path(cfg, load_flow_spec(store))
    code, summary, report = run_skew(cfg, store,
                                     str(Path(events)) if "://" not in events else events)
    click.echo(summary)
    if cfg.metrics_file is not None or cfg.pushgateway is not None:
        metrics = cfg.resolve(cfg.metrics_file) if cfg.metrics_file is not None else None
        write_skew_metrics(report, time.time(), metrics, cfg.pushgateway)
    ctx.exit(code)
