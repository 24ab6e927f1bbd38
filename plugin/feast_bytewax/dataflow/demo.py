"""`feast-bytewax demo`: the README's main command, end to end on the embedded stores.

generate events, profile versions and a category risk table -> feast apply (and load the
risk table into the online store, where lookups read it) -> replay through the dataflow
(SQLite online + parquet folder offline; each event joined with the profile valid at its
time) -> read the features back through Feast, online and point-in-time.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from feast_bytewax.config import DemoConfig, ReplayConfig
from feast_bytewax.dataflow.replay import ReplayResult, run_replay
from feast_bytewax.dataflow.repo import apply_repo, compile_repo, open_store
from feast_bytewax.datagen.generate import write_events
from feast_bytewax.datagen.profiles import (
    generate_category_risk,
    generate_profiles,
    write_category_risk,
    write_profiles,
)
from feast_bytewax.observability.progress import live_progress
from feast_bytewax.training import training_frame

console = Console(width=None if Console().is_terminal else 150)
SERVICE = "user_fraud_features"


def _cell(v: object) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return "null"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, datetime | pd.Timestamp):
        return v.strftime("%Y-%m-%d %H:%M:%SZ")
    return str(v)


def _table(title: str, df: pd.DataFrame) -> Table:
    t = Table(title=title, show_lines=False)
    for c in df.columns:
        t.add_column(str(c), overflow="fold")
    for row in df.itertuples(index=False):
        t.add_row(*(_cell(v) for v in row))
    return t


def run_demo(args: DemoConfig) -> ReplayResult:
    """The four steps; returns the replay's result (its counters decide the exit code)."""
    repo = Path(args.repo).resolve()
    compile_repo(repo)  # a bad definition stops here, before step 1 replaces the data
    data = repo / "data"
    data.mkdir(parents=True, exist_ok=True)
    events_path = data / "events.parquet"
    # The last 24 hours, so the online values are "now"-ish and no event is in the future.
    start = (datetime.now(UTC) - timedelta(hours=24)).replace(microsecond=0)
    console.rule("1/4 generate events, profiles and category risks")
    gen = write_events(events_path, args.count, args.users, seed=args.seed, start=start)
    console.print(f"{gen['rows']:,} events, {gen['users']:,} users, {gen['late_rows']:,} late, "
                  f"{gen['min_event_timestamp']} .. {gen['max_event_timestamp']} -> {events_path}")
    # the demo's window ends now: no profile version is valid only in the future
    profiles = generate_profiles(args.users, start, timedelta(hours=24), args.seed,
                                 after_end_fraction=0.0)
    profiles_path = write_profiles(data / "profiles.parquet", profiles)
    risk_path = write_category_risk(data / "category_risk.parquet",
                                    generate_category_risk(args.seed,
                                                           as_of=start - timedelta(days=1)))
    console.print(f"{profiles.num_rows:,} profile versions -> {profiles_path}; category risks "
                  f"-> {risk_path}")

    console.rule("2/4 feast apply; the risk table into the online store (lookups read it)")
    apply_repo(repo)
    open_store(repo).materialize(start - timedelta(days=2), datetime.now(UTC),
                                 feature_views=["category_risk"])

    console.rule("3/4 replay through the Bytewax dataflow into Feast")
    with live_progress(True) as on_progress:
        result = run_replay(ReplayConfig(repo=repo, events=str(events_path)),
                            on_progress=on_progress)
    console.print(result.describe(), markup=False)

    console.rule("4/4 read the features back through Feast")
    store = open_store(repo)
    service = store.get_feature_service(SERVICE)
    events = pd.read_parquet(events_path, columns=["user_id", "event_timestamp"])
    top = events["user_id"].value_counts().index[:5].tolist()
    online = store.get_online_features(features=service,
                                       entity_rows=[{"user_id": u} for u in top]).to_df()
    console.print(_table(f"online features ({SERVICE}), busiest users", online))

    # Labeled-event style entity rows: moments of real purchases (just after them), a time
    # before a user's first event, and a user never seen (their counts are 0, not null).
    rnd = random.Random(args.seed)
    purchases = pd.read_parquet(events_path, columns=["user_id", "event_type", "event_timestamp"])
    purchases = purchases[purchases["event_type"] == "purchase"]
    picks = purchases.sample(6, random_state=args.seed)
    first_user = purchases["user_id"].iloc[0]
    first_time = events.loc[events["user_id"] == first_user, "event_timestamp"].min()
    entity_df = pd.DataFrame({
        "user_id": [*picks["user_id"], first_user, "never_seen_user"],
        "event_timestamp": [*(picks["event_timestamp"] + timedelta(seconds=1)),
                            first_time - timedelta(seconds=1), events["event_timestamp"].max()],
        "label": [rnd.choice([0, 1]) for _ in range(8)],
    })
    frame = training_frame(store, entity_df, service)
    console.print(_table("point-in-time training frame (get_historical_features)", frame))
    console.print(f"offline rows: {repo / 'data/offline/user_features'}  "
                  f"online store: {repo / 'data/online.db'}")
    return result
