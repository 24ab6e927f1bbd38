"""feast_bytewax.ingest.filesystems: one path/URI -> pyarrow filesystem helper for sources and
stores."""

from __future__ import annotations

import pyarrow.fs as pafs

from feast_bytewax.ingest.filesystems import (
    filesystem_for_uri,
    is_uri,
    s3_endpoint_from_env,
    uri_label,
)


def test_is_uri():
    assert is_uri("s3://bucket/key") and is_uri("file:///tmp/x")
    assert not is_uri("data/events.parquet") and not is_uri("/abs/path")


def test_endpoint_from_env_order():
    env = {"AWS_ENDPOINT_URL": "http://aws", "AWS_ENDPOINT_URL_S3": " ",
           "FEAST_S3_ENDPOINT": ""}
    assert s3_endpoint_from_env(env) == "http://aws"
    env["AWS_ENDPOINT_URL_S3"] = "http://s3"
    assert s3_endpoint_from_env(env) == "http://s3"
    env["FEAST_S3_ENDPOINT"] = "http://feast"
    assert s3_endpoint_from_env(env) == "http://feast"
    assert s3_endpoint_from_env({}) is None


def test_filesystem_for_local_and_s3(tmp_path):
    fs, path = filesystem_for_uri(tmp_path / "x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "x")
    assert uri_label(fs, path) == path
    fs, path = filesystem_for_uri("s3://bucket/pre/fix/", "http://127.0.0.1:9",
                                  {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
                                   "AWS_DEFAULT_REGION": "eu-west-1"})
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/pre/fix/"
    assert fs.region == "eu-west-1"
    assert uri_label(fs, "bucket/k.parquet") == "s3://bucket/k.parquet"
