"""The Kafka source, settings and the live run's options without a broker (except two
bounded failure cases on a dead port):
URL and option parsing, stop conditions, the partition adapter (origins, error policy, the
resume-offset fix, exact raw bytes), dead-letter messages, acknowledged delivery, the
freshness SLO monitor and recorder, and the validator's poison cases."""

from __future__ import annotations

import json
import logging
import time

import pytest
from click.testing import CliRunner
from confluent_kafka import OFFSET_BEGINNING
from confluent_kafka import KafkaError as CKError
from prometheus_client import CollectorRegistry, Histogram

from feast_bytewax.cli import run as run_command
from feast_bytewax.cli.main import cli
from feast_bytewax.config import LiveConfig, load, parse_kafka_url
from feast_bytewax.errors import ConfigError
from feast_bytewax.ingest.validate import validate_item
from feast_bytewax.kafka import source as kf
from feast_bytewax.kafka.deadletters import DeadLetterPartition, dead_letter_message
from feast_bytewax.kafka.settings import kafka_options, redact
from feast_bytewax.observability.freshness import FreshnessRecorder
from feast_bytewax.observability.metrics import FRESHNESS_BUCKETS, FRESHNESS_SECONDS, KAFKA_LAG
from feast_bytewax.observability.progress import live_line
from feast_bytewax.observability.slo import FreshnessSLO
from feast_bytewax.observability.slo import quantile as bucket_quantile
from feast_bytewax.observability.stats import FlowStats
from feast_bytewax.records import Event, FeatureRow, Late, Rejected

# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------


def test_parse_kafka_url():
    assert parse_kafka_url("kafka://a:9092/events") == (["a:9092"], "events")
    assert parse_kafka_url("kafka://a:1,b.example:9093/my.topic_x") == (
        ["a:1", "b.example:9093"], "my.topic_x")
    for bad in ("redis://a:1/t", "kafka://a:1/", "kafka:///t", "kafka://a/t", "kafka://a:x/t",
                "kafka://a:1/t/u", "kafka://a:1/t?security.protocol=SSL"):
        with pytest.raises(ValueError):
            parse_kafka_url(bad)


def test_kafka_options_from_env_and_cli():
    env = {"FEAST_BYTEWAX_KAFKA_OPT_SECURITY_PROTOCOL": "SASL_SSL",
           "FEAST_BYTEWAX_KAFKA_OPT_SASL_PASSWORD": "s3cr=t", "OTHER": "x",
           "FEAST_BYTEWAX_KAFKA_OPT_SASL_MECHANISM": "PLAIN"}
    opts = kafka_options(["sasl.mechanism=SCRAM-SHA-512", "ssl.ca.location=/a=b.pem"], env)
    assert opts == {"security.protocol": "SASL_SSL", "sasl.password": "s3cr=t",
                    "sasl.mechanism": "SCRAM-SHA-512", "ssl.ca.location": "/a=b.pem"}
    assert redact(opts)["sasl.password"] == "***"
    with pytest.raises(ValueError):
        kafka_options(["novalue"], {})


def test_live_config_validates_and_comes_from_env(tmp_path, monkeypatch):
    for bad in ({"source": "kafka://h:1"}, {"start_from": "middle"},
                {"source": "kafka://h:1/t", "late_topic": "late"},  # needs a dead-letter topic
                {"shards": 0}, {"kafka_option": ("novalue",)}):
        with pytest.raises(ConfigError, match="bad setting: --"):
            load(LiveConfig, **bad)
    for name, value in {
        "SOURCE": "kafka://h:1,h:2/ev", "REPO": str(tmp_path), "SHARDS": "8",
        "START_FROM": "latest", "DEAD_LETTER_TOPIC": "dlq", "FRESHNESS_SLO": "2.5",
        "IDLE_EXIT": "3", "STOP_AT_END": "1", "ONLINE": "0",
    }.items():
        monkeypatch.setenv("FEAST_BYTEWAX_" + name, value)
    cfg = load(LiveConfig)
    assert (cfg.repo, cfg.shards, cfg.start_from) == (tmp_path, 8, "latest")
    assert (cfg.dead_letter_topic, cfg.freshness_slo, cfg.idle_exit) == ("dlq", 2.5, 3.0)
    assert cfg.stop_at_end and not cfg.online
    assert "watermark_delay" not in cfg.model_fields_set  # the KafkaSource's may apply
    monkeypatch.setenv("FEAST_BYTEWAX_SHARDS", "zero")
    with pytest.raises(ConfigError, match="--shards / FEAST_BYTEWAX_SHARDS"):
        load(LiveConfig)


def test_run_options_are_derived_from_the_model(monkeypatch, tmp_path):
    seen = {}

    def fake_run_live(cfg, on_progress=None, handle_signals=False):
        seen["cfg"] = cfg
        raise ConfigError("stop here")

    monkeypatch.setattr(run_command, "run_live", fake_run_live)
    result = CliRunner().invoke(cli, [
        "run", "--repo", str(tmp_path), "--source", "kafka://h:1/ev", "--kafka-option", "a.b=1",
        "--kafka-option", "c=2", "--start-from", "latest", "--dead-letter-topic", "d",
        "--late-topic", "l", "--freshness-slo", "3", "--max-events", "10", "--idle-exit", "2",
        "--shards", "4", "--epoch-interval", "0.5", "--no-online", "--quiet",
    ])
    assert result.exit_code == 1 and "Error: stop here" in result.output
    cfg = seen["cfg"]
    assert cfg.kafka_option == ("a.b=1", "c=2") and not cfg.online
    assert (cfg.start_from, cfg.dead_letter_topic, cfg.late_topic) == ("latest", "d", "l")
    assert (cfg.freshness_slo, cfg.max_events, cfg.idle_exit) == (3.0, 10, 2.0)
    assert (cfg.shards, cfg.epoch_interval) == (4, 0.5)
    assert cfg.model_fields_set >= {"shards", "source"}
    assert "watermark_delay" not in cfg.model_fields_set
    help_text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "--watermark-delay FLOAT" in help_text and "default: 600.0" in help_text
    assert "FEAST_BYTEWAX_WATERMARK_DELAY" in help_text
    bad = CliRunner().invoke(cli, ["run", "--shards", "0"])
    assert bad.exit_code == 1 and "--shards / FEAST_BYTEWAX_SHARDS" in bad.output
    assert "Traceback" not in bad.output


# ---------------------------------------------------------------------------------------
# Stop conditions
# ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_stop_control_max_events_idle_and_request():
    c = Clock()
    s = kf.StopControl(max_events=5, clock=c)
    assert not s.should_stop()
    s.note(3)
    assert not s.should_stop()
    s.note(2)
    assert s.should_stop() and s.reason == "read 5 records (max 5)"

    s = kf.StopControl(idle_exit_s=2.0, clock=c)
    c.t += 100  # start-up time does not count as idle: armed by the first poll
    assert not s.should_stop()
    c.t += 1.5
    s.note(1)
    c.t += 1.9
    assert not s.should_stop()
    c.t += 0.1
    assert s.should_stop() and "2 s" in s.reason

    s = kf.StopControl()
    s.request_stop("signal SIGTERM")
    s.request_stop("later")
    assert s.should_stop() and s.reason == "signal SIGTERM"
    with pytest.raises(ValueError):
        kf.StopControl(idle_exit_s=0)


# ---------------------------------------------------------------------------------------
# The partition adapter
# ---------------------------------------------------------------------------------------


class FakeMessage:
    """A confluent-kafka `Message` as far as the partition reads it."""

    def __init__(self, offset: int, value, error: CKError | None = None) -> None:
        self._offset, self._value, self._error = offset, value, error

    def error(self):
        return self._error

    def offset(self):
        return self._offset

    def value(self):
        return self._value


class FakeConsumer:
    """`consume` hands out the batches, then the end-of-partition event (as librdkafka does
    with ``enable.partition.eof`` when not tailing)."""

    def __init__(self, batches, high: int) -> None:
        self.batches = list(batches)
        self.high = high

    def consume(self, n: int, timeout: float):
        if not self.batches:
            return [FakeMessage(-1001, None, CKError(CKError._PARTITION_EOF, "end"))]
        return self.batches.pop(0)

    def get_watermark_offsets(self, tp, cached=False):
        return (0, self.high)


class FakeInner:
    """Bytewax's `_KafkaSourcePartition` as far as the adapter uses it: its consumer and its
    resume offset."""

    def __init__(self, batches, high: int = 0) -> None:
        self._offset = OFFSET_BEGINNING
        self._consumer = FakeConsumer(batches, high)
        self.closed = False

    def snapshot(self):
        return self._offset

    def close(self):
        self.closed = True


def msg(offset: int, value) -> FakeMessage:
    return FakeMessage(offset, value)


def err(code: int, fatal: bool = False) -> FakeMessage:
    return FakeMessage(-1001, None, CKError(code, "boom", fatal=fatal))


def part(batches, stop=None, high=0):
    inner = FakeInner(batches, high)
    book = kf.ErrorBook("ev")
    p = kf.EventPartition(inner, "ev", 3, stop or kf.StopControl(), book, batch_size=100)
    return p, inner, book


def test_partition_items_are_payload_and_topic_partition_offset():
    p, inner, _ = part([[msg(7, b'{"a": 1}'), msg(8, b"x")], []], high=9)
    assert p.next_batch() == [(b'{"a": 1}', "ev/3/7"), (b"x", "ev/3/8")]
    assert p.snapshot() == 9 and p.lag == 0
    assert p.next_batch() == [] and p.next_awake() is not None  # idle: back off
    assert p.next_batch() == []  # the end of the partition: input ends at the next call
    with pytest.raises(StopIteration):
        p.next_batch()
    assert p.snapshot() == 9
    p.close()
    assert inner.closed


def test_partition_counts_transient_errors_and_keeps_the_resume_offset(caplog):
    p, _, book = part([[msg(7, b"a"), err(CKError._AUTO_OFFSET_RESET)],
                           [err(CKError._TRANSPORT)]])
    with caplog.at_level(logging.WARNING, logger="feast_bytewax.kafka.source"):
        assert p.next_batch() == [(b"a", "ev/3/7")]
        assert p.snapshot() == 8  # not -1000 (the error's offset + 1)
        assert p.next_batch() == []
        assert p.snapshot() == 8
    assert book.counts == {"_AUTO_OFFSET_RESET": 1, "_TRANSPORT": 1}
    assert any(r.levelno == logging.ERROR and "_AUTO_OFFSET_RESET" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("error", [
    err(CKError._UNKNOWN_PARTITION), err(CKError.TOPIC_AUTHORIZATION_FAILED),
    err(CKError._TRANSPORT, fatal=True),
])
def test_partition_fails_loudly_on_serious_errors(error):
    p, _, _ = part([[msg(1, b"a"), error], [msg(2, b"b")]])
    with pytest.raises(kf.KafkaSourceError, match="ev/3"):
        p.next_batch()
    with pytest.raises(kf.KafkaSourceError):  # and keeps failing
        p.next_batch()


def test_client_errors_fail_only_when_serious():
    p, _, book = part([[msg(1, b"a")], [msg(2, b"b")]])
    book.client_error(CKError(CKError._ALL_BROKERS_DOWN, "down"))
    assert p.next_batch() == [(b"a", "ev/3/1")]
    book.client_error(CKError(CKError._AUTHENTICATION, "bad password"))
    with pytest.raises(kf.KafkaSourceError, match="_AUTHENTICATION"):
        p.next_batch()


def test_partition_stops_when_the_shared_control_says_so():
    stop = kf.StopControl(max_events=2)
    a, _, _ = part([[msg(1, b"a"), msg(2, b"b")], [msg(3, b"c")]], stop)
    b, _, _ = part([[msg(1, b"z")]], stop)
    assert len(a.next_batch()) == 2
    with pytest.raises(StopIteration):
        b.next_batch()  # the other partition stops too
    with pytest.raises(StopIteration):
        a.next_batch()


def test_list_parts_fails_in_bounded_time_on_unreachable_brokers():
    src = kf.KafkaEventSource(["127.0.0.1:1"], "ev", list_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(kf.KafkaSourceError, match="cannot list partitions"):
        src.list_parts()
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------------------------
# Dead letters
# ---------------------------------------------------------------------------------------

NOW = 1_795_000_000_000_000


def rejected_from(value, origin: str) -> Rejected:
    r = validate_item(value, origin, NOW, 300_000_000)
    assert isinstance(r, Rejected)
    return r


@pytest.mark.parametrize("value", [
    b'{"event_id": 1', b"\xff\xfe{}", None, b"", "{\"user_id\": \"\u00e9\"}".encode(),
    b'{"event_id": 1, "user_id": "\xed\xa0\x80"}',
])
def test_rejected_dead_letter_carries_the_original_bytes_and_where_from(value):
    r = rejected_from(value, "ev/2/41")
    m = dead_letter_message(r, "dlq", "late")
    h = dict(m.headers)
    assert m.value == value and m.topic == "dlq" and m.key == b"ev/2"
    assert h["feast_bytewax.kind"] == b"rejected"
    assert (h["feast_bytewax.topic"], h["feast_bytewax.partition"],
            h["feast_bytewax.offset"]) == (b"ev", b"2", b"41")
    assert h["feast_bytewax.reason"].decode().startswith(h["feast_bytewax.code"].decode() + ":")


def test_late_dead_letter_is_an_envelope_on_the_late_topic():
    ev = Event(5, "u7", "purchase", 3.5, "books", NOW - 600_000_000, "ev/0/12")
    m = dead_letter_message(Late(ev, "late: 600 s behind", NOW - 5_000_000), "dlq", "late")
    h = dict(m.headers)
    assert m.topic == "late" and m.key == b"u7"
    assert h["feast_bytewax.kind"] == b"late" and h["feast_bytewax.offset"] == b"12"
    body = json.loads(m.value)
    assert body["payload"]["event_id"] == 5 and body["origin"] == "ev/0/12"
    back = validate_item(json.dumps(body["payload"]), "redrive", NOW, 300_000_000)
    assert back == Event(5, "u7", "purchase", 3.5, "books", NOW - 600_000_000, "redrive")
    assert dead_letter_message(Late(ev, "late: x", NOW), "dlq").topic == "dlq"


def test_non_kafka_origins_are_kept_as_is():
    r = validate_item(b"nope", "events.jsonl:3", NOW, 0)
    m = dead_letter_message(r, "dlq")
    assert m.key == b"events.jsonl:3" and "feast_bytewax.offset" not in dict(m.headers)


def test_unacknowledged_dead_letters_fail_the_flow():
    from confluent_kafka import Producer

    part_ = DeadLetterPartition(
        Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300,
                  "log_level": 0}), "dlq", None, timeout_s=5.0)
    r = validate_item(b"nope", "ev/0/1", NOW, 0)
    with pytest.raises(RuntimeError, match="not acknowledged"):
        part_.write_batch([("input", r)])


# ---------------------------------------------------------------------------------------
# Validator poison cases (the flow must never crash on input)
# ---------------------------------------------------------------------------------------

GOOD = {"event_id": 1, "user_id": "u", "event_type": "view", "amount": 0.0, "category": "a",
        "event_timestamp": "2026-11-01T00:00:00Z"}


@pytest.mark.parametrize("patch,code", [
    ({"user_id": "\ud800"}, "bad_json"),
    ({"category": "a\udfff"}, "bad_json"),
    ({"event_id": "\ud83d"}, "bad_json"),
    ({"event_type": "vi\ud800ew"}, "bad_json"),
    ({"event_timestamp": "0001-01-01T00:00:00+00:00"}, "bad_timestamp"),
    ({"event_timestamp": "1899-12-31T23:59:59Z"}, "bad_timestamp"),
])
def test_poison_values_are_rejected(patch, code):
    payload = json.dumps({**GOOD, **patch}).encode()  # \\ud800 escapes, valid JSON
    r = validate_item(payload, "o", NOW, 300_000_000)
    assert isinstance(r, Rejected) and r.reason.startswith(code + ":"), r
    r.reason.encode("utf-8")  # printable anywhere: no lone surrogate in the reason


def test_non_ascii_but_valid_text_is_accepted():
    payload = json.dumps({**GOOD, "user_id": "j\u00fcrgen", "category": "\u6f22"}).encode()
    assert isinstance(validate_item(payload, "o", NOW, 300_000_000), Event)
    old = json.dumps({**GOOD, "event_timestamp": "1900-01-01T00:00:00Z"})
    assert isinstance(validate_item(old, "o", NOW, 300_000_000), Event)


# ---------------------------------------------------------------------------------------
# Freshness
# ---------------------------------------------------------------------------------------


def private_histogram() -> Histogram:
    return Histogram("fresh_test", "t", buckets=FRESHNESS_BUCKETS, registry=CollectorRegistry())


def observe(h: Histogram, values) -> None:
    for v in values:
        h.observe(v)


def test_slo_alerts_once_per_breach_and_recovers(caplog):
    c = Clock(0.0)
    h = private_histogram()
    slo = FreshnessSLO(2.0, histogram=h, window_s=60, realert_s=30, clock=c)
    with caplog.at_level(logging.WARNING, logger="feast_bytewax.observability.slo"):
        observe(h, [0.5] * 1000)
        assert not slo.check() and slo.last_p99 <= 0.5
        c.t = 10
        observe(h, [5.0] * 5)  # 5 of 1005 > 2 s: p99 still in the 0.5 bucket
        assert not slo.check()
        c.t = 20
        observe(h, [5.0] * 20)  # 25 of 1025 (2.4%) > 2 s: p99 in the 5 s bucket
        assert slo.check() and slo.breaches == 1 and 2.5 < slo.last_p99 <= 5.0
        c.t = 26
        observe(h, [5.0])
        assert slo.check() and slo.breaches == 1  # the same breach, re-alerted later
        c.t = 75  # the 1000 fast ones left the window; still slow
        assert slo.check() and slo.breaches == 1
        c.t = 150  # everything left the window: nothing to judge, state kept
        assert slo.check() and slo.p99() is None
        observe(h, [0.1] * 100)
        c.t = 155
        assert not slo.check() and slo.last_p99 <= 0.1
        c.t = 300
        observe(h, [9.0])
        assert slo.check() and slo.breaches == 2
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("FRESHNESS SLO BREACH" in m for m in msgs) == 2
    assert any("still breached" in m for m in msgs)
    assert any("recovered" in m for m in msgs)


def test_slo_quantile_interpolates_buckets_like_prometheus():
    buckets = [(0.1, 0.0), (0.5, 50.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.5)
    assert bucket_quantile(0.75, buckets) == pytest.approx(0.75)
    assert bucket_quantile(0.99, [(1.0, 0.0), (float("inf"), 5.0)]) == 1.0  # +Inf bucket
    assert bucket_quantile(0.99, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    with pytest.raises(ValueError):
        FreshnessSLO(0)


def test_slo_fires_during_a_stall_without_samples(caplog):
    """A stalled sink makes no rows: the age of what waits must breach the SLO, while it
    lasts (issue 8: an alert during the stall, not after)."""
    c = Clock(0.0)
    waiting: list[float | None] = [None]
    slo = FreshnessSLO(1.0, histogram=private_histogram(), clock=c,
                       pending_age=lambda: waiting[0])
    assert not slo.check()
    waiting[0] = 0.5
    assert not slo.check()
    waiting[0] = 12.0
    with caplog.at_level(logging.ERROR, logger="feast_bytewax.observability.slo"):
        assert slo.check() and slo.stalled_s == 12.0
    assert "rows waiting 12.0 s" in caplog.text
    waiting[0] = None
    assert not slo.check()


def test_recorder_measures_the_latest_row_per_key_since_event_and_arrival():
    rec = FreshnessRecorder(sample_per_batch=2, max_tracked=10, horizon_s=60)
    before = FRESHNESS_SECONDS.collect()[0].samples
    t = 1_000_000_000
    evs = [Event(i, "a" if i < 2 else "b", "view", 0.0, "c", t + i, "o") for i in range(3)]
    rec.observe_batch([*evs, Rejected("x", "bad_json: x", "o")], now_us=t + 10)
    assert len(rec._arrivals) == 2  # sampled: the first two events of the batch
    rows = [FeatureRow("a", t + 0, (1,), "event"), FeatureRow("a", t + 1, (2,), "event"),
            FeatureRow("b", t + 2, (1,), "event")]
    rec.rows_readable(rows, now_us=t + 3_000_000)
    assert rec.rows_measured == 2  # latest per key: a@t+1, b@t+2
    assert rec.arrivals_measured == 1  # a@t+1 was sampled; a@t+0 superseded, b not sampled
    assert rec._arrivals == {}
    after = FRESHNESS_SECONDS.collect()[0].samples
    count = {s.name: s.value for s in after}["feast_bytewax_freshness_seconds_count"]
    assert count - {s.name: s.value for s in before}["feast_bytewax_freshness_seconds_count"] == 2
    rec.observe_batch(evs[:1], now_us=t)
    rec.observe_batch(evs[1:2], now_us=t + 61_000_000)  # the first one is pruned
    assert list(rec._arrivals) == [("a", t + 1)]


def test_progress_line_shows_counts_lag_and_slo_state():
    stats = FlowStats()
    stats.add(consumed=10, rejected=1, rows_online=2)
    stats.add_entity("user_id", processed=9, rows=4)
    KAFKA_LAG.labels(topic="progress-test", partition="0").set(42)
    h = private_histogram()
    slo = FreshnessSLO(1.0, histogram=h, clock=Clock(0.0))
    h.observe(5.0)
    slo.check()
    text = live_line(stats, time.perf_counter(), slo).plain
    assert "consumed 10" in text and "rejected 1" in text and "lag" in text
    assert "fresh p99 4.97s [BREACH]" in text  # 2.5 + 0.99 * (5 - 2.5): bucket interpolation


def test_raw_bytes_ride_on_the_record_past_any_cap_and_across_processes():
    """Issue 7, defect 3: the exact bytes used to ride a process-global dict capped at 10k:
    past the cap, or on another process, dead letters became re-encoded text."""
    import pickle

    values = [b"\xff" + i.to_bytes(3, "big") for i in range(20_000)]
    records = [validate_item(v, f"ev/1/{i}", NOW, 300_000_000) for i, v in enumerate(values)]
    shipped = pickle.loads(pickle.dumps(records))  # what a worker on another process gets
    for i in (0, 9_999, 10_000, 19_999):
        assert dead_letter_message(shipped[i], "dlq").value == values[i]
    tomb = pickle.loads(pickle.dumps(validate_item(None, "ev/1/5", NOW, 0)))
    assert tomb.no_value and dead_letter_message(tomb, "dlq").value is None


def test_live_run_reads_brokers_topic_and_delay_from_the_kafka_source(tmp_path):
    from feast_bytewax.dataflow.live import with_declared_stream
    from feast_bytewax.features.inputs import StreamInput
    from feast_bytewax.features.spec import FlowSpec
    from tests.reference import shipped_spec

    spec = FlowSpec((shipped_spec(),), stream=StreamInput("user_events", ("b1:9", "b2:9"),
                                                          "events", 7.0, "data/ev"))
    cfg = with_declared_stream(LiveConfig(repo=tmp_path), spec)
    assert (cfg.source, cfg.watermark_delay) == ("kafka://b1:9,b2:9/events", 7.0)
    own = with_declared_stream(LiveConfig(repo=tmp_path, source="kafka://x:1/t",
                                          watermark_delay=2.0), spec)
    assert (own.source, own.watermark_delay) == ("kafka://x:1/t", 2.0)  # flags win
    with pytest.raises(ConfigError, match="no --source given and feast_repo/ declares no"):
        with_declared_stream(LiveConfig(repo=tmp_path), FlowSpec((shipped_spec(),)))
