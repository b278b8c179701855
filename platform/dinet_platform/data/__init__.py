"""Data: synthetic talking faces, preprocessing to Parquet shards, loaders, analysis."""
