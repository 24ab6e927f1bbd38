"""`skew --metrics-file` / `--pushgateway`: the verdict as Prometheus gauges, parsed back
with prometheus_client's own parser (the format node_exporter's textfile collector reads),
written atomically; the same text pushed to a (stub) Pushgateway."""

from __future__ import annotations

import http.server
import threading
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from feast_bytewax.observability.skew_metrics import SKEW_GAUGES, write_skew_metrics

REPORT = {
    "seconds": 1.5,
    "spec": {"features": [{"name": "purchase_count_30m", "view": "user_features"},
                          {"name": "distinct_categories_session",
                           "view": "user_session_features"}]},
    "window": {"since": "2026-03-01T11:45:00Z", "until": "2026-03-01T12:00:00Z",
               "events_read_from": "2026-03-01T10:45:00Z"},
    "offline": [{"source": "user_features_source", "rows": 1200, "mismatch_rate": 0.025,
                 "mismatched_points": 40, "duplicate_rows": 0,
                 "features": {"purchase_count_30m": {"mismatch_rate": 0.02},
                              "distinct_categories_session": {"mismatch_rate": 0.0}}}],
    "logged": {"vectors": 50, "mismatch_rate": 0.04, "mismatched_vectors": 2,
               "feature_service": "user_fraud_features",
               "features": {"distinct_categories_session": {"mismatch_rate": 0.04}}},
    "threshold": {"max_mismatch_rate": 0.01, "observed_mismatch_rate": 0.04, "passed": False},
}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_file_is_prometheus_text_with_the_verdict(tmp_path):
    path = tmp_path / "textfile" / "feast_bytewax_skew.prom"
    write_skew_metrics(REPORT, 1772366400.0, path)
    text = path.read_text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert {f.type for f in fams.values()} == {"gauge"}
    assert set(fams) == {"feast_bytewax_" + n for n in SKEW_GAUGES}
    got = _samples(text)
    off = (("check", "offline"), ("source", "user_features_source"))
    lg = (("check", "logged"), ("source", "user_fraud_features"))
    assert got[("feast_bytewax_skew_mismatch_rate", off)] == 0.025
    assert got[("feast_bytewax_skew_mismatch_rate", lg)] == 0.04
    assert got[("feast_bytewax_skew_rows_checked", off)] == 1200
    assert got[("feast_bytewax_skew_rows_checked", lg)] == 50
    assert got[("feast_bytewax_skew_feature_mismatch_rate",
                (("check", "offline"), ("feature", "purchase_count_30m"),
                 ("view", "user_features")))] == 0.02
    assert got[("feast_bytewax_skew_passed", ())] == 0
    assert got[("feast_bytewax_skew_max_mismatch_rate", ())] == 0.01
    assert got[("feast_bytewax_skew_last_run_timestamp_seconds", ())] == 1772366400.0
    assert got[("feast_bytewax_skew_window_start_timestamp_seconds", ())] == \
        datetime(2026, 3, 1, 11, 45, tzinfo=UTC).timestamp()
    assert got[("feast_bytewax_skew_window_end_timestamp_seconds", ())] == \
        datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
    # atomically replaced: no temp file left beside it, and a rewrite replaces the values
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    passed = {**REPORT, "threshold": {**REPORT["threshold"], "passed": True}}
    write_skew_metrics(passed, 1772366500.0, path)
    got = _samples(path.read_text())
    assert got[("feast_bytewax_skew_passed", ())] == 1
    assert got[("feast_bytewax_skew_last_run_timestamp_seconds", ())] == 1772366500.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_no_logs_no_logged_series(tmp_path):
    path = tmp_path / "skew.prom"
    write_skew_metrics({**REPORT, "logged": {"vectors": 0}}, 0.0, path)
    labels = {dict(k[1]).get("check") for k in _samples(path.read_text())}
    assert "offline" in labels and "logged" not in labels


def test_pushgateway_receives_the_same_text():
    bodies: list[tuple[str, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            n = int(self.headers["Content-Length"])
            bodies.append((self.command, self.path, self.rfile.read(n)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        write_skew_metrics(REPORT, 1772366400.0, None,
                           pushgateway=f"127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    ((method, path, body),) = bodies
    assert method == "PUT" and path == "/metrics/job/feast_bytewax_skew"
    got = _samples(body.decode())
    assert got[("feast_bytewax_skew_mismatch_rate",
                (("check", "offline"), ("source", "user_features_source")))] == 0.025
