"""spec.compile_view / compile_views / load_spec on real Feast objects.

The shipped definitions (feast_repo/) must compile to exactly the five features of
shared/spec/features.md, both as plain Python objects and as registry copies after
`feast apply`; broken definitions must fail with a message that names what is wrong.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta

import pytest
from feast import (
    Entity,
    FeatureStore,
    Field,
    FileSource,
    KafkaSource,
    PushSource,
    RepoConfig,
    StreamFeatureView,
    ValueType,
)
from feast.aggregation import Aggregation
from feast.data_format import JsonFormat
from feast.repo_config import RegistryConfig
from feast.types import Float64, Int64, String

from feast_bytewax.features.inputs import StreamInput
from feast_bytewax.features.registry import ALIASES, REGISTRY, make_aggregator
from feast_bytewax.features.schema import parse_schema_ddl
from feast_bytewax.features.spec import (
    EngineSpec,
    FeatureSpec,
    SpecError,
    compile_flow,
    compile_view,
    compile_views,
    load_spec,
    parse_filter,
)
from feast_repo import entities as repo_entities
from feast_repo import features as repo_features
from feast_repo import services as repo_services
from feast_repo import sources as repo_sources

MIN_US = 60 * 1_000_000
HOUR_US = 60 * MIN_US


def shipped_views() -> list[StreamFeatureView]:
    """Fresh copies of the shipped views, as `feast apply` has not yet seen them."""
    views = []
    for value in vars(repo_features).values():
        if isinstance(value, StreamFeatureView):
            view = copy.copy(value)
            view.entity_columns = []  # another test's `apply` may have inferred them in place
            views.append(view)
    return views


TABLES = [repo_features.user_profile, repo_features.category_risk]
ENTITIES = [repo_entities.user, repo_entities.category]


def shipped_spec() -> EngineSpec:
    return compile_views(shipped_views(), entities=ENTITIES, feature_views=TABLES)


# Expected, written out by hand from shared/spec/features.md (not derived from feast_repo).
PURCHASE = (("event_type", frozenset({"purchase"})),)
EXPECTED = {
    "purchase_count_30m": ("count", "event_id", "sliding", 30 * MIN_US, MIN_US, PURCHASE, "int64"),
    "avg_amount_1h": ("mean", "amount", "sliding", HOUR_US, MIN_US, PURCHASE, "float64"),
    "failed_logins_10m": (
        "count", "event_id", "sliding", 10 * MIN_US, MIN_US,
        (("event_type", frozenset({"login_failed"})),), "int64",
    ),
    "max_amount_24h": ("max", "amount", "sliding", 24 * HOUR_US, MIN_US, PURCHASE, "float64"),
    "distinct_categories_session": (
        "count_distinct", "category", "session", 30 * MIN_US, 0,
        (("event_type", frozenset({"view"})),), "int64",
    ),
    # issue 10: over joined, derived and looked-up columns
    "max_amount_to_credit_24h": ("max", "amount_to_credit", "sliding", 24 * HOUR_US, MIN_US,
                                 PURCHASE, "float64"),
    "risky_purchase_count_1h": (
        "count", "event_id", "sliding", HOUR_US, MIN_US,
        (("event_type", frozenset({"purchase"})), ("risky", frozenset({"true"}))), "int64",
    ),
}
PROFILE_FIELDS = ("account_age_days", "credit_score", "segment")


def check_reference_spec(spec: EngineSpec) -> None:
    assert spec.join_key == "user_id"
    assert spec.push_source == "user_features_push"
    assert sorted(spec.feature_names) == sorted(EXPECTED)
    assert len(spec.features) == len(EXPECTED)
    for f in spec.features:
        got = (f.function, f.column, f.kind, f.window_us, f.slide_us, f.where, f.dtype)
        assert got == EXPECTED[f.name], f.name
        assert f.options == ()
        make_aggregator(f.function, dict(f.options))  # every spec is executable


# ---------------------------------------------------------------- the shipped definitions

def test_shipped_views_compile_to_the_reference_features():
    spec = shipped_spec()
    check_reference_spec(spec)
    assert spec.views == tuple(sorted(spec.views))
    # the same spec when asked for the entity by join key
    assert compile_views(shipped_views(), "user_id", entities=ENTITIES,
                         feature_views=TABLES) == spec
    # a join or lookup names a Feast view: without it the definitions do not compile
    with pytest.raises(SpecError, match=r"feast_bytewax.join 'user_profile' is not a "
                                        r"FeatureView"):
        compile_views(shipped_views(), entities=ENTITIES)


def test_feature_service_serves_exactly_the_compiled_features():
    service = repo_services.user_fraud_features
    served = sorted(f.name for p in service.feature_view_projections for f in p.features)
    spec = shipped_spec()
    assert served == sorted([*spec.feature_names, *PROFILE_FIELDS])
    assert sorted(spec.feature_names) == sorted(EXPECTED)
    views_of_service = {p.name for p in service.feature_view_projections}
    assert views_of_service == {*spec.views, "user_profile"}


def test_features_sharing_slide_and_filter_share_a_group():
    spec = shipped_spec()
    by_name = {f.name: f for f in spec.features}
    purchase = {by_name[n].group_key for n in
                ("purchase_count_30m", "avg_amount_1h", "max_amount_24h")}
    assert purchase == {("sliding", PURCHASE, MIN_US)}
    assert by_name["failed_logins_10m"].group_key != by_name["purchase_count_30m"].group_key
    assert by_name["distinct_categories_session"].group_key[0] == "session"


def test_registry_copies_compile_to_the_same_spec(tmp_path):
    """`feast apply`, then read the views back from the registry, as the dataflow does."""
    config = RepoConfig(
        project="spec_test",
        provider="local",
        registry=RegistryConfig(path=str(tmp_path / "registry.db"), cache_ttl_seconds=0),
        online_store={"type": "sqlite", "path": str(tmp_path / "online.db")},
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=str(tmp_path),
    )
    store = FeatureStore(config=config)
    store.apply([
        *ENTITIES, repo_sources.user_features_batch, repo_sources.user_features_push,
        repo_sources.user_profile_batch, repo_sources.user_profile_push,
        repo_sources.user_profile_versions, repo_sources.category_risk_source,
        *TABLES, *shipped_views(), repo_services.user_fraud_features,
    ])
    from_registry = load_spec(store)
    check_reference_spec(from_registry)
    assert from_registry == shipped_spec()
    assert load_spec(store, "user_id") == from_registry


def test_unapplied_views_without_entities_are_refused_not_guessed():
    # A plain view knows its entity's name ("user"), not its join key ("user_id").
    with pytest.raises(SpecError, match=r"no join key known for entities \['user'\]"):
        compile_views(shipped_views())


def test_no_aggregating_view():
    with pytest.raises(SpecError, match="no StreamFeatureView with aggregations"):
        compile_views([], entities=[repo_entities.user])
    with pytest.raises(SpecError, match="for join key 'account_id'"):
        compile_views(shipped_views(), "account_id", entities=[repo_entities.user])


# ---------------------------------------------------------------- ad-hoc views

USER_ID = Field(name="user_id", dtype=String)  # an entity column: join keys known unapplied
push = PushSource(name="adhoc_push", batch_source=repo_sources.user_features_batch)


def agg(name: str = "n_10m", function: str = "count", column: str = "event_id",
        window: timedelta | None = timedelta(minutes=10),
        slide: timedelta | None = timedelta(minutes=1)) -> Aggregation:
    return Aggregation(column=column, function=function, time_window=window,
                       slide_interval=slide, name=name)


FLOAT_RESULTS = {"mean", "avg", "sum", "min", "max"}  # the rest count


def view(*aggs: Aggregation, name: str = "adhoc", tags: dict | None = None,
         schema: list | None = None, source: PushSource = push,
         entities: list | None = None) -> StreamFeatureView:
    aggs = aggs or (agg(),)
    if schema is None:
        schema = [Field(name=a.resolved_name(a.time_window),
                        dtype=Float64 if a.function in FLOAT_RESULTS else Int64) for a in aggs]
    return StreamFeatureView(
        name=name, source=source, entities=entities or [repo_entities.user],
        ttl=timedelta(0), timestamp_field="event_timestamp", tags=tags or {},
        schema=[USER_ID, *schema], aggregations=list(aggs),
    )


def test_adhoc_view_compiles_with_defaults():
    (f,) = compile_view(view())
    assert f == FeatureSpec(name="n_10m", view="adhoc", function="count", column="event_id",
                            kind="sliding", window_us=10 * MIN_US, slide_us=MIN_US, where=(),
                            dtype="int64", options=())
    spec = compile_views([view()])  # join key from the schema's entity column
    assert spec.join_key == "user_id"
    assert spec.push_source == "adhoc_push"


def test_tumbling_when_no_slide_and_session_ignores_slide():
    (f,) = compile_view(view(agg(slide=None)))
    assert (f.kind, f.window_us, f.slide_us) == ("sliding", 10 * MIN_US, 10 * MIN_US)
    (s,) = compile_view(view(agg(), tags={"feast_bytewax.window": " Session "}))
    assert (s.kind, s.window_us, s.slide_us) == ("session", 10 * MIN_US, 0)


def test_default_feature_name_is_feasts():
    a = agg(name="", function="sum", column="amount", window=timedelta(hours=2))
    (f,) = compile_view(view(a, schema=[Field(name="sum_amount_7200s", dtype=Float64)]))
    assert (f.name, f.function, f.column, f.dtype) == ("sum_amount_7200s", "sum", "amount",
                                                       "float64")


def test_aliases_compile_to_canonical_function_names():
    a1 = agg(name="avg_a", function="avg", column="amount")
    a2 = agg(name="nu_c", function="nunique", column="category")
    specs = compile_view(view(a1, a2))
    assert [f.function for f in specs] == ["mean", "count_distinct"]


def test_filter_tag_and_options_are_compiled():
    tags = {
        "feast_bytewax.filter": " event_type = purchase|view , category=books ",
        "feast_bytewax.hll_lg_k": "10",
        "unrelated": "x",
    }
    a = agg(name="cats", function="approx_count_distinct", column="category")
    (f,) = compile_view(view(a, tags=tags))
    assert f.where == (("category", frozenset({"books"})),
                       ("event_type", frozenset({"purchase", "view"})))
    assert f.options == (("hll_lg_k", "10"),)
    assert make_aggregator(f.function, dict(f.options)).lg_k == 10


def test_parse_filter_empty_means_no_filter():
    assert parse_filter("", "v") == ()
    assert parse_filter(" , ", "v") == ()


# ---------------------------------------------------------------- errors with clear messages

def test_unknown_function_lists_the_valid_names():
    with pytest.raises(SpecError) as err:
        compile_view(view(agg(function="median")))
    message = str(err.value)
    assert "'median'" in message and "'adhoc'" in message and "'n_10m'" in message
    for valid in [*REGISTRY, *ALIASES]:
        assert repr(valid) in message, valid
    assert "'approx_count_distinct'" in message


@pytest.mark.parametrize(("window", "slide"), [
    (timedelta(minutes=10), timedelta(minutes=3)),
    (timedelta(minutes=10), timedelta(minutes=20)),
    (timedelta(hours=1), timedelta(seconds=7)),
    (timedelta(minutes=10), timedelta(minutes=-1)),
])
def test_slide_must_divide_window(window, slide):
    with pytest.raises(SpecError, match=r"'adhoc'.*'n_10m'.*slide_interval .* must divide"):
        compile_view(view(agg(window=window, slide=slide)))


def test_slide_dividing_window_is_fine():
    (f,) = compile_view(view(agg(window=timedelta(hours=1), slide=timedelta(seconds=90))))
    assert (f.window_us, f.slide_us) == (HOUR_US, 90 * 1_000_000)


@pytest.mark.parametrize("window", [None, timedelta(0), timedelta(minutes=-5)])
def test_window_must_be_positive(window):
    with pytest.raises(SpecError, match="time_window must be a positive timedelta"):
        compile_view(view(agg(window=window, slide=None)))


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sesion", ""])
def test_bad_window_tag(kind):
    with pytest.raises(SpecError, match=r"'adhoc'.*feast_bytewax\.window.*sliding.*session"):
        compile_view(view(tags={"feast_bytewax.window": kind}))


@pytest.mark.parametrize("text", [
    "event_type", "event_type=", "=purchase", "event_type=|", "event_type=purchase,category",
    "event_type:purchase",
])
def test_malformed_filter_tag(text):
    with pytest.raises(SpecError, match=r"'adhoc'.*feast_bytewax\.filter.*column=value"):
        compile_view(view(tags={"feast_bytewax.filter": text}))


def test_aggregation_name_missing_from_schema():
    a = agg(name="orders_10m")
    with pytest.raises(SpecError, match=r"'adhoc'.*no field 'orders_10m' in the view schema"):
        compile_view(view(a, schema=[Field(name="other", dtype=Int64)]))


def test_empty_column():
    with pytest.raises(SpecError, match=r"Aggregation\.column is empty"):
        compile_view(view(agg(column="")))


def test_bad_sketch_option_fails_at_compile_time():
    a = agg(name="cats", function="approx_count_distinct", column="category")
    with pytest.raises(SpecError, match=r"'adhoc'.*'cats'.*hll_lg_k"):
        compile_view(view(a, tags={"feast_bytewax.hll_lg_k": "30"}))


def test_duplicate_feature_names_across_views():
    v1 = view(agg(name="dup_10m"), name="first")
    v2 = view(agg(name="dup_10m", function="sum", column="amount"), name="second")
    v3 = view(agg(name="unique_10m"), name="third")
    with pytest.raises(SpecError, match=r"unique across views.*\['dup_10m'\]"):
        compile_views([v1, v2, v3])
    assert compile_views([v1, v3]).feature_names == ("dup_10m", "unique_10m")


def test_views_must_share_one_push_source():
    other = PushSource(name="other_push", batch_source=repo_sources.user_features_batch)
    v1 = view(agg(name="a_10m"), name="first")
    v2 = view(agg(name="b_10m"), name="second", source=other)
    with pytest.raises(SpecError, match=r"share one push source.*adhoc_push.*other_push"):
        compile_views([v1, v2])


def test_views_of_several_entities_need_a_join_key():
    account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.STRING)
    v1 = view(agg(name="a_10m"), name="users")
    v2 = StreamFeatureView(
        name="accounts", source=push, entities=[account], ttl=timedelta(0),
        timestamp_field="event_timestamp",
        schema=[Field(name="account_id", dtype=String), Field(name="b_10m", dtype=Int64)],
        aggregations=[agg(name="b_10m")],
    )
    with pytest.raises(SpecError, match="several join keys"):
        compile_views([v1, v2])
    schema = parse_schema_ddl("account_id STRING")
    assert compile_views([v1, v2], "account_id", schema=schema).feature_names == ("b_10m",)
    assert compile_views([v1, v2], "user_id", schema=schema).feature_names == ("a_10m",)


# ------------------------------------------- columns come from the declared event schema

def kafka_source(ddl: str, name: str = "events_stream") -> KafkaSource:
    return KafkaSource(
        name=name, timestamp_field="event_timestamp", kafka_bootstrap_servers="b1:9092,b2:9092",
        topic="events", message_format=JsonFormat(schema_json=ddl),
        watermark_delay_threshold=timedelta(seconds=7),
        batch_source=FileSource(name=f"{name}_archive", path="data/events",
                                timestamp_field="event_timestamp"),
    )


def merchant_view() -> StreamFeatureView:
    merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
    return StreamFeatureView(
        name="merchant_features", source=push, entities=[merchant], ttl=timedelta(0),
        timestamp_field="event_timestamp", tags={"feast_bytewax.filter": "channel=web"},
        schema=[Field(name="merchant_id", dtype=String), Field(name="web_sales_1h", dtype=Float64)],
        aggregations=[agg(name="web_sales_1h", function="sum", column="discounted",
                          window=timedelta(hours=1))],
    )


def test_undeclared_columns_fail_at_compile_time_naming_view_and_column():
    """Issue 7, defect 1: a view on `merchant_id` used to compile and then die in a worker."""
    with pytest.raises(SpecError, match=r"view 'merchant_features': join key 'merchant_id' is "
                                        r"not an event column"):
        compile_flow([merchant_view()])
    with pytest.raises(SpecError, match=r"'merchant_features'.*filter column 'channel'"):
        compile_flow([merchant_view()], sources=[kafka_source("merchant_id STRING")])
    with pytest.raises(SpecError, match=r"'web_sales_1h'.*Aggregation.column 'discounted'"):
        compile_flow([merchant_view()],
                     sources=[kafka_source("merchant_id STRING, channel STRING")])
    with pytest.raises(SpecError, match=r"'web_sales_1h'.*sum needs a numeric column"):
        compile_flow([merchant_view()], sources=[
            kafka_source("merchant_id STRING, channel STRING, discounted STRING")])
    with pytest.raises(SpecError, match=r"'adhoc'.*Aggregation.column 'amout'"):
        compile_view(view(agg(name="s", function="sum", column="amout"),
                          schema=[Field(name="s", dtype=Float64)]))


def test_one_flow_serves_every_entity_with_its_declared_schema():
    ddl = "merchant_id STRING, channel STRING, discounted DOUBLE"
    flow = compile_flow([*shipped_views(), merchant_view()], entities=ENTITIES,
                        sources=[kafka_source(ddl), repo_sources.user_profile_versions],
                        feature_views=TABLES)
    assert [e.join_key for e in flow.entities] == ["merchant_id", "user_id"]
    assert flow.entity("merchant_id").feature_names == ("web_sales_1h",)
    assert flow.entity("user_id") == shipped_spec()
    assert flow.schema.extra == (("merchant_id", "string"), ("channel", "string"),
                                 ("discounted", "double"))
    assert flow.stream == StreamInput("events_stream", ("b1:9092", "b2:9092"), "events", 7.0,
                                      "data/events")


def test_schema_ddl_errors_are_clear():
    with pytest.raises(SpecError, match=r"column 'amount' is STRING, but the event spec"):
        parse_schema_ddl("amount STRING")
    with pytest.raises(SpecError, match=r"column 'x' has type MAP"):
        parse_schema_ddl("x MAP")
    with pytest.raises(SpecError, match=r"is not `name TYPE`"):
        parse_schema_ddl("justaname")
    assert parse_schema_ddl("event_id LONG, user_id STRING, tip DOUBLE").extra == (
        ("tip", "double"),)


def test_several_kafka_sources_need_the_input_tag():
    a, b = kafka_source("", "a_stream"), kafka_source("tip DOUBLE", "b_stream")
    with pytest.raises(SpecError, match=r"several KafkaSources \['a_stream', 'b_stream'\]"):
        compile_flow(shipped_views(), [repo_entities.user], [a, b])
    tagged = [view(agg(name="t", function="sum", column="tip"), name="tips",
                   schema=[Field(name="t", dtype=Float64)],
                   tags={"feast_bytewax.input": "b_stream"})]
    assert compile_flow(tagged, sources=[a, b]).stream.name == "b_stream"
    with pytest.raises(SpecError, match=r"feast_bytewax.input='nope': no such KafkaSource"):
        compile_flow([view(tags={"feast_bytewax.input": "nope"})], sources=[a])


def test_fingerprint_and_identity_change_with_a_definition():
    spec = shipped_spec()
    assert spec.fingerprint == shipped_spec().fingerprint
    longer = replace(spec, features=(replace(spec.features[0], window_us=2 * HOUR_US),
                                     *spec.features[1:]))
    assert longer.fingerprint != spec.fingerprint
    assert longer.features[0].identity != spec.features[0].identity


@pytest.mark.parametrize(("function", "column", "dtype", "ok"), [
    ("count", "event_id", Int64, True), ("count", "event_id", Float64, True),
    ("count", "event_id", String, False), ("count_distinct", "category", String, False),
    ("mean", "amount", Float64, True), ("mean", "amount", Int64, False),
    ("max", "amount", Int64, False), ("sum", "amount", String, False),
])
def test_a_field_must_hold_its_aggregation_s_result_type(function, column, dtype, ok):
    """A count declared String was accepted once: its parts then broke every later read of
    the folder (pyarrow cannot merge int64 and string), even after the fix."""
    a = agg(name="f", function=function, column=column)
    v = view(a, schema=[Field(name="f", dtype=dtype)])
    if ok:
        (f,) = compile_view(v)
        assert f.name == "f"
    else:
        with pytest.raises(SpecError, match=r"field 'f' is declared .*; declare it (Int64 or "
                                            r"Float64|Float64)$"):
            compile_view(v)


def test_a_field_without_an_aggregation_is_refused_at_compile_time():
    """It used to pass `apply` and stop the replay mid-run at the writer's check."""
    v = view(agg(), schema=[Field(name="n_10m", dtype=Int64), Field(name="orphan", dtype=Int64)])
    with pytest.raises(SpecError, match=r"fields \['orphan'\] have no Aggregation"):
        compile_view(v)
    (f,) = compile_view(view(agg()))  # the entity column of the schema is not an orphan
    assert f.name == "n_10m"
