"""Shared trunk of the Hugging Face image and audio towers (`type: hf_image`, `type: hf_audio`).

The encoder is loaded through `transformers.AutoModel` from a local folder (or a Hub
id, from the local cache when HF_HUB_OFFLINE=1); its preprocessing comes from the same
folder through `AutoImageProcessor` / `AutoFeatureExtractor`. Which part of the loaded
model encodes the modality is read from the model object, never from its name:
  - a two-tower checkpoint (CLIPModel, SiglipModel, ClapModel) has `vision_model` /
    `audio_model`: that sub-model is the trunk (the text half is dropped);
  - an encoder-decoder (`config.is_encoder_decoder`, e.g. Whisper): `get_encoder()`;
  - anything else (CLIPVisionModel, Dinov2Model, ASTModel, Wav2Vec2Model, HubertModel): the model.

Parameters the embedding path never uses (found by one dummy backward at build) are frozen,
and LayerDrop is off, so every trainable parameter gets a gradient in every step (DDP needs it).

Pooling (`pooling:`): auto (the model's `pooler_output` when it has one, else the
attention-masked mean of `last_hidden_state`) | pooler | cls | mean. The projection
head's input size is read from one dummy forward at build time (e.g. CLAP's pooled size
differs from its `hidden_size`).

Locking is LiT-style (see common.LockableTower): `lock: true` freezes the trunk,
`unlocked_layers: N` keeps its last N layers trainable (layers = the ModuleList whose
length is config.num_hidden_layers, or the stages of a hierarchical model); the
projection always trains.
"""
from typing import List

import torch
from torch import nn

from align.errors import ConfigError
from align.towers.common import (LockableTower, build_projection, hf_grad_checkpointing, hf_load, hf_location,
                                 hf_lock_groups, hf_model)

POOLINGS = ("auto", "pooler", "cls", "mean")
# What `modality` looks for on a two-tower checkpoint.
SUBMODEL_ATTR = {"image": "vision_model", "audio": "audio_model"}
# what AutoImageProcessor / AutoFeatureExtractor read in a folder (a Processor saves the second, nesting them)
PREPROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")


def require_transformers(where: str):
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{where}: needs the transformers package (pip install 'align-clip[hf]')") from None
    return transformers


def load_preprocessor(auto_class: str, name, where: str, what: str):
    """The model folder's own preprocessor through transformers' `auto_class` (AutoImageProcessor,
    AutoFeatureExtractor); a folder without one fails with one line naming `what`."""
    import os
    cls = getattr(require_transformers(where), auto_class)
    path, local = hf_location(name, f"{where}.model")
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, n)) for n in PREPROCESSOR_CONFIGS):
        raise ConfigError(f"{where}.model: no {what} for {name!r}: the folder lacks {PREPROCESSOR_CONFIGS[0]} (copy "
                          "it from the download: it holds the input size and normalisation the weights were trained "
                          "with)")
    return hf_load(cls, name, path, local, where, f"no {what} for")


def _unused(key: str, model: nn.Module, modality: str, pooling: str) -> bool:
    """True for a tensor the tower never uses: of the part of `model` load_trunk does not keep (a two-tower
    checkpoint's other half, an encoder-decoder's decoder), or of the pooler under `pooling: cls | mean` (a
    ViTModel over a ViTForImageClassification checkpoint has none)."""
    sub = SUBMODEL_ATTR[modality]
    if isinstance(getattr(model, sub, None), nn.Module):
        if not key.startswith(sub + "."):
            return True
        key = key[len(sub) + 1:]
    elif getattr(model.config, "is_encoder_decoder", False) and not key.startswith(("encoder.", "model.encoder.")):
        return True
    return pooling in ("cls", "mean") and key.startswith("pooler.")


def load_trunk(name: str, modality: str, where: str, pooling: str = "auto", from_config: bool = False) -> nn.Module:
    """AutoModel.from_pretrained (from_config: AutoModel.from_config of the folder's config.json, no weights read),
    then the sub-model that encodes `modality` (see module docstring)."""
    AutoModel = require_transformers(where).AutoModel
    path, local = hf_location(name, f"{where}.model")
    model = hf_model(AutoModel, name, path, local, where, "transformers.AutoModel cannot load",
                     unused=lambda key, m: _unused(key, m, modality, pooling), from_config=from_config)
    sub = getattr(model, SUBMODEL_ATTR[modality], None)
    if isinstance(sub, nn.Module):
        return sub
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model


class HFEncoderTower(LockableTower):
    """trunk(**{input_name: x[, attention_mask]}) -> pooled [B, H] -> head -> [B, embed_dim]."""

    input_name: str = "pixel_values"
    has_mask: bool = False        # x packs (values, mask) as [B, 2, ...]; see hf_audio

    def _finish(self, trunk: nn.Module, embed_dim: int, pooling: str, proj: str, where: str) -> None:
        """Called by subclasses once `self.trunk`'s preprocessing is set up: pooling, head, names."""
        if pooling not in POOLINGS:
            raise ConfigError(f"{where}.pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.trunk, self.pooling, self.where, self.embed_dim = trunk, pooling, where, embed_dim
        self.model_type = getattr(trunk.config, "model_type", type(trunk).__name__)
        # LayerDrop skips whole layers at random in training: their parameters then get no gradient in that
        # step, which DDP cannot reduce. Off (wav2vec2/HuBERT default to 0.1).
        for key in ("layerdrop", "encoder_layerdrop"):
            if getattr(trunk.config, key, 0):
                setattr(trunk.config, key, 0.0)
                for m in trunk.modules():
                    if hasattr(m, key) and isinstance(getattr(m, key), float):
                        setattr(m, key, 0.0)
        # One dummy forward/backward (eval mode: no dropout or masking) gives the pooled size and finds
        # parameters the embedding never uses (e.g. DINOv2's mask_token, only used with bool_masked_pos):
        # they are frozen, as DDP would otherwise wait forever for their gradients.
        was = trunk.training
        trunk.eval()
        pooled = self._pool(self.dummy_input(1))                           # [1, H]
        pooled.float().sum().backward()
        self.unused = [n for n, p in trunk.named_parameters() if p.requires_grad and p.grad is None]
        for n, p in trunk.named_parameters():
            p.grad = None
            if n in self.unused:
                p.requires_grad_(False)
        trunk.train(was)
        self.head = build_projection(int(pooled.shape[-1]), embed_dim, proj, where)

    def _split(self, x: torch.Tensor):
        if self.has_mask:
            return x[:, 0], x[:, 1].long()                                 # values [B, ...], mask [B, ...]
        return x, None

    def _pool(self, x: torch.Tensor) -> torch.Tensor:                      # -> [B, H]
        values, mask = self._split(x)
        kwargs = {self.input_name: values}
        if mask is not None:
            kwargs["attention_mask"] = mask
        out = self.trunk(**kwargs)
        pooler = getattr(out, "pooler_output", None)
        if self.pooling == "pooler" or (self.pooling == "auto" and pooler is not None):
            if pooler is None:
                raise ConfigError(f"{self.where}.pooling: pooler, but {self.model_type} returns no pooler_output")
            return pooler.flatten(1)
        h = out.last_hidden_state                                          # [B, T, H]
        if h.dim() != 3:
            raise ConfigError(f"{self.where}.pooling: {self.pooling} needs [B, T, H] states; "
                              f"{self.model_type} gives {list(h.shape)} (use pooling: pooler)")
        if self.pooling == "cls":
            return h[:, 0]
        frame_mask = None
        if mask is not None and hasattr(self.trunk, "_get_feature_vector_attention_mask"):
            # sample-level mask [B, N] -> frame-level [B, T] (wav2vec2/HuBERT conv strides)
            frame_mask = self.trunk._get_feature_vector_attention_mask(h.shape[1], mask)
        if frame_mask is None:
            return h.mean(dim=1)
        m = frame_mask.unsqueeze(-1).to(h.dtype)                           # [B, T, 1]
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                    # [B, ...] -> [B, embed_dim]
        if x.shape[0] == 0:                  # transformers' models cannot reshape an empty batch
            return x.new_zeros((0, self.embed_dim), dtype=torch.float32)
        with self.trunk_context():
            pooled = self._pool(x)
        return self.head(pooled)

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        return hf_grad_checkpointing(self.trunk, enable)

    def lock_groups(self) -> List:
        return hf_lock_groups(self.trunk, self.where, self.model_type)
