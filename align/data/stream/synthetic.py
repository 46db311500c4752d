"""Synthetic training inputs (`data.train: synthetic`), as open_clip's `--dataset-type synthetic`."""
from typing import Optional

import torch

from align.data.stream.keys import mask_key


class SyntheticLoader:
    """Synthetic inputs at the towers' sizes (open_clip's --dataset-type synthetic), deterministic per step.

    Images and audio are random; text is `caption` through the text tower's tokenizer, as open_clip's
    synthetic set tokenizes "Dummy caption" (so both train on the same text, padding included).
    Batch b of epoch e on rank r is drawn from a generator seeded with (seed, rank, e, b), so the
    stream is exactly resumable from `state_dict()`.
    """

    def __init__(self, model, batch_size: int, seed: int = 0, rank: int = 0, samples_per_epoch: int = 10000,
                 resume_state: Optional[dict] = None, caption: Optional[str] = "Dummy caption"):
        self.model, self.batch_size, self.seed, self.rank = model, batch_size, seed, rank
        self.batches_per_epoch = max(1, samples_per_epoch // batch_size)
        self.epoch = (resume_state or {}).get("epoch", 0)
        self.start = (resume_state or {}).get("batches", 0)
        self.yielded = self.start
        self.skipped, self.noted, self.seen = {}, {}, 0
        # One fixed input per tower, permuted per batch: cheap to produce, like open_clip's synthetic set.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.pool = {m: t.dummy_input(batch_size * 4) for m, t in model.towers.items()}
        if caption is not None and "text" in model.towers:
            self.pool["text"] = model.towers["text"].tokenize([caption]).expand(batch_size * 4, -1).clone()
        # The pool lives where the model does: on a GPU, gathering a [B, 3, 224, 224] float batch on the host
        # and copying it over took 30 ms a step at batch 256, serially (half the step; RESULTS, GPU check).
        self.device = next(model.parameters()).device
        self.pool = {m: x.to(self.device) for m, x in self.pool.items()}

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.yielded, "batch_size": self.batch_size}

    def __iter__(self):
        self.yielded = self.start
        for b in range(self.start, self.batches_per_epoch):
            g = torch.Generator().manual_seed(hash((self.seed, self.rank, self.epoch, b)) & 0x7FFFFFFF)
            idx = torch.randperm(self.batch_size * 4, generator=g)[: self.batch_size].to(self.device)
            batch = {m: x[idx] for m, x in self.pool.items()}        # on the model's device; masks on the host
            batch.update({mask_key(m): torch.ones(self.batch_size, dtype=torch.bool) for m in self.pool})
            self.yielded = b + 1
            self.seen += self.batch_size
            yield batch
        # at its natural end the loader moves to the next epoch, as StreamLoader does
        self.epoch, self.start, self.yielded = self.epoch + 1, 0, 0
