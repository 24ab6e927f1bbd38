"""The skew report's verdict as Prometheus gauges, for a periodic `skew --since` run.

Why a file (and optionally a Pushgateway) instead of the run's metrics server: the check is
a short-lived job (cron, a Kubernetes CronJob) that exits before any scrape. node_exporter's
textfile collector reads `*.prom` files from a folder, so the job writes its last verdict
there, atomically (a temp file renamed over the old one: a scrape never sees half a file),
and the alert rule (deploy/prometheus/feast-bytewax-rules.yml) reads the gauges.

Why a private registry of metric families instead of `Gauge` objects: feast sets
PROMETHEUS_MULTIPROC_DIR at import, so prometheus_client keeps gauge values per name and pid
across registries; families built from the report carry exactly this run's values.

The gauges are read from the report dict (`feast_bytewax.skew.report.compute_report`'s
JSON, plain data: no import of the skew package, which sits above this one).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "feast_bytewax_"
JOB = "feast_bytewax_skew"

# name -> (help, labels): the series a skew run exports
SKEW_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "skew_mismatch_rate": ("Share of compared points (offline rows) or served vectors (logged) "
                           "that differ from the batch recomputation, last skew run",
                           ("check", "source")),
    "skew_feature_mismatch_rate": ("Per feature: share of its compared values that differ, "
                                   "last skew run", ("check", "view", "feature")),
    "skew_rows_checked": ("Offline rows (check=offline) or served vectors (check=logged) "
                          "the last skew run compared", ("check", "source")),
    "skew_mismatched": ("Mismatched points (offline) or vectors (logged), last skew run",
                        ("check", "source")),
    "skew_duplicate_rows": ("Offline rows stored more than once (same key and time), last "
                            "skew run", ("source",)),
    "skew_max_mismatch_rate": ("The --max-mismatch-rate the last skew run judged by", ()),
    "skew_passed": ("1 when the last skew run passed its threshold, else 0", ()),
    "skew_window_start_timestamp_seconds": ("Start of the window the last skew run checked "
                                            "(event time, Unix seconds)", ()),
    "skew_window_end_timestamp_seconds": ("End of the window the last skew run checked "
                                          "(exclusive, Unix seconds)", ()),
    "skew_last_run_timestamp_seconds": ("When the last skew run finished (Unix seconds)", ()),
    "skew_run_seconds": ("How long the last skew run took", ()),
}


def _unix(iso: str | None) -> float | None:
    if iso is None:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class SkewCollector(Collector):
    """The families of one report (`SKEW_GAUGES`), with `finished_s` as the run's time."""

    def __init__(self, report: dict[str, Any], finished_s: float) -> None:
        self.report = report
        self.finished_s = finished_s

    def collect(self):
        r = self.report
        fam = {name: GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))
               for name, (doc, labels) in SKEW_GAUGES.items()}
        view_of = {f["name"]: f["view"] for f in r.get("spec", {}).get("features", [])}
        for o in r.get("offline", []):
            src = o["source"]
            fam["skew_mismatch_rate"].add_metric(["offline", src], o["mismatch_rate"])
            fam["skew_rows_checked"].add_metric(["offline", src], o["rows"])
            fam["skew_mismatched"].add_metric(["offline", src], o["mismatched_points"])
            fam["skew_duplicate_rows"].add_metric([src], o["duplicate_rows"])
            for n, s in o["features"].items():
                fam["skew_feature_mismatch_rate"].add_metric(
                    ["offline", view_of.get(n, ""), n], s["mismatch_rate"])
        lg = r.get("logged") or {}
        if lg.get("vectors"):
            svc = str(lg.get("feature_service") or "")
            fam["skew_mismatch_rate"].add_metric(["logged", svc], lg["mismatch_rate"])
            fam["skew_rows_checked"].add_metric(["logged", svc], lg["vectors"])
            fam["skew_mismatched"].add_metric(["logged", svc], lg["mismatched_vectors"])
            for n, s in lg.get("features", {}).items():
                fam["skew_feature_mismatch_rate"].add_metric(
                    ["logged", view_of.get(n, ""), n], s["mismatch_rate"])
        th = r.get("threshold", {})
        if th.get("max_mismatch_rate") is not None:
            fam["skew_max_mismatch_rate"].add_metric([], th["max_mismatch_rate"])
        if th.get("passed") is not None:
            fam["skew_passed"].add_metric([], 1.0 if th["passed"] else 0.0)
        window = r.get("window") or {}
        for name, field in (("skew_window_start_timestamp_seconds", "since"),
                            ("skew_window_end_timestamp_seconds", "until")):
            t = _unix(window.get(field))
            if t is not None:
                fam[name].add_metric([], t)
        fam["skew_last_run_timestamp_seconds"].add_metric([], self.finished_s)
        if r.get("seconds") is not None:
            fam["skew_run_seconds"].add_metric([], r["seconds"])
        yield from fam.values()


def skew_registry(report: dict[str, Any], finished_s: float) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SkewCollector(report, finished_s))
    return registry


def write_skew_metrics(report: dict[str, Any], finished_s: float, path: Path | None = None,
                       pushgateway: str | None = None) -> None:
    """Write the gauges to `path` (temp file + rename) and/or push them (job
    `feast_bytewax_skew`, replacing the job's previous values)."""
    registry = skew_registry(report, finished_s)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), registry)
    if pushgateway is not None:
        push_to_gateway(pushgateway, job=JOB, registry=registry)
