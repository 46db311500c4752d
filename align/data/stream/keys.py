"""Named control keys of the batches and items a StreamLoader's workers send (one owner for each string).

A batch dict holds the model inputs {modality: Tensor[B, ...], mask_key(modality): BoolTensor[B],
"cls": LongTensor[B], KEY: list[str]} plus the bookkeeping below, which StreamLoader consumes in the
training process (align.data.stream.loader) before it hands the batch out.
"""

KEY = "__key__"            # list[str]: the samples' keys (a webdataset field, kept in the batch)
URL = "__url__"            # str: the shard a raw sample came from (a webdataset field)
DRAW = "__draw__"          # str (data.resampled): "RANK.WORKER/k", the stream and the draw of its shard sequence a
                           # raw sample came from; each reading of a sample is another visit, with its own seeds
WORKER = "__worker__"      # int: the logical worker that built the item
EPOCH = "__epoch__"        # int: the epoch the item belongs to (a worker goes on from one epoch into the next)
IDLE = "__idle__"          # True: a worker's answer while the training process has enough of the next epoch (no data)
RAW = "__raw__"            # int: raw samples that worker has read from its (current) stream so far
PASS = "__pass__"          # int: the pass over its shards that stream is in (data.samples_per_epoch: epochs go on
                           # through the shards, align.data.stream.worker; otherwise the epoch)
SEEN = "__seen__"          # int: raw samples read (+ unreadable shards) since the worker's last item
SKIPPED = "__skipped__"    # dict reason -> count: samples/shards skipped since the worker's last item
NOTED = "__noted__"        # dict event -> count: noted, not skipped (captions cut, ...) since the worker's last item
SEG = "__seg__"            # (segment index, pass, raw, taken): elastic position of the item's last sample
FLUSH = "__flush__"        # True: the worker's last item (no batch; carries its final counts)
ERROR = "__error__"        # str: a DataError raised in the worker, re-raised as one line by the loader
UNAVAILABLE = "__unavailable__"   # bool: that error was SourceUnavailable (its type does not cross processes)
PACKED = "__packed__"      # (uint8 buffer, layout): the batch's tensors packed for the trip from a worker
AUG = "__aug__"            # int (per decoded sample): the seed of its augmentation stages
SEED = "__seed__"          # int (per decoded sample): the seed of its towers' own random transforms
PENDING = "__pending__"    # list[str] (a batch built with features_in_step): modalities whose batched transform
                           # step is left to the training step (align.data.stream.features), with the samples'
                           # SEED and AUG seeds as lists under those keys


def mask_key(modality: str) -> str:
    """The key of batch[modality]'s presence mask, BoolTensor[B] (False: zeros filled in)."""
    return f"{modality}_mask"
