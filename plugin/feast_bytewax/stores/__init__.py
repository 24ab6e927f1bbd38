"""Feast store plugins, loaded by class path from feature_store.yaml.

- `feast_bytewax.stores.parquet_folder.ParquetFolderOfflineStore`: append-only parquet-folder
  offline store (one part file per write; reads local folders or s3:// prefixes).
"""
