"""Run settings: one pydantic model per run kind, the single place a default is written.

Every model reads ``FEAST_BYTEWAX_<FIELD>`` environment variables (pydantic-settings), which
is how `python -m bytewax.run dataflows.<name>` is configured, and the click commands derive
their options from the same fields (`feast_bytewax.cli.options`): `--watermark-delay` is
`watermark_delay` is ``FEAST_BYTEWAX_WATERMARK_DELAY``. Precedence: a command-line flag, then
the environment, then what `feast_repo/` declares (the event stream's `KafkaSource`: brokers,
topic, watermark delay, archive; applied by the dataflow once the registry is open), then the
default here. Unknown settings are refused (`extra="forbid"`), and a bad value becomes one
`ConfigError` line naming the option (`config_error`).

Times are seconds (floats) at this edge; the engine works in integer microseconds.
Credentials never live here: librdkafka secrets come from ``FEAST_BYTEWAX_KAFKA_OPT_<NAME>``
variables (`feast_bytewax.kafka.settings`), S3 and Redis ones from their usual variables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feast_bytewax.errors import ConfigError
from feast_bytewax.timeutil import parse_instant

ENV_PREFIX = "FEAST_BYTEWAX_"


def _settings(**extra) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True,
                              validate_default=True, **extra)


def parse_kafka_url(url: str) -> tuple[list[str], str]:
    """``kafka://HOST:PORT[,HOST:PORT...]/TOPIC`` -> (bootstrap servers, topic)."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ValueError(f"not a kafka:// source: {url!r} (expected kafka://HOST:PORT/TOPIC)")
    brokers = [b.strip() for b in parts.netloc.split(",") if b.strip()]
    topic = unquote(parts.path.lstrip("/"))
    if not brokers:
        raise ValueError(f"no bootstrap server in {url!r} (expected kafka://HOST:PORT/TOPIC)")
    for b in brokers:
        host, sep, port = b.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bootstrap server {b!r} in {url!r} is not HOST:PORT")
    if not topic or "/" in topic:
        raise ValueError(f"one topic expected after the servers in {url!r}, got {topic!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: pass Kafka settings with --kafka-option, not in the URL")
    return brokers, topic


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{value.isoformat()} has no UTC offset (add Z or +00:00)")
    return None if value is None else value.astimezone(UTC)


class RepoSettings(BaseSettings):
    """The Feast repo a command works on."""

    model_config = _settings()

    repo: Path = Field(Path("."), description="Feast repo root (holds feature_store.yaml)")

    def resolve(self, path: Path) -> Path:
        """A path relative to the repo root (absolute paths unchanged)."""
        return path if path.is_absolute() else Path(self.repo).resolve() / path


class EventTimeConfig(RepoSettings):
    """How a run treats event time: what the skew report must know of the run, too."""

    model_config = _settings()

    watermark_delay: float = Field(
        5.0, ge=0, description="bounded out-of-orderness per input partition, seconds "
                               "(default: the event stream's KafkaSource, else 5)")
    allowed_lateness: float = Field(600.0, ge=0,
                                    description="how far behind the watermark an event is still "
                                                "applied (as a correction), seconds")
    max_future: float = Field(300.0, ge=0,
                              description="reject events further ahead of the wall clock, "
                                          "seconds")


class FlowConfig(EventTimeConfig):
    """Knobs shared by replay and live runs."""

    model_config = _settings()

    shards: int = Field(32, ge=1, le=4096,
                        description="routing shards of each entity (Bytewax keys): spreads "
                                    "keys over workers; results do not depend on it")
    batch_size: int = Field(1000, ge=1, description="records per source read")
    flush_rows: int = Field(10_000, ge=1, description="sink flush when this many rows wait")
    flush_interval: float = Field(1.0, gt=0, description="sink flush at least this often, s")
    online: bool = Field(True, description="write the online store")
    offline: bool = Field(True, description="write the offline store")
    dead_letters: Path = Field(Path("data/dead_letters.jsonl"),
                               description="rejected and late records, JSON lines (relative "
                                           "to --repo)")
    workers: int = Field(1, ge=1, le=64, description="Bytewax worker threads in this process")
    max_ahead: float = Field(3600.0, gt=0,
                             description="an event this far ahead of its partition's event "
                                         "time is held as a possible outlier (one bad clock) "
                                         "instead of moving the watermark, seconds")
    max_skew: float = Field(60.0, gt=0,
                            description="how far (event time) an input partition may read "
                                        "ahead of the slowest one in this process, seconds")
    idle_timeout: float = Field(5.0, gt=0,
                                description="live runs: a partition that reads nothing this "
                                            "long stops holding the watermark back, seconds")
    store_outage_limit: float = Field(
        600.0, gt=0, description="how long a failing store is retried (input paused, state "
                                 "kept) before the run stops with its summary, seconds")
    recovery_dir: Path | None = Field(None, description="Bytewax recovery directory: state, "
                                                        "offsets and commits survive a crash "
                                                        "(created when empty)")
    new_features: Literal["refuse", "cold"] = Field(
        "refuse", description="a restart whose definitions gained features: refuse (and say "
                              "what to run), or start them cold (they count events from the "
                              "restart on)")
    profiles: str | None = Field(
        None, description="versions of the joined view (profiles): a parquet file or folder, "
                          "local or s3://, or VIEW=PATH,... for several joined views (replay "
                          "default: the view's feast_bytewax.versions FileSource)")
    lookup_timeout: float = Field(0.05, gt=0, description="online lookups: how long a micro-"
                                                          "batch waits for them before the "
                                                          "fallback, s")
    lookup_concurrency: int = Field(8, ge=1, le=256,
                                    description="online lookups: requests in flight at most")
    lookup_ttl: float = Field(60.0, gt=0, description="online lookups: how long a value read "
                                                      "is reused, s")
    gc_interval: float = Field(
        600.0, ge=0, description="Python's automatic garbage collector is off during a run "
                                 "(its passes stalled the worker); one full collection runs "
                                 "this often, s (0: keep the automatic collector)")

    @property
    def dead_letter_file(self) -> Path:
        return self.resolve(self.dead_letters)


class ReplayConfig(FlowConfig):
    """`feast-bytewax replay` / `python -m bytewax.run dataflows.replay`."""

    model_config = _settings()

    events: str | None = Field(
        None, description="parquet file, folder of parquet parts or JSON-lines file, local or "
                          "s3://bucket/prefix (default: the archive of the KafkaSource)")
    start: datetime | None = Field(None, description="only events at or after (ISO-8601 "
                                                     "with offset)")
    end: datetime | None = Field(None, description="only events before (ISO-8601 with offset)")
    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint for s3:// events "
                                                      "(default: $FEAST_S3_ENDPOINT, "
                                                      "$AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL)")
    epoch_interval: float = Field(30.0, gt=0,
                                  description="seconds between Bytewax snapshots and flushes")

    _check_start = field_validator("start", "end")(_aware)

    @model_validator(mode="after")
    def _range(self) -> ReplayConfig:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"start {self.start.isoformat()} is not before end "
                             f"{self.end.isoformat()}")
        return self


class LiveConfig(FlowConfig):
    """`feast-bytewax run` / `python -m bytewax.run dataflows.live`."""

    model_config = _settings()

    source: str | None = Field(None, description="kafka://HOST:PORT[,HOST:PORT]/TOPIC "
                                                 "(default: the KafkaSource in feast_repo/)")
    start_from: Literal["earliest", "latest"] = Field(
        "earliest", description="where partitions without recovery state start")
    kafka_option: tuple[str, ...] = Field(
        (), description="librdkafka setting KEY=VALUE for every client (repeatable); secrets "
                        "in FEAST_BYTEWAX_KAFKA_OPT_<NAME> variables instead")
    dead_letter_topic: str | None = Field(None, description="Kafka topic for rejected input "
                                                            "(default: the --dead-letters file)")
    late_topic: str | None = Field(None, description="Kafka topic for late events (default: "
                                                     "the dead-letter topic)")
    metrics_port: int | None = Field(None, ge=1, le=65535,
                                     description="serve Prometheus metrics on this port")
    metrics_host: str = Field("0.0.0.0", min_length=1,
                              description="address the metrics server binds (127.0.0.1: "
                                          "this host only, for a sidecar or a tunnel; :: for "
                                          "IPv6)")
    freshness_slo: float | None = Field(None, gt=0, description="alert when the p99 freshness "
                                                                "over a minute exceeds this, s")
    epoch_interval: float = Field(2.0, gt=0,
                                  description="seconds between Bytewax snapshots and flushes")
    max_events: int | None = Field(None, ge=0, description="stop after reading this many records")
    idle_exit: float | None = Field(None, gt=0, description="stop after this long without a "
                                                           "record, s")
    stop_at_end: bool = Field(False, description="stop when every partition reaches its end")
    online_flush_interval: float = Field(
        0.05, gt=0, description="online store flush at least this often, s (offline parts "
                                "keep --flush-interval / --flush-rows)")
    online_rows: Literal["exact", "provisional"] = Field(
        "provisional", description="online values: provisional (every event at once, the "
                                   "default; the exact rows still go offline, the difference "
                                   "is measured) or exact (after the watermark delay, as "
                                   "offline: half the CPU per event)")
    profiles_topic: str | None = Field(
        None, description="Kafka topic of the joined view's versions (key = its join key, "
                          "same brokers), or VIEW=TOPIC,... for several joined views")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is not None:
            parse_kafka_url(v)
        return v

    @field_validator("kafka_option")
    @classmethod
    def _options(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            key, sep, _ = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"Kafka option {item!r} is not KEY=VALUE")
        return v

    @model_validator(mode="after")
    def _topics(self) -> LiveConfig:
        if self.late_topic and not self.dead_letter_topic:
            raise ValueError("--late-topic needs --dead-letter-topic (rejected input must go to "
                             "Kafka too)")
        return self


class GenerateConfig(BaseSettings):
    """`feast-bytewax generate`: realistic events (see `feast_bytewax.datagen`)."""

    model_config = _settings()

    out: Path = Field(..., description="*.parquet, *.jsonl, or a folder (no suffix) of parquet "
                                       "parts")
    count: int = Field(100_000, ge=1, description="number of events")
    users: int = Field(2_000, ge=1, description="number of users")
    seed: int = Field(7, description="random seed (same seed, same events)")
    start: datetime | None = Field(None, description="first event time (ISO-8601 with offset; "
                                                     "default: 24 h before now)")
    hours: float = Field(24.0, gt=0, description="time span of the events")
    late_fraction: float = Field(0.01, ge=0, le=1, description="share of events arriving late")
    bad_fraction: float = Field(0.0, ge=0, le=1,
                                description="malformed records to inject (JSON lines only)")
    parts: int = Field(4, ge=1, le=1024, description="parquet parts when --out is a folder")
    profiles: Path | None = Field(None, description="profile versions parquet, for the stream-"
                                                    "table join (default: profiles.parquet "
                                                    "next to --out)")
    category_risk: Path | None = Field(None, description="category risk parquet, for the lookup "
                                                         "join (default: category_risk.parquet "
                                                         "next to --out)")

    _check_start = field_validator("start")(_aware)


class DemoConfig(RepoSettings):
    """`feast-bytewax demo`: generate -> apply -> replay -> read back."""

    model_config = _settings()

    count: int = Field(100_000, ge=1, description="number of events to generate")
    users: int = Field(2_000, ge=1, description="number of users")
    seed: int = Field(7, description="random seed")


class SkewConfig(EventTimeConfig):
    """`feast-bytewax skew`: recompute in batch and compare with what was written (give it
    the event-time knobs the run used)."""

    model_config = _settings()

    events: str | None = Field(None, description="the raw event log (parquet file/folder, JSON "
                                                 "lines; local or s3://; default: the archive "
                                                 "of the KafkaSource)")
    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint for s3:// events")
    out: Path = Field(Path("data/skew"), description="report folder")
    max_mismatch_rate: float = Field(0.0, ge=0, le=1,
                                     description="exit 1 when the mismatch rate exceeds this")
    truth: Literal["stream", "ideal"] = Field(
        "stream", description="compare with the stream's visibility model, or with every event "
                              "counted from its own time")
    start: datetime | None = Field(None, description="only events at or after (as replayed)")
    end: datetime | None = Field(None, description="only events before")
    rtol: float = Field(1e-9, ge=0, description="relative tolerance for floats")
    atol: float = Field(1e-9, ge=0, description="absolute tolerance for floats")
    sample_keys: float = Field(1.0, gt=0, le=1,
                               description="check a stable fraction of the keys (large logs)")
    feature_service: str | None = Field(None, description="feature service whose logs to check "
                                                          "(default: the one with logging)")
    entity: str | None = Field(None, description="join key of the entity to check (default: "
                                                 "the only one)")
    since: str | None = Field(None, description="check a recent window of a live run: rows "
                                                "and served values stamped in [since, until); "
                                                "a duration (15m, 1h) back from --until, or "
                                                "ISO-8601 (not with --start/--end)")
    until: str | None = Field(None, description="the window's end: ISO-8601, or a duration "
                                                "back from now (default: now - "
                                                "--watermark-delay - --settle)")
    settle: float = Field(30.0, ge=0, description="with --since and no --until: besides the "
                                                  "watermark delay, leave the newest this "
                                                  "long out (flushes, archive lag), seconds")
    metrics_file: Path | None = Field(None, description="write the mismatch rates as Prometheus "
                                                        "text (node_exporter textfile "
                                                        "collector, *.prom), atomically")
    pushgateway: str | None = Field(None, description="also push them to this Prometheus "
                                                      "Pushgateway (host:port or URL)")

    _check_start = field_validator("start", "end")(_aware)

    @field_validator("since", "until")
    @classmethod
    def _instant(cls, v: str | None) -> str | None:
        if v is not None:
            parse_instant(v, 0)
        return v

    @model_validator(mode="after")
    def _window(self) -> SkewConfig:
        if self.since is not None and (self.start is not None or self.end is not None):
            raise ValueError("--since sets the window: give it or --start/--end, not both "
                             "(--start/--end check a range replay)")
        if self.until is not None and self.since is None:
            raise ValueError("--until ends a --since window: give --since too")
        return self


class RedriveConfig(RepoSettings):
    """`feast-bytewax redrive`: dead letters back out as event JSON lines."""

    model_config = _settings()

    dead_letters: Path = Field(Path("data/dead_letters.jsonl"),
                               description="the dead-letter JSON-lines file (relative to --repo)")
    out: Path = Field(..., description="JSON-lines file of the payloads, to fix and add to the "
                                       "event archive")
    kind: Literal["all", "rejected", "late"] = Field("all", description="which dead letters")


class CompactConfig(RepoSettings):
    """`feast-bytewax compact`: rewrite each offline folder's visible rows into few parts."""

    model_config = _settings()

    grace: float = Field(60.0, ge=0, description="leave commits younger than this alone "
                                                 "(writers may be running), seconds")


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def config_error(exc: ValidationError) -> ConfigError:
    """A pydantic error as one line naming the option (and its variable)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if loc:
            got = err.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            parts.append(f"{option_name(loc)} / {ENV_PREFIX}{loc.upper()}: {msg}{shown}")
        else:
            parts.append(msg)
    return ConfigError("bad setting: " + "; ".join(parts))


def load(model: type[BaseSettings], **values) -> BaseSettings:
    """Build a settings model; a validation error becomes a one-line `ConfigError`."""
    try:
        return model(**values)
    except ValidationError as e:
        raise config_error(e) from None
