"""Tower registry: recipes name a tower by its explicit `type`.

    towers:
      image: {type: open_clip, model: ViT-B-32}
      text:  {type: hf, model: /path/to/minilm, lock: true}
      audio: {type: audio, width: 192, layers: 4}

Each factory is called as `factory(cfg: dict, modality: str, embed_dim: int) -> Tower`
with the tower's section minus `type`.
"""
from align.registry import Registry
from align.towers.base import Tower

TOWERS: Registry = Registry("tower")


def build_tower(cfg: dict, modality: str, embed_dim: int) -> Tower:
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind is None:
        from align.errors import ConfigError
        raise ConfigError(f"model.towers.{modality}: missing 'type' (valid: {', '.join(TOWERS.names())})")
    return TOWERS.get(kind)(cfg, modality, embed_dim)


# Importing the modules registers their tower types.
from align.towers import open_clip_towers  # noqa: E402,F401
for _optional in ("audio", "hf_text", "timm_image"):
    try:
        __import__(f"align.towers.{_optional}")
    except ImportError as _e:  # a tower module under construction must not break the others
        if f"align.towers.{_optional}" not in str(_e):
            raise
