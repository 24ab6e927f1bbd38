"""Every feature, declared once: the five reference features of shared/spec/features.md, the
profile table events join as of their time, and the features over joined and looked-up
columns.

Feast's `Aggregation` is metadata only; the feast-bytewax plugin compiles these definitions
into its dataflow. Two things Feast has no words for are carried as view tags (they survive
the registry round trip, unlike Python subclasses):

- `feast_bytewax.filter`: which events a view counts, as `column=value[|value...]` clauses
  joined by `,` (all must hold). A view without it counts every event.
- `feast_bytewax.window`: `sliding` (default; `time_window` / `slide_interval` as in Feast,
  tumbling when the slide equals the window) or `session` (`time_window` is the session gap).

Joins, lookups and derived columns are three more tags (`feast_bytewax.features.enrich`):

- `feast_bytewax.join: user_profile`: each event reads the `user_profile` version valid at its
  event time (latest `updated_at` <= event time), by the view's own entity key; its features
  become columns (`credit_score`). The profile view is a plain Feast `FeatureView` on a push
  source: the dataflow pushes the versions it reads, so both stores hold them and
  `get_historical_features` joins them as of each row's time.
- `feast_bytewax.lookup: category_risk:risk=0.0`: the online store's current `risk` of the
  event's `category` (the `category_risk` view's join key), column `category_risk__risk`;
  `=0.0` is the fallback on a miss or a timeout (counted per reason, never silent).
- `feast_bytewax.derive: name = expression; ...`: columns computed from the others (`+ - * /`,
  comparisons, `and or not`); a missing operand or a division by zero gives a missing value,
  which aggregations skip and filters never match.

Adding a feature is an edit to this file (and, to serve it in a feature service, to
services.py).
"""

from datetime import timedelta

from feast import FeatureView, Field, StreamFeatureView
from feast.aggregation import Aggregation
from feast.types import Float64, Int32, Int64, String

from feast_repo.entities import category, user
from feast_repo.sources import category_risk_source, user_features_push, user_profile_push

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

# -- reference tables ------------------------------------------------------------------------

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=timedelta(0),  # a version holds until the next one
    online=True,
    source=user_profile_push,
    tags={"feast_bytewax.versions": "user_profile_versions"},
    schema=[
        Field(name="account_age_days", dtype=Int32),
        Field(name="credit_score", dtype=Int32),
        Field(name="segment", dtype=String),
    ],
    description="Profile versions (shared/spec/events.md), valid from their updated_at.",
)

category_risk = FeatureView(
    name="category_risk",
    entities=[category],
    ttl=timedelta(0),
    online=True,
    source=category_risk_source,
    schema=[Field(name="risk", dtype=Float64)],
    description="Risk score of a category, read by online lookups at processing time.",
)

# -- features over joined and looked-up columns ----------------------------------------------

user_credit_features = StreamFeatureView(
    name="user_credit_features",
    source=user_features_push,
    entities=[user],
    ttl=timedelta(0),
    online=True,
    offline=True,
    timestamp_field="event_timestamp",
    tags={
        "feast_bytewax.filter": "event_type=purchase",
        "feast_bytewax.join": "user_profile",
        "feast_bytewax.derive": "amount_to_credit = amount / credit_score",
    },
    schema=[Field(name="max_amount_to_credit_24h", dtype=Float64)],
    aggregations=[
        Aggregation(
            column="amount_to_credit",
            function="max",
            time_window=timedelta(hours=24),
            slide_interval=MINUTE,
            name="max_amount_to_credit_24h",
        ),
    ],
    description="Largest purchase relative to the credit score valid at its time (24 h).",
)

user_risk_features = StreamFeatureView(
    name="user_risk_features",
    source=user_features_push,
    entities=[user],
    ttl=timedelta(0),
    online=True,
    offline=True,
    timestamp_field="event_timestamp",
    tags={
        "feast_bytewax.filter": "event_type=purchase,risky=true",
        "feast_bytewax.lookup": "category_risk:risk=0.0",
        "feast_bytewax.derive": "risky = category_risk__risk >= 0.8",
    },
    schema=[Field(name="risky_purchase_count_1h", dtype=Int64)],
    aggregations=[
        Aggregation(
            column="event_id",
            function="count",
            time_window=timedelta(hours=1),
            slide_interval=MINUTE,
            name="risky_purchase_count_1h",
        ),
    ],
    description="Purchases in risky categories (risk >= 0.8 as read at processing time), 1 h.",
)
