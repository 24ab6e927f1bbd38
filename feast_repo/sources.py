"""Where events come from and where feature rows land.

**Input.** `user_events` is the event stream, declared as Feast declares streams: a
`KafkaSource` with its brokers, topic, message format (the JSON schema of one event: the
columns feature definitions may read) and watermark delay, and as batch source the event
archive (the same events at rest, what a replay or backfill reads). `feast-bytewax run` with
no `--source` reads this stream, `feast-bytewax replay` with no `--events` reads the
archive. Point them at your brokers, topic and archive (a parquet file, a folder of parts,
or `s3://bucket/prefix`); credentials never go here (librdkafka settings come from
`FEAST_BYTEWAX_KAFKA_OPT_*` variables). A column beyond the spec's six (say `merchant_id`)
is declared by adding it to `schema_json`.

**Output.** One push source feeds every view of the `user` entity, so a single push of a
full feature vector updates all of them at once. Its batch source is a *folder* of parquet
part files: the plugin's offline store adds one part file per flush instead of rewriting a
single file (the built-in file store's quadratic append). Paths are relative to the repo
root; the offline store config in feature_store.yaml can re-root them (e.g. to s3://).
"""

from datetime import timedelta

from feast import FileSource, KafkaSource, PushSource
from feast.data_format import JsonFormat

user_events = KafkaSource(
    name="user_events",
    kafka_bootstrap_servers="localhost:9092",
    topic="events",
    timestamp_field="event_timestamp",
    message_format=JsonFormat(
        schema_json=("event_id BIGINT, user_id STRING, event_type STRING, amount DOUBLE, "
                     "category STRING, event_timestamp TIMESTAMP")
    ),
    watermark_delay_threshold=timedelta(seconds=5),
    batch_source=FileSource(
        name="user_events_archive",
        path="data/events.parquet",
        timestamp_field="event_timestamp",
        description="The event archive: what `feast-bytewax replay` reads by default.",
    ),
    description="Shop events (shared/spec/events.md), one JSON object per message, key user_id.",
)

user_features_batch = FileSource(
    name="user_features_batch",
    path="data/offline/user_features",
    timestamp_field="event_timestamp",
    description="Parquet folder of feature rows written by the feast-bytewax sink.",
)

user_features_push = PushSource(
    name="user_features_push",
    batch_source=user_features_batch,
    description="Feature rows computed in-stream by the feast-bytewax dataflow.",
)

# -- reference tables ------------------------------------------------------------------------
# Profile versions (shared/spec/events.md, Profiles) at rest: what `replay` reads when no
# --profiles is given (named by the user_profile view's `feast_bytewax.versions` tag).
user_profile_versions = FileSource(
    name="user_profile_versions",
    path="data/profiles.parquet",
    timestamp_field="updated_at",
    description="Profile versions as generated or exported: the input of the temporal join.",
)

user_profile_batch = FileSource(
    name="user_profile_batch",
    path="data/offline/user_profile",
    timestamp_field="updated_at",
    description="Parquet folder of the profile versions the dataflow read and pushed.",
)

user_profile_push = PushSource(
    name="user_profile_push",
    batch_source=user_profile_batch,
    description="Profile versions pushed by the feast-bytewax dataflow (both stores).",
)

category_risk_source = FileSource(
    name="category_risk_source",
    path="data/category_risk.parquet",
    timestamp_field="event_timestamp",
    description="Category risk scores; `feast materialize` loads them into the online store.",
)
