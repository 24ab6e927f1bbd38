"""Feast store plugins, loaded by class path from feature_store.yaml.

- `feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore`: append-only parquet-folder
  offline store (one part file per write; reads local folders or s3:// prefixes). Its part
  files (naming, listing, atomic writes, schemas) are in `parquet_parts`.
- `feast_bytewax.stores.fast_redis.FastRedisOnlineStore`: Feast's Redis online store with a
  faster write path (Feast's exact keys and bytes, newer-wins checked inside Redis by a Lua
  script); `FastRedisProvider` routes `ingest_df` to its columnar `write_frame`. Its
  protobuf-free encoders are in `redis_encoding`.
- `feast_bytewax.stores.feature_logging.LoggingProvider`: a provider that logs the vectors
  Feast's Python server serves (which Feast itself never does); its buffer and background
  writer are in `feature_log_buffer`.
"""
