"""Shard writing (`align data shards`): user inputs (CSV/Parquet/JSONL/folders/HF), media re-encoding,
the shard writer job, and CLIP_benchmark-layout eval sets."""
