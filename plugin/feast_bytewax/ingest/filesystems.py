"""pyarrow filesystems for local paths and URIs (``s3://bucket/key``), one helper for all.

The event sources (`feast_bytewax.ingest.files`) and the parquet-folder offline store
(`feast_bytewax.stores.parquet_folder`) both turn a path or URI into ``(filesystem, path
inside it)`` here, so local folders and S3 prefixes go through the same reading code.

S3 uses pyarrow's own client (no s3fs, no boto3); credentials and region come from the
standard AWS chain (environment variables, profile, instance role) unless given. An
S3-compatible endpoint (MinIO, moto, Ceph) is passed as ``endpoint_override``; callers that
have no configured endpoint take it from the environment with `s3_endpoint_from_env`.
Importing this module does not import Feast.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow.fs as pafs

__all__ = [
    "ENDPOINT_ENV_VARS",
    "filesystem_for_uri",
    "is_uri",
    "s3_endpoint_from_env",
    "uri_label",
]

S3_SCHEME = "s3://"
# Looked up in this order: the project's own variable (also what feature_store.yaml files
# expand as ${FEAST_S3_ENDPOINT}), then the AWS SDKs' standard ones.
ENDPOINT_ENV_VARS = ("FEAST_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``s3://bucket/key``), False for a local path."""
    return "://" in os.fspath(path)


def s3_endpoint_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The first non-empty of `ENDPOINT_ENV_VARS`, else None (AWS itself)."""
    env = os.environ if environ is None else environ
    for name in ENDPOINT_ENV_VARS:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


def filesystem_for_uri(
    uri: str | os.PathLike,
    endpoint_override: str | None = None,
    credentials: Mapping[str, str] | None = None,
) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` for a local path or a URI.

    - ``s3://bucket/key``: an `S3FileSystem` (``endpoint_override`` if given; explicit
      ``credentials`` as Feast's ``connection_ref`` resolves them: ``AWS_ACCESS_KEY_ID`` +
      ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``), path
      ``bucket/key``.
    - another ``scheme://``: `pyarrow.fs.FileSystem.from_uri`.
    - anything else: the local filesystem and the path as given.
    """
    text = os.fspath(uri)
    if text.startswith(S3_SCHEME):
        kwargs: dict[str, str] = {}
        if endpoint_override:
            kwargs["endpoint_override"] = endpoint_override
        creds = credentials or {}
        access_key = creds.get("AWS_ACCESS_KEY_ID", "")
        secret_key = creds.get("AWS_SECRET_ACCESS_KEY", "")
        if access_key and secret_key:
            kwargs["access_key"] = access_key
            kwargs["secret_key"] = secret_key
        if creds.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = creds["AWS_SESSION_TOKEN"]
        if creds.get("AWS_DEFAULT_REGION"):
            kwargs["region"] = creds["AWS_DEFAULT_REGION"]
        return pafs.S3FileSystem(**kwargs), text[len(S3_SCHEME):]
    if is_uri(text):
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text))


def uri_label(filesystem: pafs.FileSystem, path: str) -> str:
    """How to show a file to a person: ``s3://bucket/key`` on S3, the path elsewhere."""
    if filesystem.type_name == "s3":
        return S3_SCHEME + path
    if filesystem.type_name in ("local", "py::fsspec+file"):
        return path
    return f"{filesystem.type_name}://{path}"
