"""Observability (issue 11, item 4): freshness buckets, the metrics bind address, the SLO
alert read from the histogram, state-size gauges, and the deploy/ dashboard and alert rules
naming only metrics the registry defines."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import re
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource
from click.testing import CliRunner
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from feast_bytewax.cli.main import cli
from feast_bytewax.cli.options import given
from feast_bytewax.cli.skew import command as skew_command
from feast_bytewax.config import FlowConfig, LiveConfig, SkewConfig, load
from feast_bytewax.dataflow import step
from feast_bytewax.dataflow.flow import build_flow, engine_config
from feast_bytewax.dataflow.live import start_metrics, watch_slo
from feast_bytewax.dataflow.step import MEASURE_INTERVAL_S, NO_SNAPSHOT, ShardLogic
from feast_bytewax.engine.shard import ShardEngine
from feast_bytewax.ingest.validate import validate_item
from feast_bytewax.observability.freshness import FreshnessRecorder
from feast_bytewax.observability.metrics import (
    FRESHNESS_ARRIVAL_SECONDS,
    FRESHNESS_BUCKETS,
    FRESHNESS_SECONDS,
)
from feast_bytewax.observability.skew_metrics import skew_registry
from feast_bytewax.observability.slo import FreshnessSLO
from feast_bytewax.observability.state import STATE, StateGauges
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import Event, FeatureRow
from tests.flows.test_bytewax_flow import SPEC, make_stream


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def unique(prefix: str) -> str:
    """A metric name never used before in this process: once `feast` is imported it sets
    PROMETHEUS_MULTIPROC_DIR, and prometheus_client then keeps values per (name, pid) in
    files, so a new registry's metric of a used name starts with the old one's counts."""
    return f"{prefix}_{next(NAMES)}"


NAMES = itertools.count()


def private_histogram() -> Histogram:
    return Histogram(unique("obs_fresh"), "t", buckets=FRESHNESS_BUCKETS,
                     registry=CollectorRegistry())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- (a) buckets ---------------------------------------------------------------------------


def bucket_of(h: Histogram, value: float) -> float:
    """The upper bound of the bucket one observation lands in."""
    before = {s.labels["le"]: s.value for s in h.collect()[0].samples if s.name.endswith("_bucket")}
    h.observe(value)
    after = {s.labels["le"]: s.value for s in h.collect()[0].samples if s.name.endswith("_bucket")}
    return min(float(le) for le in after if after[le] > before[le])


def test_freshness_buckets_resolve_10ms_to_10s():
    b = FRESHNESS_BUCKETS
    assert list(b) == sorted(set(b))
    assert b[0] == 0.01 and 10.0 in b
    inside = [x for x in b if 0.01 <= x <= 10.0]
    assert len(inside) >= 12
    # No step wider than 2.5x from 10 ms to 10 s: a quantile read there is within a bucket
    # that narrow, whatever the run's freshness.
    assert max(hi / lo for lo, hi in itertools.pairwise(inside)) <= 2.5
    # The targets (p50 100 ms, p99 250 ms) and common SLOs are bucket bounds, so an
    # alert at them compares whole buckets, not an interpolation.
    assert {0.1, 0.25, 0.5, 1.0, 5.0} <= set(b)
    for h in (FRESHNESS_SECONDS, FRESHNESS_ARRIVAL_SECONDS):
        les = {s.labels["le"] for s in h.collect()[0].samples if s.name.endswith("_bucket")}
        assert {float(x) for x in les} == {*b, math.inf}


def test_freshness_buckets_tell_10ms_from_20ms_and_5s_from_10s():
    h = private_histogram()
    assert bucket_of(h, 0.009) == 0.01
    assert bucket_of(h, 0.02) == 0.025
    assert bucket_of(h, 0.2) == 0.25
    assert bucket_of(h, 4.0) == 5.0
    assert bucket_of(h, 9.0) == 10.0
    assert bucket_of(h, 11.0) > 10.0


# -- (b) metrics bind address --------------------------------------------------------------


def test_metrics_host_defaults_to_all_addresses_and_reads_the_environment(monkeypatch):
    assert LiveConfig().metrics_host == "0.0.0.0"
    monkeypatch.setenv("FEAST_BYTEWAX_METRICS_HOST", "127.0.0.1")
    assert load(LiveConfig).metrics_host == "127.0.0.1"
    help_text = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "--metrics-host" in help_text


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def test_metrics_bound_to_127_0_0_1_listen_there_only():
    """Linux routes all of 127/8 to lo: a server bound to 127.0.0.1 answers there and refuses
    127.0.0.2, one bound to 0.0.0.0 answers both, so this tells the two apart."""
    port = free_port()
    start_metrics(LiveConfig(metrics_port=port, metrics_host="127.0.0.1"))
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and "feast_bytewax_freshness_seconds_bucket" in body
    with pytest.raises(urllib.error.URLError):
        get(f"http://127.0.0.2:{port}/metrics")
    # The control: the default address does answer on 127.0.0.2.
    other = free_port()
    start_metrics(LiveConfig(metrics_port=other))
    assert get(f"http://127.0.0.2:{other}/metrics")[0] == 200


# -- (c) the SLO alert is the histogram's quantile -----------------------------------------


def prometheus_quantile(q: float, text: str, name: str) -> float | None:
    """`histogram_quantile` as Prometheus evaluates it (promql/quantile.go), over the
    exposition text: written apart from `observability.slo` so the two can disagree."""
    buckets = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name + "_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    total = buckets[-1][1]
    if total == 0:
        return None
    rank = q * total
    i = next(i for i, (_, c) in enumerate(buckets) if c >= rank)
    if i == len(buckets) - 1:
        return buckets[-2][0]
    start, below = (0.0, 0.0) if i == 0 else buckets[i - 1]
    end, count = buckets[i]
    return start + (end - start) * (rank - below) / (count - below)


@pytest.mark.parametrize("values", [
    [0.02] * 990 + [3.0] * 10,
    [0.04] * 500 + [0.3] * 480 + [7.0] * 20,
    [0.012, 0.013, 0.2, 0.2, 0.9, 1.2, 2.0, 6.0, 8.0, 9.5],
    [30.0] * 5,
])
def test_slo_quantile_is_prometheus_histogram_quantile_of_the_same_histogram(values):
    registry = CollectorRegistry()
    name = unique("obs_q")
    h = Histogram(name, "t", buckets=FRESHNESS_BUCKETS, registry=registry)
    slo = FreshnessSLO(0.25, histogram=h, clock=Clock())
    for v in values:
        h.observe(v)
    breached = slo.check()
    expected = prometheus_quantile(0.99, generate_latest(registry).decode(), name)
    assert slo.last_p99 == pytest.approx(expected)
    assert breached == (expected > 0.25)  # the alert rule's own comparison


def test_the_default_slo_reads_the_histogram_the_sink_observes():
    """What the recorder observes for the sink's flushes is what the alert judges (and the
    freshness_p99 gauge shows): one histogram, no second copy of the samples."""
    c = Clock()
    slo = FreshnessSLO(1.0, clock=c)  # baseline: earlier samples of this process excluded
    rec = FreshnessRecorder()
    now = 2_000_000_000_000_000
    rows = [FeatureRow(f"k{i}", now - 3_000_000, (1,), "event") for i in range(50)]
    rec.rows_readable(rows, now_us=now)  # 50 rows, 3 s old each
    assert slo.check() and 2.5 < slo.last_p99 <= 5.0 and slo.last_count == 50
    c.t = 61.0  # a minute later the window holds only fresh rows
    rec.rows_readable([FeatureRow("k0", now, (2,), "event")], now_us=now + 10_000)
    assert not slo.check() and slo.last_p99 <= 0.01


def test_watch_slo_evaluates_the_alert_without_run_lives_ticker():
    """`dataflows/live.py` runs under Bytewax's runner: only `watch_slo` checks its SLO."""
    h = private_histogram()
    slo = FreshnessSLO(1.0, histogram=h)
    assert watch_slo(None) is None
    thread = watch_slo(slo, every_s=0.02)
    assert thread is not None and thread.daemon
    h.observe(4.0)
    deadline = time.monotonic() + 5
    while not slo.breached and time.monotonic() < deadline:
        time.sleep(0.02)
    assert slo.breached and slo.breaches == 1


# -- (d) state size ------------------------------------------------------------------------


def shown(gauge: Gauge, entity: str) -> float:
    """What the gauge exposes for `entity` (as a scrape reads it)."""
    return next(s.value for s in gauge.collect()[0].samples if s.labels["entity"] == entity)


def private_gauges() -> tuple[StateGauges, dict[str, Gauge]]:
    r = CollectorRegistry()
    g = {n: Gauge(unique(n), n, ["entity"], registry=r)
         for n in ("keys", "buffered", "snap", "per_key")}
    return StateGauges(active_keys=g["keys"], buffered=g["buffered"],
                       snapshot_bytes=g["snap"], bytes_per_key=g["per_key"]), g


def test_state_gauges_sum_the_shards_of_an_entity_and_a_new_flow_starts_at_zero():
    gauges, g = private_gauges()
    a, b, other = gauges.slot("user_id"), gauges.slot("user_id"), gauges.slot("merchant_id")
    gauges.update(a, keys=10, buffered=3, snapshot_bytes=1000)
    gauges.update(b, keys=30, buffered=1, snapshot_bytes=3000)
    gauges.update(other, keys=2, buffered=0)
    gauges.update(a, keys=12, buffered=0)  # between snapshots: keys move, bytes stay
    assert gauges.totals("user_id") == {"keys": 42, "buffered": 1, "snapshot_bytes": 4000,
                                        "bytes_per_key": 100.0}  # 4000 B over the 40 keys held
    assert shown(g["snap"], "user_id") == 4000
    assert shown(g["per_key"], "user_id") == 100.0
    assert shown(g["keys"], "merchant_id") == 2
    assert gauges.totals("merchant_id")["bytes_per_key"] == 0.0  # no snapshot yet
    gauges.reset(["user_id"])
    gauges.update(a, keys=99, buffered=9, snapshot_bytes=9)  # a logic of the earlier flow
    fresh = gauges.slot("user_id")
    gauges.update(fresh, keys=5, buffered=0, snapshot_bytes=500)
    assert gauges.totals("user_id") == {"keys": 5, "buffered": 0, "snapshot_bytes": 500,
                                        "bytes_per_key": 100.0}
    assert shown(g["keys"], "merchant_id") == 0


def test_state_gauges_after_a_snapshot_are_the_bytes_bytewax_stored(tmp_path):
    """A small flow under recovery: the snapshot gauge equals the bytes of the last snapshot
    of every shard in Bytewax's recovery store, and active keys are the users seen."""
    arrived, payloads, _ = make_stream(1, 400, 6, late_share=0.0)
    init_db_dir(tmp_path, 1)
    rows, dead = [], []
    flow = build_flow("obs", FlowConfig(shards=4, watermark_delay=5, recovery_dir=tmp_path), SPEC,
                      TestingSource(payloads, batch_size=13), TestingSink(rows),
                      TestingSink(dead), FlowStats())
    cli_main(flow, epoch_interval=timedelta(seconds=0),
             recovery_config=RecoveryConfig(str(tmp_path)))
    stored: dict[str, tuple[int, bytes]] = {}
    for part in tmp_path.glob("*.sqlite3"):
        with sqlite3.connect(part) as db:
            for key, epoch, blob in db.execute(
                    "SELECT state_key, snap_epoch, ser_change FROM snaps "
                    "WHERE step_id = 'obs.features_user_id'"):
                if key not in stored or epoch > stored[key][0]:
                    stored[key] = (epoch, blob)
    assert len(stored) == 4  # one per shard
    snapshot_bytes = sum(len(pickle.loads(blob)) for _, blob in stored.values())
    totals = STATE.totals("user_id")
    assert totals["snapshot_bytes"] == snapshot_bytes > 0
    assert totals["keys"] == len({e["user_id"] for e in arrived}) == 6
    assert totals["bytes_per_key"] == pytest.approx(snapshot_bytes / 6)
    assert totals["buffered"] == 0  # the input ended: everything released


def test_without_recovery_snapshots_are_empty_and_the_state_is_measured_now_and_then(
        monkeypatch):
    """No recovery: Bytewax still asks for a snapshot at every epoch end; the logic returns
    `NO_SNAPSHOT` (no pickling), and the state is pickled to be measured only when its
    measuring time is due: the gauge then shows about the bytes a recovery snapshot would
    hold (estimated from a sample of the state)."""
    _, payloads, _ = make_stream(1, 400, 6, late_share=0.0)
    rows: list = []
    monkeypatch.setattr(step.random, "uniform", lambda lo, hi: hi)  # first measure: 60 s on
    flow = build_flow("obs_norec", FlowConfig(shards=1, watermark_delay=5), SPEC,
                      TestingSource(payloads, batch_size=13), TestingSink(rows),
                      TestingSink([]), FlowStats())
    cli_main(flow, epoch_interval=timedelta(seconds=0))
    assert rows and STATE.totals("user_id")["snapshot_bytes"] == 0  # never due in this run

    engine = ShardEngine(SPEC, engine_config(FlowConfig(watermark_delay=5), 1), None)
    gauges, g = private_gauges()
    logic = ShardLogic(engine, None, "user_id", gauges=gauges, snapshots=False)
    events = [validate_item(p, "t", 0, 10**18) for p, _ in payloads[:200]]
    logic.on_batch([[e for e in events if type(e) is Event]])  # one router list
    logic._measure_due = float("inf")
    assert logic.snapshot() == NO_SNAPSHOT and shown(g["snap"], "user_id") == 0
    logic._measure_due = 0.0  # due now
    assert logic.snapshot() == NO_SNAPSHOT
    exact = len(engine.snapshot())
    assert 0.75 * exact <= shown(g["snap"], "user_id") <= 1.25 * exact  # an estimate
    assert logic._measure_due > time.monotonic() + MEASURE_INTERVAL_S - 5
    with_recovery = ShardLogic(engine, None, "user_id", gauges=gauges)
    assert with_recovery.snapshot() == engine.snapshot() != NO_SNAPSHOT


# -- (e) deploy/: dashboard and alert rules name only metrics we define -----------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}


def exposed_names() -> set[str]:
    """Every series name this process's registry exposes for our metrics (a labelled gauge
    has no sample before its first `labels()`, so names come from the families' types)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    return {fam.name + suffix for fam in REGISTRY.collect()
            if fam.name.startswith("feast_bytewax_") for suffix in suffixes[fam.type]}


def skew_names() -> set[str]:
    """The gauges a `skew --metrics-file` run writes: the families of the registry it
    writes from (an empty report still yields every family)."""
    return {fam.name for fam in skew_registry({}, 0.0).collect()}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: identifiers outside strings, label
    matchers, ranges and by/without lists that are not functions, keywords or numbers."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d\w*", word):
            names.add(word)
    return names


def test_promql_name_extraction_finds_the_series_and_only_them():
    expr = ('histogram_quantile(0.99, sum by (le, entity) (rate(a_bucket{le="0.1", x=~"y|z"}'
            '[1m]))) / clamp_min(sum without (job) (b_total offset 5m), 1) > bool c')
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def expressions(node) -> list[str]:
    if isinstance(node, dict):
        out = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return out + [e for v in node.values() for e in expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return []


def test_dashboard_and_alert_rules_use_only_metrics_the_registry_defines():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "feast-bytewax-rules.yml").read_text())
    dashboard = json.loads((DEPLOY / "grafana" / "feast-bytewax.json").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = exposed_names() | skew_names() | recorded
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    exprs = expressions(rules) + expressions(dashboard)
    assert len(alerts) >= 5 and len(expressions(dashboard)) >= 15
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr  # every query reads a series
        assert names <= known, (expr, names - known)
        used |= names
    # The pieces of issue 11 item 4 are on the dashboard and in the rules.
    for name in ("feast_bytewax_freshness_seconds_bucket", "feast_bytewax_active_keys",
                 "feast_bytewax_snapshot_bytes", "feast_bytewax_state_bytes_per_key",
                 "feast_bytewax_freshness_slo_breached"):
        assert name in used
    # ... and of item 5: the periodic skew check's rate, verdict and last run.
    for name in ("feast_bytewax_skew_mismatch_rate", "feast_bytewax_skew_passed",
                 "feast_bytewax_skew_last_run_timestamp_seconds"):
        assert name in used
    slo_rule = next(r for r in alerts if r["alert"] == "FeastBytewaxFreshnessSLO")
    # The rule is the in-process alert's computation: p99, 1-minute window, same histogram.
    assert slo_rule["expr"].startswith(
        "histogram_quantile(0.99, sum by (le) (rate(feast_bytewax_freshness_seconds_bucket[1m])))")
    assert FreshnessSLO(1.0).q == 0.99 and FreshnessSLO(1.0).window_s == 60.0
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(p["targets"] and p["gridPos"]["w"] <= 24 for p in panels)


def test_the_skew_cronjob_example_runs_a_valid_skew_command():
    """deploy/k8s/skew-cronjob.yaml: its args parse as `feast-bytewax skew` options and make
    a valid settings model with a window, a threshold and an export of the verdict."""
    job = yaml.safe_load((DEPLOY / "k8s" / "skew-cronjob.yaml").read_text())
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    name, *args = container["args"]
    assert name == "skew"
    ctx = skew_command.make_context("skew", list(args))
    cfg = load(SkewConfig, **given(ctx, SkewConfig))
    assert cfg.since == "15m" and cfg.until is None
    assert cfg.max_mismatch_rate > 0
    assert cfg.pushgateway or cfg.metrics_file
