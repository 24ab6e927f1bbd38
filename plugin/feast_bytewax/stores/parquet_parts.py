"""Part files of the parquet folder: listing them, and the schema a new part gets.

The storage half of `feast_bytewax.stores.parquet_folder` (which holds the Feast store
class and the reads; naming, atomic writes and commits are `stores.commits`): which files
are data (hidden and ``_``-prefixed ones, temp files and the commit log, are not), and the
columns and types of a batch: the view's Feast types, so types stay stable across parts.
Paths are inside a pyarrow filesystem (`feast_bytewax.ingest.filesystems`).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
from feast.feature_view import FeatureView
from feast.type_map import feast_value_type_to_pa

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


# ----------------------------------------------------------------------------------------
# Part files
# ----------------------------------------------------------------------------------------


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


def conform_table(table: pa.Table, *views: FeatureView) -> pa.Table:
    """Cast a batch to the Feast types of the views writing it (every view on its batch
    source; timestamps as `timestamp[us, UTC]`). Columns no view knows are kept as they are;
    a view's column missing from the batch is an error. Readers match columns by name."""
    wanted: dict[str, pa.DataType] = {}
    for view in views:
        fields = view_arrow_fields(view)
        missing = sorted(set(fields) - set(table.column_names))
        if missing:
            raise ValueError(
                f"feature view {view.name!r}: batch lacks columns {missing}; "
                f"got {table.column_names}"
            )
        wanted.update(fields)
    target = pa.schema(
        [pa.field(f.name, _target_type(f.type, wanted.get(f.name))) for f in table.schema],
        metadata=table.schema.metadata,
    )
    return table if table.schema == target else table.cast(target)
