"""One optimizer step: embed -> contrastive loss -> NaN guard -> backward -> clip -> optimizer and schedule ->
clamp the temperature, in one function for every kind of step:

  plain        train.accum_steps: 1. Forward and loss under autocast, then backward.
  accumulated  train.accum_steps: k. Always GradCache (align.train.gradcache): the loss of the whole k*b batch,
               every sample a negative of every other, with its exact gradient computed one micro-batch at a
               time (plain gradient accumulation would drop the other micro-batches from the negatives).

The loss is backpropagated in one place for both, `backward_if_finite` (GradCache calls it as its
loss_backward): a NaN/Inf loss is never backpropagated, its step updates nothing and is not counted as a
step (align.train.state).
"""
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, List

import torch
import torch.distributed as dist

from align.data.stream.keys import mask_key
from align.errors import AlignError
from align.losses.multipair import NEG_TEXT
from align.train.guard import HUNG_EXIT

MASKS = "masks"        # the micro-batch key gradcache_step concatenates: {modality: bool [b]}


class Objective:
    """The recipe's contrastive loss as a function of the features; keeps the unweighted per-pair losses of
    its last call for the log. Built once per run (align.train.setup)."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn
        self.pair_losses: Dict[str, torch.Tensor] = {}

    def __call__(self, feats: Dict[str, torch.Tensor], mask) -> torch.Tensor:
        # feats: {modality: [B, E] embeddings, "logit_scale": 0-dim (exp applied), "logit_bias": 0-dim}
        total, parts = self.loss_fn(feats, mask or None, feats["logit_scale"], feats.get("logit_bias"))
        self.pair_losses = dict(parts)          # {pair name: detached loss}, e.g. "image-text"
        return total


@dataclass
class StepResult:
    loss: torch.Tensor                  # detached 0-dim
    stepped: bool                       # False: the loss was NaN/Inf, nothing was updated
    pair_losses: Dict[str, torch.Tensor] = field(default_factory=dict)


def is_finite(loss: torch.Tensor) -> bool:
    """Whether the step's loss is finite on every rank (one read of it). A rank's loss may be its own rows' share
    of the batch's (SigLIP: align.losses.distributed), finite while another rank's is NaN; the batch's loss, their
    mean, is NaN then, and a rank that ran the backward alone would wait in its collectives for the others."""
    ok = torch.isfinite(loss.detach()).all()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        ok = ok.to(torch.int32).reshape(1)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def backward_if_finite(acc, loss: torch.Tensor) -> bool:
    """The one backward of a step (Accelerate's, so fp16 loss scaling applies), skipped for a NaN/Inf loss.
    -> whether the loss was finite."""
    finite = is_finite(loss)
    if finite:
        acc.backward(loss)
    return finite


def all_true_on_host(m: torch.Tensor) -> bool:
    """True for a host (CPU) bool tensor with every entry True; a device tensor is not read (no sync)."""
    return m.device.type == "cpu" and bool(m.all())


def batch_masks(batch: dict, modalities) -> Dict[str, torch.Tensor]:
    """{modality: bool [b]} for the modalities the batch marks as partly missing, and {"neg_text": bool [b, K]}
    when the batch carries hard negatives (loss.hard_negatives)."""
    out = {m: batch[mask_key(m)] for m in modalities if mask_key(m) in batch}
    if NEG_TEXT in batch:
        out[NEG_TEXT] = batch[mask_key(NEG_TEXT)]
    return out


def embedder(eng):
    """batch -> features: the model's embeddings (hard negatives included), plus the frozen teacher's
    {"teacher_<m>": [b, Et]} under loss.distill (constants: GradCache passes no gradient to them)."""
    if getattr(eng, "teacher", None) is None:
        return eng.model
    return lambda b: {**eng.model(b), **eng.teacher(b)}


def train_step(eng, micro: List[dict], grad_clip: float = 0.0) -> StepResult:
    """One optimizer step over `micro` (train.accum_steps micro-batches of the per-rank batch).

    eng: the run's engine (align.train.setup.Engine): acc, model, core, objective, optimizer, scheduler.
    Leaves the gradients zeroed; the caller counts the step (TrainState.record_step). A CUDA out-of-memory
    error becomes one line saying which settings lower the step's memory (out_of_memory).
    """
    try:
        return _step(eng, micro, grad_clip)
    except torch.cuda.OutOfMemoryError:
        sizes = [max((len(b[m]) for m in eng.core.modalities if torch.is_tensor(b.get(m))), default=0) for b in micro]
        raise out_of_memory(eng.acc.device, sizes) from None
    except RuntimeError as e:      # torch.distributed's errors are RuntimeErrors (DistBackendError, gloo's)
        if eng.world > 1 and peer_lost(e):
            raise PeerLost(f"rank {eng.rank}: another process of the launch is gone (a collective failed: "
                           f"{(str(e).strip().splitlines() or [''])[0][:160]}); the launch ends, and resume=auto "
                           "continues from the last checkpoint") from None
        raise


# What the backends say when the process at the other end of a collective died (SIGKILL, OOM killer, a node
# lost): gloo's socket errors, NCCL's aborted communicator. Any other RuntimeError is raised as it is.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "remote process exited or there was a network error")


def peer_lost(e: BaseException) -> bool:
    import torch.distributed as dist
    network = getattr(dist, "DistNetworkError", ())
    return (bool(network) and isinstance(e, network)) or any(p in str(e) for p in _PEER_GONE)


class PeerLost(AlignError):
    """A collective failed because a peer process died: one line, and the exit status of a hung peer (the same
    remedy: the launcher ends the rest; resume=auto continues)."""
    exit_code = HUNG_EXIT


def out_of_memory(device, micro_sizes: List[int]) -> AlignError:
    """The line for a step that ran out of device memory: where it stood, then the recipe keys that lower it."""
    where = f"{device}"
    if getattr(device, "type", None) == "cuda":
        peak, total = torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory
        where += f" ({peak / 2 ** 30:.1f} GiB allocated at the peak, of {total / 2 ** 30:.1f} GiB)"
    b, k = (micro_sizes[0] if micro_sizes else 0), len(micro_sizes)
    return AlignError(
        f"train: out of memory on {where} in a step of {k} micro-batch(es) of {b} samples per process; lower "
        f"train.batch_size and raise train.accum_steps to keep the global batch (GradCache keeps every sample a "
        f"negative), or set train.grad_checkpointing true, loss.type chunked_clip / chunked_siglip (no B x B "
        f"matrix), train.precision bf16, train.sharding fsdp (several GPUs)")


def _step(eng, micro: List[dict], grad_clip: float) -> StepResult:
    acc, model = eng.acc, eng.model
    # masks that are all True on the host say nothing (a modality absent from the masks counts as present):
    # decided before the move and dropped, so the loss never reads them back from the device (a sync mid-step)
    said = [{k for k, m in batch_masks(b, eng.core.modalities).items() if not all_true_on_host(m)} for b in micro]
    # non_blocking: from pinned batches (a CUDA run's loader) the copy is queued on the stream before the step's
    # kernels, which read it in order; from pageable memory it is a plain copy
    micro = [{k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
             for b in micro]
    if eng.features is not None:       # the audio clips' log-mel, computed here on the device (data.stream.features)
        micro = [eng.features(b) for b in micro]
    masks = [{k: m for k, m in batch_masks(b, eng.core.modalities).items() if k in ks} for b, ks in zip(micro, said)]
    embed = embedder(eng)
    if len(micro) == 1:
        with acc.autocast():
            loss = eng.objective(embed(micro[0]), masks[0])
        finite = backward_if_finite(acc, loss)   # the step's one read of the loss
    else:
        from align.train.gradcache import gradcache_step
        for b, m in zip(micro, masks):
            b[MASKS] = m
        decided = []                   # the guard's verdict, kept: asking again is one more all-reduce and read

        def backward(t: torch.Tensor) -> bool:
            decided.append(backward_if_finite(acc, t))
            return decided[-1]
        with acc.autocast():
            loss = gradcache_step(embed, micro, eng.objective, masks_key=MASKS, no_sync=partial(acc.no_sync, model),
                                  loss_backward=backward)
        finite = decided[-1]
    if not finite:
        eng.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss.detach(), False)
    if grad_clip:
        acc.clip_grad_norm_(model.parameters(), grad_clip)
    eng.optimizer.step()
    eng.scheduler.step()
    eng.optimizer.zero_grad(set_to_none=True)
    eng.core.clamp_logit_scale()
    return StepResult(loss.detach(), True, dict(eng.objective.pair_losses))
