"""AlignModel: a dict of named towers plus temperature (and bias for SigLIP).

    model = AlignModel({"image": ..., "text": ..., "audio": ...})
    out = model({"image": x_img, "text": tokens})   # {"image": [B,E], "text": [B,E]}, L2-normalised

A third modality is one more entry. The model also carries what a user of
`open_clip.create_model_and_transforms` expects: `encode_image`,
`encode_text`, `encode_audio`, `tokenize`, `image_transform`, `audio_transform`.
"""
import hashlib
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from align.errors import AlignError, ConfigError
from align.media.image import UprightThen
from align.text import refuse_surrogates
from align.towers import build_tower
from align.towers.base import CachedTokenize, Tower
from align.wds.format import MODALITIES

NEG_TEXT = "neg_text"    # batch key of hard-negative captions (align.data.stream.decode; align.losses.multipair)


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of a module's weights: sha256 over the sorted state_dict's names and raw bytes, 16 hex digits.
    The one fingerprint of align (AlignModel, bench's OpenClipModel, any model the benchmarks score):
    embedding caches and result files key on it."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class AlignModel(nn.Module):
    def __init__(self, towers: Dict[str, Tower], init_logit_scale: float = math.log(1 / 0.07),
                 max_logit_scale: float = 100.0, init_logit_bias: Optional[float] = None):
        super().__init__()
        self.towers = nn.ModuleDict(towers)
        # logit_scale is stored as log(1/T) and clamped to [0, log(100)] after each step (CLIP).
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.max_logit_scale = float(max_logit_scale)
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))
        self.name = "align"
        self.config: dict = {}

    @property
    def modalities(self) -> List[str]:
        return list(self.towers.keys())

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Embeds every modality of `batch` this model has a tower for: {m: [B, E] normalised}.

        Also returns "logit_scale" (exp'ed, 0-dim) and "logit_bias" (SigLIP) so the temperature goes
        through forward: DDP then averages its gradient and GradCache replays it like the towers.
        """
        out = {m: F.normalize(tower(batch[m]), dim=-1) for m, tower in self.towers.items() if m in batch}
        if NEG_TEXT in batch and "text" in self.towers:
            # hard-negative captions long [B, K, L] -> [B, K, E], through the text tower in this forward (so DDP
            # and GradCache see them like the captions); padded slots are embedded too, the loss masks them
            neg = batch[NEG_TEXT]
            z = self.towers["text"](neg.reshape(-1, neg.shape[-1]))
            out[NEG_TEXT] = F.normalize(z, dim=-1).reshape(neg.shape[0], neg.shape[1], -1)
        # 0-dim, and tensors of their own: under FSDP2 the parameters are [1] (sharding.shard_model), and the
        # unsharded parameter's storage is freed when forward ends, so the parameter itself must not leave it
        out["logit_scale"] = self.logit_scale.reshape(()).exp()
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias.reshape(()).clone()
        return out

    def clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(self.max_logit_scale))

    # -- what an open_clip user expects -------------------------------------------------------
    def encode(self, modality: str, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if modality not in self.towers:
            raise ConfigError(f"this model has no {modality} tower (it has: {', '.join(self.modalities)})")
        tower = self.towers[modality]
        check_input(modality, x, getattr(tower, "context_length", None),
                    tower.input_shape() if modality == "image" else None)
        p = next(tower.parameters(), None)
        if p is not None and x.is_floating_point() and p.is_floating_point() and x.dtype != p.dtype:
            x = x.to(p.dtype)     # float64 from numpy, or float32 into a model.half(): a dtype error in the first layer
        if modality == "audio" and x.dim() == 4 and hasattr(tower, "encode_clips"):
            z = tower.encode_clips(x)     # [B, n_clips, n_mels, T] -> [B, E], clip embeddings averaged
        else:
            z = tower(x)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.encode("image", images, normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.encode("text", tokens, normalize)

    def encode_audio(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.encode("audio", features, normalize)

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        return self.towers["text"].tokenize(text_list(texts))

    @property
    def image_transform(self):
        """PIL image -> [3, H, W]: upright RGB first (EXIF turn, transparency on white), as align decodes files."""
        return UprightThen(self.towers["image"].preprocess(train=False)) if "image" in self.towers else None

    @property
    def audio_transform(self):
        return self.towers["audio"].preprocess(train=False) if "audio" in self.towers else None

    def transforms(self, train: bool) -> dict:
        """Per-modality raw->tensor callables for data pipelines (text: the tokenizer)."""
        out = {}
        for m, tower in self.towers.items():
            if m == "text":
                ctx = getattr(tower, "context_length", None)
                counts = tower.count_tokens(["a"]) is not None and isinstance(ctx, int)
                out[m] = CachedTokenize(tower.tokenize, maxsize=16384 if tower.tokenize_is_deterministic else 0,
                                        count_tokens=tower.count_tokens if counts else None,
                                        context_length=ctx if counts else None)
            elif m == "image":
                out[m] = UprightThen(tower.preprocess(train=train))
            else:
                out[m] = tower.preprocess(train=train)
        return out

    def fingerprint(self) -> str:
        """A hash of the weights (benchmark caches key on it): `weights_fingerprint`."""
        return weights_fingerprint(self)


_HOW = {"image": "torch.stack([model.image_transform(img), ...])", "text": "model.tokenize(texts)",
        "audio": "torch.stack([model.audio_transform((wave, sample_rate)), ...])"}


class InputError(AlignError, ValueError):
    """A batch given to encode_* that the model cannot take (an AlignError line, and a ValueError)."""


def check_input(modality: str, x, context_length=None, image_shape=None) -> None:
    """One InputError line naming encode_<modality> and what is wrong with its batch: not a tensor (a str, list,
    PIL image or numpy array went on to fail deep in torch), text that is not integer ids [B, L] or longer than
    the context, an image batch that is not float [B, C, H, W] or, given the tower's `image_shape` (C, H, W),
    not of that size (a ViT failed deep in torch, a CNN embedded it without a word)."""
    what = f"encode_{modality}"
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what}: expected a torch.Tensor batch, got {type(x).__name__}: pass {_HOW[modality]}")
    got = f"got {str(x.dtype).replace('torch.', '')} {list(x.shape)}"
    if modality == "text":
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool or x.dim() != 2:
            raise InputError(f"{what}: expected integer token ids [B, L] from model.tokenize(texts), {got}")
        if isinstance(context_length, int) and x.shape[1] > context_length:
            raise InputError(f"{what}: {x.shape[1]} tokens per text, over this model's context_length "
                             f"{context_length}: tokenize with model.tokenize(texts)")
    elif modality == "image" and (not x.is_floating_point() or x.dim() != 4):
        raise InputError(f"{what}: expected a float batch [B, 3, H, W] (model.image_transform per image, "
                         f"stacked), {got}")
    elif modality == "image" and image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
        raise InputError(f"{what}: expected [B, {', '.join(map(str, image_shape))}], this model's image size "
                         f"(model.image_transform per image, stacked), {got}")


def text_list(texts) -> List[str]:
    """tokenize's argument as a list of str (one string: a list of one); AlignError naming the first item that is
    not a string (open_clip's tokenizer failed with "object of type 'int' has no len()") or that holds a lone
    surrogate (align.text: a Hugging Face tokenizer failed with a TypeError, open_clip's read it as U+FFFD)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise AlignError(f"tokenize: expected a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise AlignError(f"tokenize: texts[{i}] is {type(t).__name__} ({t!r:.40}), not a string")
    refuse_surrogates(texts)
    return texts


def build_model(model_cfg) -> AlignModel:
    """Builds towers from a `ModelConfig` (see align.config)."""
    towers = {}
    for modality, tcfg in model_cfg.towers.items():
        if modality not in MODALITIES:
            raise ConfigError(f"model.towers: unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
        towers[modality] = build_tower(tcfg, modality, model_cfg.embed_dim)
    if len(towers) < 2:
        raise ConfigError("model.towers: need at least two towers")
    return AlignModel(towers, init_logit_scale=model_cfg.init_logit_scale,
                      max_logit_scale=model_cfg.max_logit_scale, init_logit_bias=model_cfg.init_logit_bias)


def enable_grad_checkpointing(model) -> list:
    """Turn on activation checkpointing in every tower that supports it; returns their names.

    A tower without it (e.g. `audio_cnn`) is named in a warning rather than silently left as it was.
    """
    done, missing = [], []
    for name, tower in model.towers.items():
        (done if tower.set_grad_checkpointing(True) else missing).append(name)
    from align.progress import main_process
    if missing and main_process():      # a launch: rank 0 says it, not every process
        import logging
        logging.getLogger("align.train").warning(
            "train.grad_checkpointing: tower(s) %s have no gradient checkpointing; they run as before", missing)
    return done
