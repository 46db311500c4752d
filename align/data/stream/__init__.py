"""The training and eval stream.

  sources     shard lists (patterns, folders, lists, weighted mixes) and their reading
  remote      http(s) shards read by the standard library
  decode      raw sample -> decoded modalities; SampleDecoder (decode + transform + collate)
  augment     augmentation stages (image, wave, log-mel), by registered name
  faults      skip reasons and their counts
  loader      StreamLoader: the loader with its exact-resume state; build_train_loader / build_eval_loader
  resume      elastic resume (another world size)
  synthetic   synthetic batches (data.train: synthetic)"""
