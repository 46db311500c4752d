"""loss.distill's frozen teacher: its embeddings of each batch, for align.losses.DistillClipLoss.

    teacher: RUN | EXPORT          an align model (align.load's route: align.bench.models), frozen, run online
    teacher: open_clip:ARCH        open_clip's model with `pretrained: FILE` (a local checkpoint; a tag, which
                                   would download, is refused), frozen, run online
    teacher: stored                no model: the shards carry each sample's teacher embeddings
                                   (align.data.stream.stored_teacher; `align data reinforce` writes them)

Online, the teacher embeds the student's own input tensors under torch.no_grad (eval mode, so no dropout):
it must take the same image size and tokenizer as the student. Stored embeddings have no such constraint
(the teacher used its own transforms when they were written) and cost nothing at train time.
A teacher returns {"teacher_<modality>": [B, Et]} (align.losses.multipair.TEACHER), L2-normalised.
The temperature of the teacher's similarities defaults to its own 1/logit_scale (teacher.json when stored).
"""
import math
import os
from typing import Dict, Optional, Sequence, Tuple

import torch

from align.errors import ConfigError
from align.losses.multipair import TEACHER

STORED = "stored"


class OnlineTeacher:
    """A frozen model run under no_grad on the batch's tensors of `modalities`."""

    def __init__(self, model, modalities: Sequence[str]):
        self.model, self.modalities = model, list(modalities)

    @torch.no_grad()
    def __call__(self, batch: dict) -> Dict[str, torch.Tensor]:
        return {TEACHER + m: getattr(self.model, f"encode_{m}")(batch[m]).float() for m in self.modalities}


class StoredTeacher:
    """The batch's stored teacher embeddings (batch["teacher_<m>"] float [B, Et], read by the loader)."""

    def __init__(self, modalities: Sequence[str]):
        self.modalities = list(modalities)

    def __call__(self, batch: dict) -> Dict[str, torch.Tensor]:
        return {TEACHER + m: batch[TEACHER + m] for m in self.modalities}


def teacher_modalities(pairs) -> list:
    return sorted({m for p in pairs for m in p})


def load_online(spec: str, pretrained: Optional[str], device):
    """The teacher model, frozen, in eval mode on `device` (nothing is downloaded)."""
    from align.bench.models import load_model, split_scheme
    scheme, _ = split_scheme(spec)
    if scheme == "open_clip" and not (pretrained and os.path.isfile(pretrained)):
        raise ConfigError(f"loss.distill.teacher={spec}: give loss.distill.pretrained: a local checkpoint file "
                          f"(got {pretrained!r}; open_clip tags would download)")
    if scheme != "open_clip" and pretrained:
        raise ConfigError(f"loss.distill.pretrained: only for open_clip:ARCH teachers (teacher={spec})")
    model = load_model(spec, pretrained=pretrained, device="cpu").to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_teacher(cfg, pairs, device, shard_dir: Optional[str] = None) -> Tuple[object, float]:
    """loss.distill -> (teacher callable, temperature). shard_dir: the folder of the first training shard,
    where a stored teacher's teacher.json is read."""
    mods = teacher_modalities(pairs)
    if cfg.teacher == STORED:
        from align.data.stream.stored_teacher import META, read_meta
        folder = shard_dir or "."
        meta = read_meta(folder) if cfg.temperature is None or os.path.isfile(os.path.join(folder, META)) else {}
        missing = [m for m in mods if meta.get("modalities") and m not in meta["modalities"]]
        if missing:
            raise ConfigError(f"loss.distill.teacher=stored: the stored teacher has no {missing} embeddings "
                              f"({os.path.join(shard_dir or '', 'teacher.json')})")
        temperature = cfg.temperature or 1.0 / float(meta["logit_scale"])
        return StoredTeacher(mods), temperature
    model = load_online(cfg.teacher, cfg.pretrained, device)
    missing = [m for m in mods if not hasattr(model, f"encode_{m}") or m not in model.modalities]
    if missing:
        raise ConfigError(f"loss.distill.teacher={cfg.teacher}: the teacher has no {missing} tower (it has "
                          f"{', '.join(model.modalities)}); loss.pairs {pairs} need them")
    temperature = cfg.temperature or math.exp(-float(model.logit_scale.detach()))
    return OnlineTeacher(model, mods), temperature
