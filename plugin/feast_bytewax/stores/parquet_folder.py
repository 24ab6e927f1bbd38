"""Append-only parquet-folder offline store: Feast's file store without the quadratic append.

Feast's built-in `file` (dask) offline store rewrites the whole parquet file on every offline
write (`offline_write_batch` reads the old file, concatenates, writes it all back), and raises
`IsADirectoryError` when the `FileSource` is a folder. This store keeps every other behaviour
of the dask store (point-in-time joins, materialization pulls) and changes two things:

- **Writes append.** `offline_write_batch` writes ONE new part file per call into the
  `FileSource` folder, named `part-<unix ns, zero padded>-<uuid8>.parquet`. On a local disk the
  file is written under a hidden temp name (`.part-....parquet.tmp`, which every parquet reader
  here ignores) and renamed, so readers never see a partial file; on S3 a PUT is atomic.
  Existing parts are never read back (only one part's schema, once per process) nor rewritten.
  The folder is created if missing. Each batch is cast to the schema of the existing parts
  (else to the Feast types of the view), so types stay stable across parts, e.g. an int64
  feature whose first batch is all null.
- **Reads go through `pyarrow.dataset`,** not `dask.dataframe.read_parquet`: the same code
  reads a local folder or an `s3://` prefix (pyarrow's own S3 client, no s3fs), a single
  parquet file (any `FileSource`), and an empty or missing folder, which reads as no rows
  (so `get_historical_features` returns the entity rows with null features and a
  materialization pulls nothing) instead of failing inside dask.

The dask store calls a module-level `_read_datasource` from inside lazily evaluated closures;
this store re-binds those closures to its own reader (a copy of their globals with one name
replaced), per call, without patching Feast's module for anyone else.

Config (`offline_store:` in feature_store.yaml):

    type: feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore
    root: s3://bucket/prefix          # optional: re-roots *relative* FileSource paths
    s3_endpoint_override: http://...  # optional: S3-compatible endpoint (MinIO, moto)

Without `root`, relative `FileSource` paths resolve against the repo path as in Feast.
Absolute paths and URIs (`s3://bucket/key`) are used as given. A `FileSource`'s own
`s3_endpoint_override` wins over the store's.

Limitations: Feast's own `FeatureStore.write_to_offline_store` / `push(to=OFFLINE)` first asks
the `FileSource` for its columns (a `ParquetDataset` over the repo-relative path): that fails on
an empty folder and ignores `root`. The feast-bytewax sink calls the provider directly and is
not affected. Reads load the source into memory (as the dask store's `persist()` calls do
anyway).
"""

from __future__ import annotations

import contextlib
import threading
import time
import types
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytz
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import RepoConfig
from feast.type_map import feast_value_type_to_pa

STORE_TYPE = "feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


class ParquetFolderOfflineStoreConfig(DaskOfflineStoreConfig):
    """Offline store config: the dask store's, plus optional re-rooting and S3 endpoint."""

    type: Literal["feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore"] = STORE_TYPE  # type: ignore[assignment]
    """Offline store type selector (the class path)."""

    root: str | None = None
    """Prefix for relative FileSource paths, e.g. `s3://bucket/features` or `/mnt/lake`.
    A relative local root is taken relative to the repo path."""

    s3_endpoint_override: str | None = None
    """Endpoint of an S3-compatible service, e.g. `http://127.0.0.1:9000`."""


# ----------------------------------------------------------------------------------------
# Paths and filesystems
# ----------------------------------------------------------------------------------------


def _is_uri(path: str) -> bool:
    return "://" in path


def resolve_source_uri(config: RepoConfig, source: FileSource) -> str:
    """The URI or absolute local path the store reads and writes for `source`."""
    uri = source.file_options.uri
    store_cfg = config.offline_store
    root = getattr(store_cfg, "root", None)
    if _is_uri(uri) or Path(uri).is_absolute():
        return uri
    if root:
        if _is_uri(root):
            return f"{root.rstrip('/')}/{uri.lstrip('/')}"
        return FileSource.get_uri_for_file_path(config.repo_path, str(Path(root) / uri))
    return FileSource.get_uri_for_file_path(config.repo_path, uri)


def source_filesystem(config: RepoConfig, source: FileSource) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a FileSource, honouring root and endpoint."""
    uri = resolve_source_uri(config, source)
    endpoint = source.file_options.s3_endpoint_override or getattr(
        config.offline_store, "s3_endpoint_override", None
    )
    if uri.startswith("s3://"):
        filesystem, path = FileSource.create_filesystem_and_path(
            uri, endpoint or "", source.resolve_credentials()
        )
        assert filesystem is not None
        return filesystem, path.rstrip("/")
    if _is_uri(uri):
        filesystem, path = pafs.FileSystem.from_uri(uri)
        return filesystem, path
    return pafs.LocalFileSystem(), str(Path(uri))


def _is_data_file(info: pafs.FileInfo) -> bool:
    name = info.base_name
    return (
        info.type == pafs.FileType.File
        and not name.startswith((".", "_"))
        and name.endswith(PARQUET_SUFFIXES)
    )


def list_parts(filesystem: pafs.FileSystem, path: str) -> list[str]:
    """Sorted data files under `path` (a folder, recursively; or a single file). [] if missing."""
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        return [path]
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return sorted(i.path for i in filesystem.get_file_info(selector) if _is_data_file(i))


def new_part_name(now_ns: int | None = None) -> str:
    """`part-<20-digit unix ns>-<uuid8>.parquet`: unique, and sorts in write order."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    return f"{PART_PREFIX}{now_ns:020d}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"


# ----------------------------------------------------------------------------------------
# Schemas
# ----------------------------------------------------------------------------------------


def view_arrow_fields(view: FeatureView) -> dict[str, pa.DataType]:
    """Source column -> arrow type for one view: join keys, timestamps, features."""
    source = view.batch_source
    reverse = {v: k for k, v in (source.field_mapping or {}).items()}
    fields: dict[str, pa.DataType] = {}
    for col in view.entity_columns:
        fields[reverse.get(col.name, col.name)] = feast_value_type_to_pa(
            col.dtype.to_value_type()
        )
    for ts in (source.timestamp_field, source.created_timestamp_column):
        if ts:
            fields[ts] = TIMESTAMP_TYPE
    for feat in view.features:
        fields[reverse.get(feat.name, feat.name)] = feast_value_type_to_pa(
            feat.dtype.to_value_type()
        )
    return fields


def _target_type(current: pa.DataType, wanted: pa.DataType | None) -> pa.DataType:
    if wanted is None:
        return current
    if pa.types.is_timestamp(wanted) and pa.types.is_timestamp(current):
        return TIMESTAMP_TYPE
    return wanted


class _SchemaCache:
    """Schema of the existing parts per folder, looked up once per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schemas: dict[tuple[str, str], pa.Schema] = {}

    def get(self, filesystem: pafs.FileSystem, path: str) -> pa.Schema | None:
        key = (filesystem.type_name, path)
        with self._lock:
            if key in self._schemas:
                return self._schemas[key]
        parts = list_parts(filesystem, path)
        if not parts:
            return None
        schema = pq.read_schema(parts[-1], filesystem=filesystem)
        return self.put(filesystem, path, schema)

    def put(self, filesystem: pafs.FileSystem, path: str, schema: pa.Schema) -> pa.Schema:
        with self._lock:
            return self._schemas.setdefault((filesystem.type_name, path), schema)

    def clear(self) -> None:
        with self._lock:
            self._schemas.clear()


SCHEMAS = _SchemaCache()


def conform_table(table: pa.Table, view: FeatureView, existing: pa.Schema | None) -> pa.Table:
    """Reorder and cast a batch to the existing parts' schema (or, for the first part, to the
    view's Feast types, timestamps as `timestamp[us, UTC]`). Raises on a column mismatch."""
    if existing is not None:
        missing = sorted(set(existing.names) - set(table.column_names))
        extra = sorted(set(table.column_names) - set(existing.names))
        if missing or extra:
            raise ValueError(
                f"feature view {view.name!r}: batch columns {table.column_names} do not match "
                f"the existing parts' columns {existing.names} "
                f"(missing {missing}, unexpected {extra})"
            )
        table = table.select(existing.names)
        return table if table.schema == existing else table.cast(existing)
    wanted = view_arrow_fields(view)
    missing = sorted(set(wanted) - set(table.column_names))
    if missing:
        raise ValueError(
            f"feature view {view.name!r}: batch lacks columns {missing}; "
            f"got {table.column_names}"
        )
    target = pa.schema(
        [pa.field(f.name, _target_type(f.type, wanted.get(f.name))) for f in table.schema],
        metadata=table.schema.metadata,
    )
    return table if table.schema == target else table.cast(target)


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


# Integer columns read as pandas nullable integers: an int feature with nulls stays an int
# (plain `to_pandas` would turn the whole column into float64).
_NULLABLE_INTS = {
    pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype(),
}


def _normalize_frame(df: pd.DataFrame, timestamp_columns: list[str]) -> pd.DataFrame:
    """Timestamps as datetime64[ns, pytz.UTC]: what the dask store's joins expect (anything
    else sends it down a per-row `apply` path)."""
    for col in timestamp_columns:
        if col not in df.columns:
            continue
        series = df[col]
        if not isinstance(series.dtype, pd.DatetimeTZDtype):
            series = pd.to_datetime(series, utc=True)
        df[col] = series.dt.tz_convert(pytz.UTC).astype(pd.DatetimeTZDtype("ns", pytz.UTC))
    return df


def read_source_frame(
    config: RepoConfig,
    source: FileSource,
    hint: dict[str, pa.DataType] | None = None,
) -> pd.DataFrame:
    """Every row of a FileSource as pandas (integer columns as nullable `Int64`, timestamps as
    `datetime64[ns, UTC]`); an empty or missing folder gives an empty frame with the columns of
    `hint` (else just the timestamp columns)."""
    filesystem, path = source_filesystem(config, source)
    parts = list_parts(filesystem, path)
    ts_cols = [c for c in (source.timestamp_field, source.created_timestamp_column) if c]
    if parts:
        table = pads.dataset(parts, filesystem=filesystem, format="parquet").to_table()
    else:
        fields = dict(hint or {})
        for col in ts_cols:
            fields.setdefault(col, TIMESTAMP_TYPE)
        table = pa.schema(list(fields.items())).empty_table()
    return _normalize_frame(table.to_pandas(types_mapper=_NULLABLE_INTS.get), ts_cols)


def _frame_to_dask(df: pd.DataFrame) -> dd.DataFrame:
    rows_per_part = 1_000_000
    return dd.from_pandas(df, npartitions=max(1, -(-len(df) // rows_per_part)), sort=False)


def _reader(
    config: RepoConfig, hints: dict[str, dict[str, pa.DataType]]
) -> Callable[[DataSource, Any], dd.DataFrame]:
    def read_datasource(data_source: DataSource, repo_path: Any = None) -> dd.DataFrame:
        if not isinstance(data_source, FileSource):
            raise TypeError(f"{STORE_TYPE} reads FileSources only, got {type(data_source)}")
        return _frame_to_dask(read_source_frame(config, data_source, hints.get(data_source.name)))

    return read_datasource


def _rebind(fn: Callable, **names: Any) -> Callable:
    """A copy of `fn` (with the same closure) that sees `names` instead of its module globals."""
    scope = dict(fn.__globals__)
    scope.update(names)
    new = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


def _with_reader(job: RetrievalJob, read_datasource: Callable) -> RetrievalJob:
    """Make a DaskRetrievalJob read through `read_datasource`.

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


# ----------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------


def _check_config(config: RepoConfig) -> None:
    if not isinstance(config.offline_store, ParquetFolderOfflineStoreConfig):
        raise TypeError(
            f"{STORE_TYPE} needs offline_store.type {STORE_TYPE!r}, got "
            f"{type(config.offline_store).__name__}"
        )


def _check_source(source: Any, what: str) -> FileSource:
    if not isinstance(source, FileSource):
        raise TypeError(f"{STORE_TYPE}: {what} must be a FileSource, got {type(source).__name__}")
    return source


class ParquetFolderOfflineStore(DaskOfflineStore):
    """Feast's dask/file offline store with append-only folder writes and pyarrow reads."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | dd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        _check_config(config)
        hints: dict[str, dict[str, pa.DataType]] = {}
        for view in feature_views:
            source = _check_source(view.batch_source, f"batch source of {view.name!r}")
            hints.setdefault(source.name, {}).update(view_arrow_fields(view))
        job = DaskOfflineStore.get_historical_features(
            config, feature_views, feature_refs, entity_df, registry, project,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp,
            **kwargs,
        )
        return _with_reader(job, _reader(config, hints))

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        _check_config(config)
        source = _check_source(data_source, "data_source")
        job = DaskOfflineStore.pull_latest_from_table_or_query(
            config, source, join_key_columns, feature_name_columns, timestamp_field,
            created_timestamp_column, start_date, end_date,
        )
        hint = {c: pa.null() for c in join_key_columns + feature_name_columns}
        return _with_reader(job, _reader(config, {source.name: hint}))

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        _check_config(config)
        source = _check_source(data_source, "data_source")
        job = DaskOfflineStore.pull_all_from_table_or_query(
            config, source, join_key_columns, feature_name_columns, timestamp_field,
            created_timestamp_column, start_date, end_date,
        )
        hint = {c: pa.null() for c in join_key_columns + feature_name_columns}
        return _with_reader(job, _reader(config, {source.name: hint}))

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Append `table` as one new part file in the view's batch-source folder."""
        _check_config(config)
        source = _check_source(feature_view.batch_source, f"batch source of {feature_view.name!r}")
        if table.num_rows == 0:
            return
        filesystem, folder = source_filesystem(config, source)
        if folder.endswith(PARQUET_SUFFIXES):
            raise ValueError(
                f"{STORE_TYPE} appends part files to a folder; the batch source "
                f"{source.name!r} of {feature_view.name!r} is a file: {source.path!r}"
            )
        existing = SCHEMAS.get(filesystem, folder)
        table = conform_table(table, feature_view, existing)
        write_part(filesystem, folder, table)
        if existing is None:
            SCHEMAS.put(filesystem, folder, table.schema)
        if progress:
            progress(table.num_rows)


def write_part(filesystem: pafs.FileSystem, folder: str, table: pa.Table) -> str:
    """Write `table` as a new part file in `folder` (a local folder is created if missing);
    returns its path."""
    name = new_part_name()
    final = f"{folder}/{name}"
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.create_dir(folder, recursive=True)
        temp = f"{folder}/.{name}.tmp"
        try:
            pq.write_table(table, temp, filesystem=filesystem)
            filesystem.move(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                filesystem.delete_file(temp)
            raise
    else:  # object stores: no folders to create; a PUT becomes visible whole (a rename
        # would be a copy)
        pq.write_table(table, final, filesystem=filesystem)
    return final
