"""Weighted sum of one pairwise contrastive loss over several modality pairs.

E.g. pairs [["image", "text"], ["audio", "text"]] for an ImageBind/CLAP-like
triple tower. A sample missing a modality (mask False) is left out of every
pair that needs it and still counts in the pairs it has; the pair masks are
combined before the pair loss gathers them, so this holds across processes.

Extra inputs of some pair losses travel in the same dicts, under fixed keys:
  features["neg_text"] [B, K, E], masks["neg_text"] bool [B, K]: hard-negative captions (AlignModel.forward
      embeds batch["neg_text"]); a loss with `takes_negatives` gets them in every pair with text (text as the
      caption side: CLIP is symmetric, so (text, x) is scored as (x, text)).
  features["teacher_<modality>"] [B, Et]: a frozen teacher's embeddings (align.train.teacher); a loss with
      `takes_teacher` gets teacher_a / teacher_b of its pair.
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from align.errors import AlignError, ConfigError
from align.losses.distributed import had_no_rows


NEG_TEXT = "neg_text"              # the batch/feature key of hard negatives (also align.model, align.data.stream)
TEACHER = "teacher_"               # + modality: a teacher's embeddings (align.train.teacher, stored members)


def pair_name(pair: Sequence[str]) -> str:
    return f"{pair[0]}-{pair[1]}"


class MultiPairLoss(nn.Module):
    """pairs: [(modality_a, modality_b), ...]; weights: one float per pair (default 1.0);
    pair_loss: a ClipLoss/SigLipLoss/... module applied to each pair in order
    (the same order on every rank, so collectives line up)."""

    def __init__(self, pairs: Sequence[Sequence[str]], weights: Optional[Sequence[float]] = None,
                 pair_loss: Optional[nn.Module] = None):
        super().__init__()
        pairs = [tuple(p) for p in (pairs or [])]
        if not pairs:
            raise ConfigError("loss.pairs: give at least one pair, e.g. [[image, text]]")
        for p in pairs:
            if len(p) != 2 or not all(isinstance(m, str) and m for m in p) or p[0] == p[1]:
                raise ConfigError(f"loss.pairs: {list(p)!r} is not a pair of two different modality names")
        names = [pair_name(p) for p in pairs]
        if len(set(frozenset(p) for p in pairs)) != len(pairs):
            raise ConfigError(f"loss.pairs: a pair is listed twice in {names}")
        weights = [1.0] * len(pairs) if weights is None else [float(w) for w in weights]
        if len(weights) != len(pairs):
            raise ConfigError(f"loss.weights: {len(weights)} weights for {len(pairs)} pairs {names}")
        if any(not (w >= 0.0 and w < float("inf")) for w in weights):
            raise ConfigError(f"loss.weights: weights must be finite and >= 0, got {weights}")
        if pair_loss is None:
            raise ConfigError("MultiPairLoss needs a pair_loss module")
        self.pairs: Tuple[Tuple[str, str], ...] = tuple(pairs)
        self.weights = tuple(weights)
        self.pair_loss = pair_loss

    def forward(self, features: Mapping[str, torch.Tensor], masks: Optional[Mapping[str, torch.Tensor]],
                logit_scale, logit_bias=None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """features: modality -> [B, D]; masks: modality -> bool [B] (True = present; a
        modality absent from `masks` counts as present everywhere); logit_scale /
        logit_bias: a scalar or a mapping pair name ("image-text") -> scalar.
        Returns (weighted total, {pair name: detached pair loss} for logging; a pair with no row in the global
        batch, which adds 0 to the total, is left out of it)."""
        total, logs = None, {}
        uses_bias = getattr(self.pair_loss, "uses_logit_bias", False)
        for (x, y), w in zip(self.pairs, self.weights):
            name = pair_name((x, y))
            for m in (x, y):
                if m not in features:
                    raise AlignError(f"loss pair {name}: the batch has no {m!r} embeddings "
                                     f"(got {sorted(features)})")
            mask = self._pair_mask(masks, x, y, features[x].shape[0], name)
            scale = _per_pair(logit_scale, name, "logit_scale")
            if uses_bias:
                bias = _per_pair(logit_bias, name, "logit_bias")
                loss = self.pair_loss(features[x], features[y], scale, bias, mask=mask)
            else:  # a bias does not change a softmax loss; it is simply not used
                a, b, extra = self._extras(features, masks, x, y, name)
                loss = self.pair_loss(features[a], features[b], scale, mask=mask, **extra)
            if not had_no_rows(loss):     # a pair without a row in the batch has no loss to log (not a loss of 0)
                logs[name] = loss.detach()
            total = w * loss if total is None else total + w * loss
        if not uses_bias and torch.is_tensor(logit_bias) and logit_bias.requires_grad:
            # a trainable bias the loss ignores gets a zero gradient: DDP waits for one from every parameter, and
            # without it never averaged the step's gradients (and failed the next step)
            total = total + 0.0 * logit_bias.sum()
        return total, logs

    def _extras(self, features, masks, x, y, name):
        """(a, b, extra kwargs) of the pair loss: hard negatives and/or the teacher's embeddings, when it takes them."""
        extra = {}
        if getattr(self.pair_loss, "takes_negatives", False) and NEG_TEXT in features and "text" in (x, y):
            x, y = (y, x) if x == "text" else (x, y)                   # text is the caption side
            extra = {"neg": features[NEG_TEXT], "neg_mask": (masks or {}).get(NEG_TEXT)}
        if getattr(self.pair_loss, "takes_teacher", False):
            missing = [m for m in (x, y) if TEACHER + m not in features]
            if missing:
                raise AlignError(f"loss pair {name}: no teacher embeddings of {missing} (the teacher has "
                                 f"{sorted(k[len(TEACHER):] for k in features if k.startswith(TEACHER))})")
            extra = {"teacher_a": features[TEACHER + x], "teacher_b": features[TEACHER + y]}
        return x, y, extra

    @staticmethod
    def _pair_mask(masks, x, y, n, name):
        if not masks:
            return None
        found = [masks[m] for m in (x, y) if masks.get(m) is not None]
        for m in found:
            if m.dtype != torch.bool or m.shape != (n,):
                raise AlignError(f"loss pair {name}: masks must be bool [{n}], got {m.dtype} {tuple(m.shape)}")
        if not found:
            return None
        return found[0] & found[1] if len(found) == 2 else found[0]


def _per_pair(value, name, what):
    if isinstance(value, Mapping):
        if name not in value:
            raise AlignError(f"{what}: no value for pair {name!r} (got {sorted(value)})")
        return value[name]
    return value
