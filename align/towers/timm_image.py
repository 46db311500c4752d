"""Image tower over any timm architecture (`type: timm`).

    towers:
      image: {type: timm, model: convnext_tiny, image_size: 224}
      image: {type: timm, model: vit_small_patch16_224, pretrained: /weights/vit_s16.safetensors,
              lock: true, unlocked_groups: 2}

Keys:
  model          timm architecture name (timm.list_models()).
  pretrained     false (default: random init, nothing is downloaded) | true (timm's
                 weights: Hub cache / network) | a path to a weights file (.safetensors or
                 torch file, loaded by timm with weights_only=True).
  image_size     int or [H, W]; passed to the model as img_size only when timm marks the
                 architecture's input size as fixed (ViT-style position embeddings).
  model_kwargs   extra keyword arguments for timm.create_model (e.g. {patch_size: 8}).
  augment        extra keyword arguments for timm.data.create_transform in training
                 (e.g. {color_jitter: 0.0, scale: [0.5, 1.0]}).
  proj           linear | mlp | none.
  lock, unlocked_groups
                 LiT: freeze all but the last N layer groups from timm's coarse
                 group_matcher (stem, stages/blocks, final norm), or the model's top-level
                 children when it has none. The projection head always trains.

The trunk is created with num_classes=0, so it returns timm's pooled features [B, F].
Preprocessing is timm's own: resolve_model_data_config + create_transform.
"""
import inspect
from pathlib import Path
from typing import List

import torch

from align.errors import ConfigError
from align.towers import TOWERS
from align.towers.common import LockableTower, build_pretrained_tower, build_projection

KEYS = ("model", "pretrained", "image_size", "model_kwargs", "augment", "proj", "lock", "unlocked_groups")


def to_rgb(img):
    """PIL image -> RGB (grey/RGBA/palette images are common in web data)."""
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


class TimmImageTower(LockableTower):
    """timm backbone (pooled features) + projection; see the module docstring."""

    modality = "image"

    def __init__(self, model: str, embed_dim: int, *, pretrained=False, image_size=None,
                 model_kwargs=None, augment=None, proj: str = "linear", where: str = "model.towers.image"):
        super().__init__()
        import timm
        from timm.data import resolve_model_data_config
        if not isinstance(model, str) or not timm.is_model(model):
            raise ConfigError(f"{where}.model: {model!r} is not a timm architecture "
                              f"(see timm.list_models('*pattern*'))")
        kwargs = dict(model_kwargs or {})
        hw = None
        if image_size is not None:
            hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
                raise ConfigError(f"{where}.image_size: expected a positive int or [H, W], got {image_size!r}")
            pcfg = timm.models.get_pretrained_cfg(model)
            if pcfg is not None and pcfg.fixed_input_size:
                kwargs.setdefault("img_size", hw)
        if isinstance(pretrained, str):
            if not Path(pretrained).is_file():
                raise ConfigError(f"{where}.pretrained: weights file {pretrained!r} does not exist")
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained)}
            pretrained = True
        elif not isinstance(pretrained, bool):
            raise ConfigError(f"{where}.pretrained: expected true, false or a weights path, got {pretrained!r}")
        try:
            self.trunk = timm.create_model(model, pretrained=pretrained, num_classes=0, **kwargs)
        except TypeError as e:
            raise ConfigError(f"{where}.model_kwargs: {e}") from None
        except (OSError, RuntimeError, ValueError) as e:  # no network / no cached weights / shape mismatch
            raise ConfigError(f"{where}: cannot create {model!r} (pretrained={pretrained}): "
                              f"{str(e).splitlines()[0][:200]}") from None
        self.data_config = dict(resolve_model_data_config(self.trunk))
        if hw is not None:
            self.data_config["input_size"] = (3, *hw)
        from timm.data import create_transform
        allowed = set(inspect.signature(create_transform).parameters) - set(self.data_config) - {"is_training"}
        self.augment = dict(augment or {})
        for k in self.augment:
            if k not in allowed:
                raise ConfigError(f"{where}.augment: unknown key {k!r}; valid keys: {', '.join(sorted(allowed))}")
        self.model_name, self.embed_dim, self.where = model, embed_dim, where
        feat = getattr(self.trunk, "head_hidden_size", None) or self.trunk.num_features
        self.head = build_projection(feat, embed_dim, proj, where)

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        self.trunk.set_grad_checkpointing(enable)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:                # [B, 3, H, W] -> [B, D]
        with self.trunk_context():
            feats = self.trunk(x)                                        # [B, F] (num_classes=0)
        return self.head(feats)

    def preprocess(self, train: bool):
        from timm.data import create_transform
        from torchvision import transforms
        kw = dict(self.augment) if train else {}
        return transforms.Compose([to_rgb, create_transform(**self.data_config, is_training=train, **kw)])

    def lock_groups(self) -> List:
        """timm's coarse layer groups in order (stem first), else top-level children with params."""
        if hasattr(self.trunk, "group_matcher"):
            from timm.models import group_parameters
            by_name = dict(self.trunk.named_parameters())
            grouped = group_parameters(self.trunk, self.trunk.group_matcher(coarse=True))
            return [[by_name[n] for n in grouped[i]] for i in sorted(grouped)]
        return [m for m in self.trunk.children() if any(True for _ in m.parameters())]

    def dummy_input(self, batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, *self.data_config["input_size"])

    def input_shape(self):
        if getattr(self.trunk, "dynamic_img_size", False):     # model_kwargs: {dynamic_img_size: true}
            return None
        return tuple(self.data_config["input_size"])

    def preprocess_config(self) -> dict:
        c = self.data_config
        return {"tower": "timm", "model": self.model_name, "image_size": list(c["input_size"][1:]),
                "mean": list(c["mean"]), "std": list(c["std"]), "interpolation": c["interpolation"],
                "crop_pct": c.get("crop_pct"), "crop_mode": c.get("crop_mode"), "input": "RGB"}


@TOWERS.register("timm")
def build_timm_tower(cfg: dict, modality: str, embed_dim: int) -> TimmImageTower:
    """Factory for `type: timm`."""
    return build_pretrained_tower(TimmImageTower, cfg, modality, embed_dim, KEYS, tower_type="timm", encodes="image",
                                  model_hint="a timm architecture name", unlocked_key="unlocked_groups")
