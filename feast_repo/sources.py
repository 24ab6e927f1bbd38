"""Where feature rows land.

One push source feeds every view of the `user` entity, so a single push of a full feature
vector updates all of them at once. Its batch source is a *folder* of parquet part files:
the plugin's append-only offline store adds one part file per flush instead of rewriting a
single file (the built-in file store's quadratic append). The folder path is relative to the
repo root; the offline store config in feature_store.yaml can re-root it (e.g. to s3://).
"""

from feast import FileSource, PushSource

user_features_batch = FileSource(
    name="user_features_batch",
    path="data/offline/user_features",
    timestamp_field="event_timestamp",
    description="Append-only parquet folder written by the feast-bytewax sink.",
)

user_features_push = PushSource(
    name="user_features_push",
    batch_source=user_features_batch,
    description="Feature rows computed in-stream by the feast-bytewax dataflow.",
)
