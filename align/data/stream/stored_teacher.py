"""Stored teacher embeddings ("reinforced" shards): per-sample members read for loss.distill.teacher=stored.

A reinforced shard is a copy of a shard whose samples each carry, beside their media, one
`teacher_<modality>.npy` member per teacher modality: a float16/float32 [Et] vector, the frozen teacher's
L2-normalised embedding of that sample's (first) caption or un-augmented image (`align data reinforce` writes
them, align.data.write.reinforce). `teacher.json` beside the shards records the teacher and its logit scale.
Training then reads the teacher's embeddings with the sample and never runs the teacher.

    read_teacher(raw, modalities)      -> {"teacher_image": float [Et], ...}; SkipSample when one is missing
    collate_teacher(samples, batch, m) -> batch["teacher_image"] float [B, Et], ...
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

from align.data.stream.faults import SkipSample
from align.errors import DataError

PREFIX = "teacher_"           # batch key teacher_<modality> (align.losses.multipair.TEACHER)
META = "teacher.json"         # beside the shards: {"teacher", "logit_scale", "modalities", "embed_dim"}
NO_TEACHER = "no stored teacher embedding"


def member(modality: str) -> str:
    return f"{PREFIX}{modality}.npy"


def read_teacher(raw: dict, modalities) -> dict:
    """The sample's stored teacher embeddings {teacher_<m>: float32 [Et]}; SkipSample (counted) when absent."""
    out = {}
    for m in modalities:
        data = raw.get(member(m))
        if data is None:
            raise SkipSample(NO_TEACHER, f"no {member(m)} member (loss.distill.teacher=stored)")
        try:
            v = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exn:
            raise SkipSample(NO_TEACHER, f"{member(m)}: {exn!r}") from None
        if v.ndim != 1 or not np.isfinite(v).all():
            raise SkipSample(NO_TEACHER, f"{member(m)}: expected a finite [Et] vector, got shape {v.shape}")
        out[PREFIX + m] = torch.from_numpy(v.astype(np.float32))
    return out


def collate_teacher(samples: list[dict], batch: dict, modalities) -> None:
    for m in modalities:
        vs = [s[PREFIX + m] for s in samples]
        if len({tuple(v.shape) for v in vs}) != 1:
            raise DataError(f"{member(m)}: teacher embeddings of different widths in one batch "
                            f"({sorted({tuple(v.shape) for v in vs})}); one teacher per dataset")
        batch[PREFIX + m] = torch.stack(vs)


def read_meta(folder: str) -> dict:
    """teacher.json of a reinforced dataset folder; DataError (one line) when it is not there."""
    path = os.path.join(folder, META)
    if not os.path.isfile(path):
        raise DataError(f"{path}: not found; loss.distill.teacher=stored needs shards written by align data "
                        "reinforce (or set loss.distill.temperature and give the members yourself)")
    with open(path) as f:
        return json.load(f)
