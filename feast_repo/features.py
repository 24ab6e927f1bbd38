"""The five reference features of shared/spec/features.md, declared once.

Feast's `Aggregation` is metadata only; the feast-bytewax plugin compiles these definitions
into its dataflow. Two things Feast has no words for are carried as view tags (they survive
the registry round trip, unlike Python subclasses):

- `feast_bytewax.filter`: which events a view counts, as `column=value[|value...]` clauses
  joined by `,` (all must hold). A view without it counts every event.
- `feast_bytewax.window`: `sliding` (default; `time_window` / `slide_interval` as in Feast,
  tumbling when the slide equals the window) or `session` (`time_window` is the session gap).

Adding a sixth feature is an edit to this file only.
"""

from datetime import timedelta

from feast import Field, StreamFeatureView
from feast.aggregation import Aggregation
from feast.types import Float64, Int64

from feast_repo.entities import user
from feast_repo.sources import user_features_push

MINUTE = timedelta(minutes=1)

user_purchase_features = StreamFeatureView(
    name="user_purchase_features",
    source=user_features_push,
    entities=[user],
    ttl=timedelta(0),  # a row holds until the next one: never expire in point-in-time joins
    online=True,
    offline=True,
    timestamp_field="event_timestamp",
    tags={"feast_bytewax.filter": "event_type=purchase"},
    schema=[
        Field(name="purchase_count_30m", dtype=Int64),
        Field(name="avg_amount_1h", dtype=Float64),
        Field(name="max_amount_24h", dtype=Float64),
    ],
    aggregations=[
        Aggregation(
            column="event_id",
            function="count",
            time_window=timedelta(minutes=30),
            slide_interval=MINUTE,
            name="purchase_count_30m",
        ),
        Aggregation(
            column="amount",
            function="mean",
            time_window=timedelta(hours=1),
            slide_interval=MINUTE,
            name="avg_amount_1h",
        ),
        Aggregation(
            column="amount",
            function="max",
            time_window=timedelta(hours=24),
            slide_interval=MINUTE,
            name="max_amount_24h",
        ),
    ],
    description="Purchase activity over sliding windows.",
)

user_login_features = StreamFeatureView(
    name="user_login_features",
    source=user_features_push,
    entities=[user],
    ttl=timedelta(0),
    online=True,
    offline=True,
    timestamp_field="event_timestamp",
    tags={"feast_bytewax.filter": "event_type=login_failed"},
    schema=[Field(name="failed_logins_10m", dtype=Int64)],
    aggregations=[
        Aggregation(
            column="event_id",
            function="count",
            time_window=timedelta(minutes=10),
            slide_interval=MINUTE,
            name="failed_logins_10m",
        ),
    ],
    description="Failed logins over a sliding window.",
)

user_session_features = StreamFeatureView(
    name="user_session_features",
    source=user_features_push,
    entities=[user],
    ttl=timedelta(0),
    online=True,
    offline=True,
    timestamp_field="event_timestamp",
    tags={"feast_bytewax.filter": "event_type=view", "feast_bytewax.window": "session"},
    schema=[Field(name="distinct_categories_session", dtype=Int64)],
    aggregations=[
        Aggregation(
            column="category",
            function="count_distinct",
            time_window=timedelta(minutes=30),
            name="distinct_categories_session",
        ),
    ],
    description="Browsing breadth in the current session (30 min gap).",
)
