"""Shard writing (`align data shards`, and a CSV or folder of pairs named in data.train).

  inputs      users' inputs (CSV/TSV/JSONL/Parquet, folders of pairs, HF datasets) as `Input`s, column
              detection
  input_base  what every input is: Input (rows in order, re-openable), Row, hash_file
  table_input a CSV/TSV/JSONL/Parquet input, read in chunks of rows (never held whole)
  values      raw-value readers: a row's media -> bytes, captions, label; SkipRow when a row cannot be used
  media       re-encoding one row's media: images -> jpg/webp/png, audio -> mono FLAC
  shards      the shard-writing job (workers, resume, stats.json, skipped.jsonl), one job per --out (its lock)
  sample      the job's settings (Job) and one input row encoded as one sample's tar members (encode_row)
  jobdir      the job's --out folder: a resume of the same job, refused when foreign, overwrite of its own files
  eval_sets   CLIP_benchmark-layout eval sets: class names, group splits
  cached      a table or folder of pairs named in data.train, written once as shards into a cache by content
  reinforce   `align data reinforce`: a copy of shards with a frozen teacher's per-sample embeddings"""
