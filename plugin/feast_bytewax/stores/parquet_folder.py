"""Parquet-folder offline store: Feast's file store, with commits instead of rewrites.

Feast's built-in `file` (dask) offline store rewrites the whole parquet file on every offline
write (`offline_write_batch` reads the old file, concatenates, writes it all back), and raises
`IsADirectoryError` when the `FileSource` is a folder. This store keeps every other behaviour
of the dask store (point-in-time joins, materialization pulls) and changes two things:

- **Writes add part files under a commit log** (`stores.commits`): O(batch) per write, atomic
  (a hidden temp name then a rename on a local disk, a PUT on S3), visible once a commit
  marker lists them. Feast's own `push(to=OFFLINE)` commits each write at once; the
  feast-bytewax sink commits with its Bytewax snapshots (`open_transaction`), so reruns,
  retries and restarts never store a row twice, and a replay replaces its time range. Each
  batch is cast to the Feast types of the view (stable types, e.g. an int64 feature whose
  first batch is all null); a part carries the columns of its time (a feature added later
  reads as null in older parts).
- **Reads go through pyarrow,** not `dask.dataframe.read_parquet`: the same code reads a
  local folder or an `s3://` prefix (pyarrow's own S3 client, no s3fs), a single parquet
  file (any `FileSource`), and an empty or missing folder, which reads as no rows (so
  `get_historical_features` returns the entity rows with null features and a
  materialization pulls nothing) instead of failing inside dask. A folder reads as its
  committed rows, one per identity (join keys, event timestamp).

Part-file naming, listing, writing and schemas live in `feast_bytewax.stores.parquet_parts`;
paths and URIs become pyarrow filesystems in `feast_bytewax.ingest.filesystems`.

The dask store calls a module-level `_read_datasource` from inside lazily evaluated closures;
this store re-binds those closures to its own reader (`stores._compat.with_reader`), per
call, without patching Feast's module for anyone else.

Config (`offline_store:` in feature_store.yaml):

    type: feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore
    root: s3://bucket/prefix          # optional: re-roots *relative* FileSource paths
    s3_endpoint_override: http://...  # optional: S3-compatible endpoint (MinIO, moto)

Without `root`, relative `FileSource` paths resolve against the repo path as in Feast.
Absolute paths and URIs (`s3://bucket/key`) are used as given. A `FileSource`'s own
`s3_endpoint_override` wins over the store's.

Limitations: Feast's own `FeatureStore.write_to_offline_store` / `push(to=OFFLINE)` first asks
the `FileSource` for its columns (a `ParquetDataset` over the repo-relative path): that fails on
an empty folder and ignores `root`. The feast-bytewax sink writes through `open_transaction`
and is not affected. Reads load the source into memory (as the dask store's `persist()`
calls do anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytz
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import RepoConfig

from feast_bytewax.ingest.filesystems import filesystem_for_uri, is_uri
from feast_bytewax.stores._compat import with_reader
from feast_bytewax.stores.commits import FolderTransaction, read_committed
from feast_bytewax.stores.compaction import CompactResult, compact
from feast_bytewax.stores.folder_names import new_run_id, writer_id
from feast_bytewax.stores.parquet_parts import (
    PARQUET_SUFFIXES,
    TIMESTAMP_TYPE,
    conform_table,
    list_parts,
    view_arrow_fields,
)

STORE_TYPE = "feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore"


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


def resolve_source_uri(config: RepoConfig, source: FileSource) -> str:
    """The URI or absolute local path the store reads and writes for `source`."""
    uri = source.file_options.uri
    store_cfg = config.offline_store
    root = getattr(store_cfg, "root", None)
    if is_uri(uri) or Path(uri).is_absolute():
        return uri
    if root:
        if is_uri(root):
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
        filesystem, path = filesystem_for_uri(uri, endpoint, source.resolve_credentials())
        return filesystem, path.rstrip("/")
    return filesystem_for_uri(uri)


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
    keys: list[str] | None = None,
    dedup: bool = True,
) -> pd.DataFrame:
    """Every visible row of a FileSource as pandas (integer columns as nullable `Int64`,
    timestamps as `datetime64[ns, UTC]`): the committed parts of a folder, replaced ranges
    hidden, one row per identity (`keys` + the timestamp field; default: the keys the
    writers declared) (`stores.commits`). A single parquet file reads as it is. An empty or
    missing folder gives an empty frame with the columns of `hint` (else the timestamps);
    columns of `hint` that older parts lack (a feature added since) read as nulls."""
    filesystem, path = source_filesystem(config, source)
    parts = list_parts(filesystem, path)
    ts_cols = [c for c in (source.timestamp_field, source.created_timestamp_column) if c]
    table = None
    if parts and parts == [path]:
        table = pads.dataset(parts, filesystem=filesystem, format="parquet").to_table()
    elif parts:
        table = read_committed(filesystem, path, parts, source.timestamp_field, keys, dedup)
    fields = dict(hint or {})
    for col in ts_cols:
        fields.setdefault(col, TIMESTAMP_TYPE)
    if table is None:
        table = pa.schema(list(fields.items())).empty_table()
    for name, dtype in fields.items():
        if name not in table.column_names:
            null_type = dtype if dtype != pa.null() else pa.string()
            table = table.append_column(name, pa.nulls(table.num_rows, null_type))
    return _normalize_frame(table.to_pandas(types_mapper=_NULLABLE_INTS.get), ts_cols)


def _frame_to_dask(df: pd.DataFrame) -> dd.DataFrame:
    rows_per_part = 1_000_000
    return dd.from_pandas(df, npartitions=max(1, -(-len(df) // rows_per_part)), sort=False)


def _reader(
    config: RepoConfig, hints: dict[str, dict[str, pa.DataType]],
    keys: dict[str, list[str]] | None = None,
) -> Callable[[DataSource, Any], dd.DataFrame]:
    keys = keys or {}

    def read_datasource(data_source: DataSource, repo_path: Any = None) -> dd.DataFrame:
        if not isinstance(data_source, FileSource):
            raise TypeError(f"{STORE_TYPE} reads FileSources only, got {type(data_source)}")
        return _frame_to_dask(read_source_frame(config, data_source, hints.get(data_source.name),
                                                keys.get(data_source.name)))

    return read_datasource


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


def _pull(dask_pull: Callable, config: RepoConfig, data_source: DataSource,
          join_key_columns: list[str], feature_name_columns: list[str], *rest: Any) -> RetrievalJob:
    """Feast's dask pull (latest or all) with its folder read swapped for ours."""
    _check_config(config)
    source = _check_source(data_source, "data_source")
    job = dask_pull(config, source, join_key_columns, feature_name_columns, *rest)
    hint = {c: pa.null() for c in join_key_columns + feature_name_columns}
    return with_reader(job, _reader(config, {source.name: hint},
                                    {source.name: list(join_key_columns)}))


def open_transaction(config: RepoConfig, view: FeatureView, writer: str, mode: str,
                     replace: tuple[int, int] | None = None,
                     resume: dict | None = None) -> FolderTransaction:
    """The commit-log writer of `view`'s batch-source folder (see `stores.commits`)."""
    _check_config(config)
    source = _check_source(view.batch_source, f"batch source of {view.name!r}")
    filesystem, folder = source_filesystem(config, source)
    if folder.endswith(PARQUET_SUFFIXES):
        raise ValueError(
            f"{STORE_TYPE} writes part files into a folder; the batch source "
            f"{source.name!r} of {view.name!r} is a file: {source.path!r}"
        )
    kw = {"filesystem": filesystem, "folder": folder, "mode": mode, "replace": replace,
          "keys": tuple(c.name for c in view.entity_columns),
          "ts": source.timestamp_field or "event_timestamp"}
    if resume is not None:
        return FolderTransaction.resume(resume, **kw)
    return FolderTransaction(writer=writer, **kw)


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
        keys: dict[str, list[str]] = {}
        for view in feature_views:
            source = _check_source(view.batch_source, f"batch source of {view.name!r}")
            hints.setdefault(source.name, {}).update(view_arrow_fields(view))
            keys[source.name] = [c.name for c in view.entity_columns]
        job = DaskOfflineStore.get_historical_features(
            config, feature_views, feature_refs, entity_df, registry, project,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp,
            **kwargs,
        )
        return with_reader(job, _reader(config, hints, keys))

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
        return _pull(DaskOfflineStore.pull_latest_from_table_or_query, config, data_source,
                     join_key_columns, feature_name_columns, timestamp_field,
                     created_timestamp_column, start_date, end_date)

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
        return _pull(DaskOfflineStore.pull_all_from_table_or_query, config, data_source,
                     join_key_columns, feature_name_columns, timestamp_field,
                     created_timestamp_column, start_date, end_date)

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Append `table` as one new part file, committed at once (Feast's own `push` and
        `write_to_offline_store` come here; the feast-bytewax sink commits with its
        snapshots instead, `open_transaction`)."""
        if table.num_rows == 0:
            return
        txn = open_transaction(config, feature_view, writer_id(new_run_id(), "0"), "live")
        txn.write(conform_table(table, feature_view))
        txn.finish()
        if progress:
            progress(table.num_rows)


def compact_source(config: RepoConfig, source: FileSource, keys: list[str],
                   grace_s: float = 60.0) -> CompactResult:
    """Compact one batch-source folder (see `stores.compaction`)."""
    _check_config(config)
    filesystem, folder = source_filesystem(config, source)
    return compact(filesystem, folder, list_parts(filesystem, folder),
                   source.timestamp_field or "event_timestamp", keys, grace_s)
