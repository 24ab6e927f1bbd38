"""An online store with injected read latency, for the lookup tests (issue 10).

The real SQLite store (same tables, same code path), whose reads each sleep
`read_latency_s` first: what a slow or distant store looks like to the lookup operator.
Configured by class path in a test repo's feature_store.yaml:

    online_store:
      type: tests.support.slow_store.SlowSqliteOnlineStore
      path: data/online.db
      read_latency_s: 0.005
"""

from __future__ import annotations

import time
from typing import Literal

from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig

TYPE = "tests.support.slow_store.SlowSqliteOnlineStore"


class SlowSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    type: Literal["tests.support.slow_store.SlowSqliteOnlineStore"] = TYPE  # type: ignore[assignment]
    read_latency_s: float = 0.005


class SlowSqliteOnlineStore(SqliteOnlineStore):
    def online_read(self, config, table, entity_keys, requested_features=None):
        time.sleep(config.online_store.read_latency_s)
        return super().online_read(config, table, entity_keys, requested_features)
