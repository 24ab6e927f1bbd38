"""The Feast internals the plugin relies on, behind one checked door.

Feast 0.67 has no public API for four things this package needs:

- the provider of a `FeatureStore` (`FeatureStore._get_provider()`): the sink writes through
  it directly (`ingest_df`, `ingest_df_to_offline_store`), skipping `push`'s per-call
  registry rebuild and its once-per-view offline write;
- Feast's Redis field hashing (`feast.infra.online_stores.helpers._mmh3`): the fast Redis
  writer must produce Feast's exact hash keys; and the Redis store's client
  (`RedisOnlineStore._get_client`), to give it a write timeout;
- the dask offline store's reader: its retrieval jobs call the module-level
  `_read_datasource` (and `DaskOfflineStore.evaluate_offline_job`) from lazily evaluated
  closures; the parquet-folder store re-binds copies of those closures to its own reader
  (`with_reader`), per call, without patching Feast's module for anyone else.

This module is the only place that touches them, and it refuses to load under a Feast it
was not written for, so an upgrade fails here, with a message, rather than deep in a write.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from feast.infra.offline_stores.dask import DaskOfflineStore
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.online_stores.helpers import _mmh3

WRITTEN_FOR = "0.67."
FEAST_VERSION = version("feast")
if not FEAST_VERSION.startswith(WRITTEN_FOR):
    raise ImportError(
        f"feast_bytewax.stores uses Feast {WRITTEN_FOR}x internals; found feast {FEAST_VERSION}."
        f" Install feast[redis]=={WRITTEN_FOR}* (as pyproject.toml pins)."
    )


def provider_of(store: Any) -> Any:
    """The provider a `FeatureStore` writes through."""
    return store._get_provider()


def redis_client(store: Any, config: Any) -> Any:
    """The redis-py client of a Feast `RedisOnlineStore` (its `_get_client`)."""
    return store._get_client(config)


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
