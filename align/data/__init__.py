"""Data, split by purpose (imports data/ -> media, wds, base only; never model, train or bench):

  stream/   what training and eval read: sources (shard lists), remote, decode, augment, faults, loader,
            resume (elastic), synthetic
  write/    `align data shards`: inputs (users' tables, folders, HF datasets), media (re-encoding),
            shards (the writing job), eval_sets (CLIP_benchmark layout)
  tools/    `align data inspect` (inspect), `align data stats` (stats)

Media primitives live in align.media, the shard format in align.wds."""
