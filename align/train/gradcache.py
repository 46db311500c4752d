"""GradCache: gradient accumulation that keeps every accumulated sample a negative.

Plain accumulation over k micro-batches of b samples trains with b-1
negatives. GradCache (Gao et al., 2021) gets the k*b-sample contrastive
loss and its exact gradients with the activation memory of one micro-batch:

  pass 1  encode each micro-batch without grad (recording its RNG state),
          concatenate the embeddings;
  loss    compute the loss on the whole accumulated batch against detached
          copies of the embeddings and backprop it: this gives d loss / d emb
          (plus gradients of any parameter the loss uses directly);
  pass 2  re-encode each micro-batch with grad, replaying its RNG state so
          dropout/augmentation masks match pass 1, and backprop the cached
          embedding gradients: torch.autograd.backward(emb, grad_emb).

By the chain rule the parameter gradients equal one backward through the
full batch (exactly, up to float rounding, for deterministic encoders).

Shared scalars. `encode` may return 0-dim tensors next to the embeddings
(e.g. "logit_scale": model.logit_scale.exp(), "logit_bias"). They are not
concatenated; `loss_fn` sees the first micro-batch's value, and their
gradient is sent back through the *last* micro-batch's pass 2.

Accelerate / DDP. Pass `no_sync=lambda: accelerator.no_sync(model)` (or
`model.no_sync` for a bare DDP model): micro-batches 1..k-1 run pass 2 inside
it and the last one outside, so DDP all-reduces (averages) the accumulated
gradients once. Because DDP only reduces gradients produced by backward
passes through its own forward, every parameter must receive its gradient
in pass 2: return logit_scale/logit_bias from `encode` (as above) rather
than reading the parameters inside `loss_fn`. Call this once per optimizer
step, not inside `accelerator.accumulate`; wrap it in `accelerator.autocast()`
if you use mixed precision, and pass `loss_backward=accelerator.backward` so
fp16 loss scaling applies (the scaled embedding gradients then scale the
parameter gradients consistently). BatchNorm statistics are updated in both
passes (modules in train mode see each micro-batch twice).
"""
import contextlib
from typing import Callable, ContextManager, Dict, List, Mapping, Optional

import torch

from align.errors import AlignError

Features = Dict[str, torch.Tensor]


class _RngState:
    """CPU (+ initialised CUDA) RNG state, replayable without disturbing the global stream."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = (torch.cuda.get_rng_state_all()
                     if torch.cuda.is_available() and torch.cuda.is_initialized() else None)

    @contextlib.contextmanager
    def replay(self):
        devices = list(range(len(self.cuda))) if self.cuda else []
        with torch.random.fork_rng(devices=devices):  # restores the current state afterwards
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def _check_outputs(out, i: int, keys) -> Features:
    if not isinstance(out, Mapping) or not all(torch.is_tensor(v) for v in out.values()):
        raise AlignError(f"gradcache: encode(micro_batches[{i}]) must return a dict of tensors, "
                         f"got {type(out).__name__}")
    if keys is not None and set(out) != set(keys):
        raise AlignError(f"gradcache: micro_batches[{i}] encoded to keys {sorted(out)} but "
                         f"micro_batches[0] to {sorted(keys)}; every micro-batch must give the same keys")
    return dict(out)


def _batch_size(out: Features, i: int) -> int:
    sizes = {k: v.shape[0] for k, v in out.items() if v.dim() > 0}
    if not sizes:
        raise AlignError(f"gradcache: encode(micro_batches[{i}]) returned no per-sample [b, ...] tensor")
    if len(set(sizes.values())) != 1:
        raise AlignError(f"gradcache: micro_batches[{i}] embeddings disagree on batch size: {sizes}")
    return next(iter(sizes.values()))


def _concat_masks(micro_batches, masks_key, sizes, device) -> Optional[Dict[str, torch.Tensor]]:
    """Per-modality bool masks concatenated over micro-batches; a micro-batch that has
    no mask for a modality counts it as present everywhere."""
    per_mb = [mb.get(masks_key) if isinstance(mb, Mapping) else None for mb in micro_batches]
    keys = sorted({k for m in per_mb if m for k in m})
    if not keys:
        return None
    out = {}
    for k in keys:
        parts = []
        for i, (m, n) in enumerate(zip(per_mb, sizes)):
            t = m.get(k) if m else None
            if t is None:
                t = torch.ones(n, dtype=torch.bool, device=device)
            elif t.dtype != torch.bool or t.dim() == 0 or t.shape[0] != n:    # [b] or [b, K] (hard negatives)
                raise AlignError(f"gradcache: micro_batches[{i}][{masks_key!r}][{k!r}] must be bool [{n}, ...], "
                                 f"got {t.dtype} {tuple(t.shape)}")
            parts.append(t.to(device))
        out[k] = torch.cat(parts)
    return out


def gradcache_step(encode: Callable[[dict], Mapping[str, torch.Tensor]], micro_batches: List[dict],
                   loss_fn: Callable[[Features, Optional[Dict[str, torch.Tensor]]], torch.Tensor],
                   masks_key: str = "masks", no_sync: Optional[Callable[[], ContextManager]] = None,
                   loss_backward: Optional[Callable[[torch.Tensor], Optional[bool]]] = None) -> torch.Tensor:
    """One accumulated step: leaves the full-batch gradients in the parameters' .grad.

    encode: micro-batch -> {name: [b, ...] embedding, or 0-dim shared scalar}.
    micro_batches: the k micro-batches; micro_batches[i][masks_key] (optional) is
        {modality: bool [b]} and is concatenated for loss_fn.
    loss_fn: (features over all k*b samples, masks or None) -> 0-dim loss.
    no_sync: context-manager factory used for pass 2 of all but the last micro-batch.
    loss_backward: how to backprop the loss (default loss.backward(); e.g. accelerator.backward). It may decline:
        returning False (align.train.step.backward_if_finite: a NaN/Inf loss) skips pass 2, and nothing has a gradient.
    Returns the detached loss. Does not zero or step anything.
    """
    if not micro_batches:
        raise AlignError("gradcache: no micro-batches to encode")
    # pass 1: embeddings without activations
    rng, outs, keys = [], [], None
    for i, mb in enumerate(micro_batches):
        rng.append(_RngState())
        with torch.no_grad():
            out = _check_outputs(encode(mb), i, keys)
        keys = keys or list(out)
        outs.append(out)
    sizes = [_batch_size(o, i) for i, o in enumerate(outs)]
    cached: Features = {}
    for k in keys:
        if outs[0][k].dim() == 0:
            v = outs[0][k]
        else:
            try:
                v = torch.cat([o[k] for o in outs], 0)                 # [sum b, ...]
            except RuntimeError as e:
                raise AlignError(f"gradcache: cannot concatenate {k!r} over micro-batches: {e}") from None
        cached[k] = v.detach().requires_grad_(v.is_floating_point())
    device = next(v for v in cached.values() if v.dim() > 0).device
    masks = _concat_masks(micro_batches, masks_key, sizes, device)

    # loss on the whole accumulated batch; gradients land on the cached copies
    loss = loss_fn(cached, masks)
    if not torch.is_tensor(loss) or loss.dim() != 0 or not loss.requires_grad:
        raise AlignError("gradcache: loss_fn must return a 0-dim tensor that depends on the embeddings")
    if (loss_backward or (lambda t: t.backward()))(loss) is False:
        # No backward: pass 2 would re-encode for no gradient, and its last forward (outside no_sync) would leave DDP
        # waiting for a backward that never comes; the next step's first backward (inside no_sync) then fed that
        # stale iteration and its next forward failed ("Expected to have finished reduction in the prior iteration").
        return loss.detach()
    grads = {k: v.grad for k, v in cached.items() if v.requires_grad and v.grad is not None}
    split = {k: (g.split(sizes, 0) if g.dim() > 0 else None) for k, g in grads.items()}

    # pass 2: re-encode with grad (same RNG), push the cached gradients through
    last = len(micro_batches) - 1
    for i, mb in enumerate(micro_batches):
        ctx = no_sync() if (no_sync is not None and i < last) else contextlib.nullcontext()
        with ctx:
            with rng[i].replay():
                out = _check_outputs(encode(mb), i, keys)
            tensors, grad_tensors = [], []
            for k, g in grads.items():
                t = out[k]
                if not t.requires_grad:
                    continue
                if t.dim() == 0:
                    if i == last:
                        tensors.append(t)
                        grad_tensors.append(g)
                else:
                    tensors.append(t)
                    grad_tensors.append(split[k][i])
            if tensors:
                torch.autograd.backward(tensors, grad_tensors)
    return loss.detach()
