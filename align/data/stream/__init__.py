"""The training and eval stream.

  sources     shard lists (patterns, folders, lists, weighted mixes) and their reading
  remote      http(s) shards read by the standard library
  decode      raw sample -> decoded modalities; SampleDecoder (decode + transform + collate)
  features    the batched half of the audio front end (log-mel) and the log-mel augmentation, in collate or,
              for a training stream, in the training step on its device (StepFeatures)
  augment     augmentation stages by registered name: the chains, the image and text stages
  augment_audio  the audio stages (wave and log-mel)
  augment_stage  the stage base: STAGES registry, register, per-sample seeds, Stage
  faults      skip reasons and their counts
  keys        the batch control keys (`__worker__`, `__seen__`, ...) as named constants
  worker      the one per-worker decode loop that ordinary epochs and elastic segments share, going on from
              epoch to epoch behind the training process's gate
  loader      StreamLoader: the loader with its exact-resume state
  build       build_train_loader / build_eval_loader: the data.* settings checked, the loader built
  receive     the training process's side: batches taken off torch's queue on a thread, held until their turn
  pack        packing a batch's tensors for the trip from worker to trainer
  resume      elastic resume (another world size) from any checkpoint
  val_split   data.val_split: unseen groups carved out of the training shards as the val set
  stored_teacher  loss.distill.teacher=stored: the teacher_<modality>.npy members of reinforced shards
  synthetic   synthetic batches (data.train: synthetic)"""
