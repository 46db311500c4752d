"""Image tower over any timm architecture (`type: timm`).

    towers:
      image: {type: timm, model: convnext_tiny, image_size: 224}
      image: {type: timm, model: vit_small_patch16_224, pretrained: /weights/vit_s16.safetensors,
              lock: true, unlocked_groups: 2}

Keys:
  model          timm architecture name (timm.list_models()).
  pretrained     false (default: random init, nothing is downloaded) | true (timm's
                 weights: Hub cache / network) | a path to a weights file (.safetensors or
                 torch file, loaded by timm with weights_only=True) | the folder a timm Hub
                 download leaves (config.json + model.safetensors | pytorch_model.bin: its
                 pretrained_cfg's mean, std, input size and crop too). A file that lacks some
                 of the trunk's tensors is one line (timm would start them at random).
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
import contextlib
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


TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")   # a timm hub folder's weights, beside config.json


def local_weights(path: str, model: str, kwargs: dict, where: str):
    """(weights file, pretrained_cfg_overlay) for a local `pretrained`: a weights file, or a folder as a timm Hub
    download leaves it (config.json + model.safetensors | pytorch_model.bin), whose pretrained_cfg (mean, std,
    input size, crop) and model_args (set into kwargs unless given) are the folder's, as timm's local-dir: reads
    them. A folder of another architecture, or without config.json or weights, is one line."""
    import json
    p = Path(path)
    if p.is_file():
        return str(p), {"file": str(p)}
    if not p.is_dir():
        raise ConfigError(f"{where}: weights file or folder {path!r} does not exist")
    found = [p / n for n in TIMM_WEIGHTS if (p / n).is_file()]
    if not (p / "config.json").is_file() or not found:
        raise ConfigError(f"{where}: {path!r} is a folder without config.json and {' or '.join(TIMM_WEIGHTS)} (a timm "
                          "Hub download); give the weights file itself")
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
        arch, pcfg = cfg["architecture"], dict(cfg.get("pretrained_cfg") or {})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{where}: {str(p / 'config.json')!r} is no timm model config ({e!s:.200})") from None
    if arch != model.split(".")[0]:
        raise ConfigError(f"{where}: {str(p / 'config.json')!r} is the config of {arch!r}, not of {model!r}: set the "
                          f"tower's model: {arch}")
    for k, v in (cfg.get("model_args") or {}).items():
        if k != "num_classes":
            kwargs.setdefault(k, tuple(v) if isinstance(v, list) else v)
    pcfg = {k: tuple(v) if isinstance(v, list) else v for k, v in pcfg.items() if k not in ("architecture", "tag")}
    return str(found[0]), dict(pcfg, file=str(found[0]), hf_hub_id=None, url=None)


@contextlib.contextmanager
def load_reports():
    """The (module, missing keys) of every `load_state_dict` on a module built inside the block (torch's public
    global hook on submodule registration, then each parent's load_state_dict post hook): what timm's own load
    of a weights file left unfilled, after its conversion of the file's names, without reading the file again."""
    reports, hooks = [], {}

    def keep(module, keys):
        reports.append((module, list(keys.missing_keys)))

    def on_child(module, name, child):
        if id(module) not in hooks:
            hooks[id(module)] = module.register_load_state_dict_post_hook(keep)
    handle = torch.nn.modules.module.register_module_module_registration_hook(on_child)
    try:
        yield reports
    finally:
        handle.remove()
        for hook in hooks.values():          # none stays on the model (it would not pickle, and would grow)
            hook.remove()


def check_all_loaded(trunk, missing: List[str], weights: str, model: str, where: str) -> None:
    """One line when the trunk has tensors `weights` did not fill (`missing`, from timm's own load: load_reports):
    timm loads a file non-strictly once its classifier is dropped (num_classes=0), so a file of another
    architecture or a part of one left those tensors at random without a word."""
    own = trunk.state_dict()
    if missing:
        raise ConfigError(f"{where}: {weights!r} lacks {len(missing)} of the {len(own)} tensors of timm's {model!r} "
                          f"(e.g. {', '.join(missing[:2])}): they would start at random; give weights of this "
                          "architecture")


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
        weights = None
        if isinstance(pretrained, str):
            weights, overlay = local_weights(pretrained, model, kwargs, f"{where}.pretrained")
            kwargs["pretrained_cfg_overlay"] = overlay
            pretrained = True
        elif not isinstance(pretrained, bool):
            raise ConfigError(f"{where}.pretrained: expected true, false or a weights path, got {pretrained!r}")
        try:
            with load_reports() as reports:
                self.trunk = timm.create_model(model, pretrained=pretrained, num_classes=0, **kwargs)
        except TypeError as e:
            raise ConfigError(f"{where}.model_kwargs: {e}") from None
        except Exception as e:  # noqa: BLE001  no network / no cached weights / a pickle / a cut file / shape mismatch
            from align.open_clip_files import weights_error
            line = weights_error(weights, e) if weights else None
            raise ConfigError(f"{where}.pretrained: {line}" if line else f"{where}: cannot create {model!r} "
                              f"(pretrained={pretrained}): {str(e).splitlines()[0][:200]}") from None
        if weights:
            missing = [keys for module, keys in reports if module is self.trunk]
            check_all_loaded(self.trunk, missing[-1] if missing else [], weights, model, f"{where}.pretrained")
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
