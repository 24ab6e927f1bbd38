"""Part files of the append-only parquet folder: listing, naming, atomic writes, schemas.

The storage half of `feast_bytewax.stores.parquet_folder` (which holds the Feast store
class and the reads): where part files are, what they are called
(`part-<20-digit unix ns>-<uuid8>.parquet`, sorting in write order), how one is written
(under a hidden temp name then renamed on a local disk; a plain PUT on object storage), and
which schema a new part gets (the existing parts' schema, else the view's Feast types).
Paths are inside a pyarrow filesystem (`feast_bytewax.ingest.filesystems`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from feast.feature_view import FeatureView
from feast.type_map import feast_value_type_to_pa

__all__ = [
    "PARQUET_SUFFIXES",
    "PART_PREFIX",
    "PART_SUFFIX",
    "SCHEMAS",
    "TIMESTAMP_TYPE",
    "conform_table",
    "list_parts",
    "new_part_name",
    "view_arrow_fields",
    "write_part",
]

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


def new_part_name(now_ns: int | None = None) -> str:
    """`part-<20-digit unix ns>-<uuid8>.parquet`: unique, and sorts in write order."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    return f"{PART_PREFIX}{now_ns:020d}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"


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
