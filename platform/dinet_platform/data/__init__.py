"""Data: preparing videos into Parquet shards (Ray Data), loading them for training, analysis."""
