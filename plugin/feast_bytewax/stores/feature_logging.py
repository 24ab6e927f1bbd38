"""Feature logging for Feast's Python serving path (`feast serve`, `get_online_features`).

Feast's Python feature server never writes feature logs, whatever the feature service's
`logging_config` says (only the retired Go server did). This module is a Feast *provider*,
loaded by class path from feature_store.yaml, that adds it without touching Feast:

    provider: feast_bytewax.stores.feature_logging.LoggingProvider
    feast_bytewax_logging:          # optional, these are the defaults
      flush_interval_s: 5.0         # write what is buffered at least this often
      max_buffer_rows: 20000        # ... or as soon as this many log rows wait
      max_pending_rows: 1000000     # beyond this, sampled requests are dropped (counted)
      base_provider: null           # e.g. feast_bytewax.stores.fast_redis.FastRedisProvider

It is Feast's `PassthroughProvider` (or `base_provider`) plus, for every
`get_online_features` call made with a `FeatureService` that has a `logging_config` (the
feature server resolves `"feature_service": name` requests to one), a sampled log record:
sampling is per request, at `logging_config.sample_rate`, and the sampled response goes to
the provider's `FeatureLogBuffer` (`feature_log_buffer`: the log schema, the background
writer, the flush at exit). The provider flushes it on `FeatureStore.close()` (the feature
server's shutdown).

`read_logged_features(store, service)` reads them back through Feast
(`retrieve_feature_service_logs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from feast.feature_service import FeatureService
from feast.infra.passthrough_provider import PassthroughProvider
from feast.repo_config import RepoConfig

from feast_bytewax.stores._compat import provider_of
from feast_bytewax.stores.feature_log_buffer import FeatureLogBuffer
from feast_bytewax.stores.parquet_folder import source_filesystem
from feast_bytewax.stores.parquet_parts import list_parts

logger = logging.getLogger(__name__)

CONFIG_KEY = "feast_bytewax_logging"
DEFAULTS: dict[str, Any] = {"flush_interval_s": 5.0, "max_buffer_rows": 20_000,
                            "max_pending_rows": 1_000_000, "base_provider": None}


def logging_settings(config: RepoConfig) -> dict[str, Any]:
    """The `feast_bytewax_logging:` block of feature_store.yaml over the defaults."""
    extra = getattr(config, "model_extra", None) or {}
    raw = extra.get(CONFIG_KEY) or {}
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{CONFIG_KEY}: unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    out = dict(DEFAULTS)
    out.update(raw)
    if out["flush_interval_s"] <= 0 or out["max_buffer_rows"] < 1:
        raise ValueError(f"{CONFIG_KEY}: flush_interval_s must be > 0, max_buffer_rows >= 1")
    return out


def _rows_of(entity_rows: Any) -> int:
    """Entity rows in a request (list of dicts, or column name -> values)."""
    try:
        if isinstance(entity_rows, Mapping):
            return len(next(iter(entity_rows.values()), []))
        return len(entity_rows)
    except TypeError:
        return 1


class FeatureLoggingMixin:
    """Adds feature logging to a provider class (put it first in the bases)."""

    def __init__(self, config: RepoConfig):
        super().__init__(config)  # type: ignore[call-arg]
        self.feature_log = FeatureLogBuffer(self, config, logging_settings(config))

    def _log(self, features: Any, response: Any, registry: Any, full_names: bool,
             entity_rows: Any) -> None:
        if isinstance(features, FeatureService) and features.logging_config is not None:
            try:
                self.feature_log.add(features, response, registry, full_names,
                                     _rows_of(entity_rows))
            except Exception:
                logger.exception("feature logging: could not buffer a response")

    def get_online_features(self, config, features, entity_rows, registry, project,
                            full_feature_names=False,
                            include_feature_view_version_metadata=False):
        response = super().get_online_features(  # type: ignore[misc]
            config=config, features=features, entity_rows=entity_rows, registry=registry,
            project=project, full_feature_names=full_feature_names,
            include_feature_view_version_metadata=include_feature_view_version_metadata,
        )
        self._log(features, response, registry, full_feature_names, entity_rows)
        return response

    async def get_online_features_async(self, config, features, entity_rows, registry,
                                        project, full_feature_names=False,
                                        include_feature_view_version_metadata=False):
        response = await super().get_online_features_async(  # type: ignore[misc]
            config=config, features=features, entity_rows=entity_rows, registry=registry,
            project=project, full_feature_names=full_feature_names,
            include_feature_view_version_metadata=include_feature_view_version_metadata,
        )
        self._log(features, response, registry, full_feature_names, entity_rows)
        return response

    def flush_feature_logs(self) -> int:
        """Write buffered logs now (blocking); returns the rows written."""
        return self.feature_log.flush()

    async def close(self) -> None:
        try:
            self.feature_log.close()
        finally:
            await super().close()  # type: ignore[misc]


_COMPOSED: dict[type, type] = {}


class LoggingProvider(FeatureLoggingMixin, PassthroughProvider):
    """`PassthroughProvider` that logs served feature vectors (see the module doc).

    With `feast_bytewax_logging: {base_provider: pkg.mod.SomeProvider}` the instance is of a
    subclass of that provider instead (e.g. `feast_bytewax.stores.fast_redis.FastRedisProvider`),
    so logging composes with another plugin provider.
    """

    def __new__(cls, config: RepoConfig):
        base_path = logging_settings(config).get("base_provider")
        if cls is LoggingProvider and base_path:
            from feast.importer import import_class

            module, name = str(base_path).rsplit(".", 1)
            base = import_class(module, name, "Provider")
            if not issubclass(base, LoggingProvider):
                sub = _COMPOSED.get(base)
                if sub is None:
                    sub = _COMPOSED[base] = type(f"Logging{base.__name__}",
                                                 (FeatureLoggingMixin, base), {})
                return sub(config)
        return super().__new__(cls)


def read_logged_features(store: Any, service: FeatureService | str,
                         start: datetime | None = None,
                         end: datetime | None = None) -> Any:
    """The service's logged vectors as a DataFrame, read through Feast's provider API
    (works whichever provider the store uses). None when the service has no logging."""
    if isinstance(service, str):
        service = store.get_feature_service(service)
    if service.logging_config is None:
        return None
    dest = service.logging_config.destination
    if hasattr(dest, "path"):  # file destinations: nothing written yet reads as None
        try:
            fs, path = source_filesystem(store.config, dest.to_data_source())
            if not list_parts(fs, path):
                return None
        except (TypeError, AttributeError):
            pass
    start = start or datetime(1970, 1, 2, tzinfo=UTC)
    end = end or datetime.now(UTC) + timedelta(days=3650)
    job = provider_of(store).retrieve_feature_service_logs(
        service, start, end, store.config, store.registry)
    return job.to_df()
