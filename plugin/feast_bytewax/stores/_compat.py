"""The Feast internals the plugin relies on, behind one checked door.

Feast 0.67 has no public API for four things this package needs:

- the provider of a `FeatureStore` (`FeatureStore._get_provider()`): the sink writes through
  it directly (`ingest_df`, `ingest_df_to_offline_store`), skipping `push`'s per-call
  registry rebuild and its once-per-view offline write;
- Feast's Redis field hashing (`feast.infra.online_stores.helpers._mmh3`): the fast Redis
  writer must produce Feast's exact hash keys; and the Redis store's sync client
  (`RedisOnlineStore._get_client`, built from `_parse_connection_string`'s keyword
  arguments), to build it with socket timeouts and without redis-py's own retries
  (`RedisClientDefaults`);
- the dask offline store's reader: its retrieval jobs call the module-level
  `_read_datasource` (and `DaskOfflineStore.evaluate_offline_job`) from lazily evaluated
  closures; the parquet-folder store re-binds copies of those closures to its own reader
  (`with_reader`), per call, without patching Feast's module for anyone else.

This module is the only place that touches them, and it refuses to load under a Feast (or a
redis-py) it was not written for, so an upgrade fails here, with a message, rather than deep
in a write. redis-py 7 (what `feast[redis]` 0.67 installs) retries every command 3 times
with exponential backoff by default (`Retry(ExponentialWithJitterBackoff(1, 10), 3)`);
`no_retries()` is the policy that turns that off, checked against that version.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Mapping
from importlib.metadata import version
from typing import Any

from feast.infra.offline_stores.dask import DaskOfflineStore
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore
from redis.backoff import NoBackoff
from redis.retry import Retry

WRITTEN_FOR = "0.67."
FEAST_VERSION = version("feast")
if not FEAST_VERSION.startswith(WRITTEN_FOR):
    raise ImportError(
        f"feast_bytewax.stores uses Feast {WRITTEN_FOR}x internals; found feast {FEAST_VERSION}."
        f" Install feast[redis]=={WRITTEN_FOR}* (as pyproject.toml pins)."
    )
REDIS_WRITTEN_FOR = "7."
REDIS_VERSION = version("redis")
if not REDIS_VERSION.startswith(REDIS_WRITTEN_FOR):
    raise ImportError(
        f"feast_bytewax.stores was written for redis-py {REDIS_WRITTEN_FOR}x (its client "
        f"retry and timeout keywords); found redis {REDIS_VERSION}. Install "
        f"redis=={REDIS_WRITTEN_FOR}* (what feast[redis]=={WRITTEN_FOR}* resolves to)."
    )


def provider_of(store: Any) -> Any:
    """The provider a `FeatureStore` writes through."""
    return store._get_provider()


def no_retries() -> Retry:
    """A redis-py retry policy that makes one try (no retries, no backoff): the caller
    retries (`dataflow.retry.StoreRetry`)."""
    return Retry(NoBackoff(), 0)


_building = threading.local()
_building_lock = threading.Lock()


def redis_client(store: Any, config: Any, defaults: Mapping[str, Any] | None = None) -> Any:
    """The sync redis-py client of a Feast `RedisOnlineStore`: Feast's own
    `RedisOnlineStore._get_client` (one client per store, cached in `store._client`; plain,
    sentinel or cluster as configured), with `defaults` added to the keyword arguments the
    connection string gives where the string does not set them (`host:port,socket_timeout=2`
    keeps its 2). Redis, Sentinel and RedisCluster all take them at construction, so every
    connection of the client (pooled, per cluster node, to the sentinels) has them.

    The defaults reach only the client this call builds: Feast's async client
    (`_get_client_async`, same parser, maybe on another thread) is left as it is."""
    if getattr(store, "_client", None) is not None or not defaults:
        return RedisOnlineStore._get_client(store, config)
    parse = RedisOnlineStore._parse_connection_string

    def parse_with_defaults(connection_string: str) -> tuple[list, dict]:
        startup_nodes, kwargs = parse(connection_string)
        if getattr(_building, "active", False):
            kwargs = {**defaults, **kwargs}
        return startup_nodes, kwargs

    with _building_lock:
        # Feast calls `self._parse_connection_string(...)`: an instance attribute shadows
        # the static method for the length of this call, and only on this thread
        store._parse_connection_string = parse_with_defaults
        _building.active = True
        try:
            return RedisOnlineStore._get_client(store, config)
        finally:
            _building.active = False
            del store._parse_connection_string


class RedisClientDefaults:
    """Mixin for a `RedisOnlineStore` subclass (put it first in the bases): Feast's sync
    client getter (`_get_client`, behind every sync read, write and delete of the store) goes
    through `redis_client` with the store's `client_defaults(config)`."""

    def client_defaults(self, config: Any) -> dict[str, Any]:
        """Keyword arguments of the redis-py client the connection string does not set."""
        return {}

    def _get_client(self, online_store_config: Any) -> Any:
        return redis_client(self, online_store_config, self.client_defaults(online_store_config))


def redis_field_hash(name: str) -> bytes:
    """Feast's Redis hash field name for a feature (`_mmh3` of `view:feature`)."""
    return _mmh3(name)


def _rebind(fn: Callable, **names: Any) -> Callable:
    """A copy of `fn` (with the same closure) that sees `names` instead of its module globals."""
    scope = dict(fn.__globals__)
    scope.update(names)
    new = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def with_reader(job: RetrievalJob, read_datasource: Callable) -> RetrievalJob:
    """Make a DaskRetrievalJob read its sources through `read_datasource`.

    Its evaluation closure looks up `_read_datasource` (historical retrieval) or
    `DaskOfflineStore.evaluate_offline_job` (pulls) in the dask module's globals."""
    evaluate_offline_job = _rebind(
        DaskOfflineStore.evaluate_offline_job, _read_datasource=read_datasource
    )
    shim = types.SimpleNamespace(evaluate_offline_job=evaluate_offline_job)
    job.evaluation_function = _rebind(  # type: ignore[attr-defined]
        job.evaluation_function,  # type: ignore[attr-defined]
        _read_datasource=read_datasource,
        DaskOfflineStore=shim,
    )
    return job
