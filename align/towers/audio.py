"""Audio towers over log-mel features: `audio` (AST-style transformer) and `audio_cnn`.

    towers:
      audio: {type: audio, width: 192, layers: 4, heads: 3, patch: 16, patch_stride: [10, 10]}
      audio: {type: audio, init_from_vit: {model: ViT-B-16, weights: /ckpt/open_clip_b16.safetensors}}
      audio: {type: audio_cnn, channels: [32, 64, 128, 256], stem_stride: 2, block: separable}

Both take [B, n_mels, frames] normalised log-mel (see `audio_features.py` for the
front-end keys, shared by both types) and return [B, embed_dim] un-normalised.

`audio`: the log-mel image [1, n_mels, frames] is cut into (patch x patch) patches with
stride `patch_stride` (overlap allowed, as AST), plus a CLS token and learned positional
embeddings, pre-norm transformer blocks (open_clip `ResidualAttentionBlock`s), final
LayerNorm, CLS (or mean) pooling, projection.

`init_from_vit` starts the transformer from an open_clip image ViT (AST's ImageNet trick):
  {model: <open_clip config name> | vision_cfg: {...}, weights: <checkpoint>, quick_gelu: bool}
- blocks, ln_pre, ln_post and the CLS token are the ViT's own modules (weights copied 1:1);
- the RGB patch kernel [W, 3, p, p] is summed over channels -> [W, 1, p, p];
- positional embeddings of the ViT grid are resized bicubically to the audio patch grid.
The width/layers/heads come from the ViT; the recipe may not set them differently.
Rebuilding such a tower (e.g. to load a trained checkpoint) reads the ViT weights again.

`audio_cnn`: PANNs-CNN-like: BatchNorm over mel bins, a strided conv3x3 stem (`stem_stride`, default 2),
blocks of depthwise-separable conv3x3-BN-ReLU (`block: separable`, default; `plain`: PANNs'
2 x (conv3x3-BN-ReLU)) + 2x2 average pool, mean over frequency, max + mean over time, dropout,
Linear-ReLU, projection.  The defaults train ~30x faster on CPU than the PANNs layout
(`stem_stride: 1, block: plain`, with an extra stem conv): benchmarks/audio_cnn_speed.py.

Several clips per recording (eval_clips > 1): `encode_clips([B, C, n_mels, frames])`
averages the L2-normalised clip embeddings; `forward` takes one clip per item only.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from align.errors import ConfigError
from align.towers import TOWERS
from align.towers.audio_features import AudioFrontend, AudioPreprocess
from align.towers.common import LockableTower, build_projection, check_cfg, load_weights_file

VIT_KEYS = ("patch", "patch_stride", "width", "layers", "heads", "mlp_ratio", "pool", "proj",
            "lock", "unlocked_groups", "init_from_vit")
CNN_KEYS = ("channels", "dropout", "proj", "lock", "unlocked_groups", "stem_stride", "block")
INIT_KEYS = ("model", "vision_cfg", "weights", "quick_gelu")


def _pair(v, key: str, where: str) -> Tuple[int, int]:
    """int or [freq, time] -> (freq, time) positive ints."""
    t = (v, v) if isinstance(v, int) else tuple(v) if isinstance(v, (list, tuple)) else ()
    if len(t) != 2 or not all(isinstance(i, int) and i > 0 for i in t):
        raise ConfigError(f"{where}.{key}: expected a positive int or [freq, time] pair, got {v!r}")
    return t


class _AudioTowerMixin:
    """What both audio towers share: preprocess, dummy input, input check, multi-clip encode."""

    modality = "audio"
    fe: AudioFrontend

    def preprocess(self, train: bool):
        return AudioPreprocess(self.fe, train)

    def dummy_input(self, batch_size: int) -> torch.Tensor:          # [B, n_mels, frames]
        return torch.randn(batch_size, self.fe.n_mels, self.fe.n_frames)

    def _check_input(self, x: torch.Tensor) -> None:
        want = (self.fe.n_mels, self.fe.n_frames)
        if x.dim() != 3 or tuple(x.shape[1:]) != want:
            hint = " (several clips per item: use encode_clips)" if x.dim() == 4 else ""
            raise ValueError(f"{type(self).__name__}: expected [B, {want[0]}, {want[1]}] log-mel, "
                             f"got {list(x.shape)}{hint}")

    def encode_clips(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, n_mels, frames] -> [B, embed_dim]: mean of the L2-normalised clip embeddings."""
        b, c = x.shape[:2]
        e = F.normalize(self(x.flatten(0, 1)), dim=-1)                # [B*C, D]
        return e.view(b, c, -1).mean(dim=1)

    def _base_config(self, tower: str) -> dict:
        return dict(self.fe.config(), tower=tower, input_shape=[self.fe.n_mels, self.fe.n_frames])


class AudioTransformerTower(_AudioTowerMixin, LockableTower):
    """AST-style patch transformer over log-mel; see the module docstring."""

    def __init__(self, fe: AudioFrontend, embed_dim: int, *, patch=16, patch_stride=None,
                 width: int = 192, layers: int = 4, heads: int = 3, mlp_ratio: float = 4.0,
                 pool: str = "cls", proj: str = "linear", vit: Optional[nn.Module] = None,
                 where: str = "model.towers.audio"):
        super().__init__()
        from open_clip.transformer import LayerNorm, Transformer
        self.fe, self.embed_dim = fe, embed_dim
        self.patch = _pair(patch, "patch", where)
        self.stride = _pair(patch_stride if patch_stride is not None else patch, "patch_stride", where)
        if pool not in ("cls", "mean"):
            raise ConfigError(f"{where}.pool: {pool!r} is not 'cls' or 'mean'")
        self.pool = pool
        (pf, pt), (sf, st) = self.patch, self.stride
        if pf > fe.n_mels or pt > fe.n_frames:
            raise ConfigError(f"{where}.patch: {self.patch} is larger than the log-mel "
                              f"[{fe.n_mels}, {fe.n_frames}]")
        self.grid = ((fe.n_mels - pf) // sf + 1, (fe.n_frames - pt) // st + 1)   # (freq, time)
        n_tok = self.grid[0] * self.grid[1]
        if vit is None:
            for k, v in (("width", width), ("layers", layers), ("heads", heads)):
                if not isinstance(v, int) or v <= 0:
                    raise ConfigError(f"{where}.{k}: must be a positive integer, got {v!r}")
            if width % heads:
                raise ConfigError(f"{where}.heads: width {width} is not divisible by heads {heads}")
            scale = width ** -0.5
            self.class_embedding = nn.Parameter(scale * torch.randn(width))          # [W]
            self.ln_pre = LayerNorm(width)
            self.transformer = Transformer(width, layers, heads, mlp_ratio)
            self.ln_post = LayerNorm(width)
            pos = scale * torch.randn(1 + n_tok, width)
            kernel = None
        else:
            width = vit.transformer.width
            self.class_embedding = vit.class_embedding
            self.ln_pre, self.transformer, self.ln_post = vit.ln_pre, vit.transformer, vit.ln_post
            if tuple(vit.conv1.weight.shape[2:]) != self.patch:
                raise ConfigError(f"{where}.patch: {list(self.patch)} differs from the ViT's patch "
                                  f"{list(vit.conv1.weight.shape[2:])}; leave it unset or match it")
            kernel = vit.conv1.weight.detach().sum(dim=1, keepdim=True)           # [W, 1, p, p]
            pos = resize_pos_embed(vit.positional_embedding.detach(), vit.grid_size, self.grid)
        self.width = width
        self.patch_embed = nn.Conv2d(1, width, self.patch, self.stride, bias=False)
        if kernel is not None:
            with torch.no_grad():
                self.patch_embed.weight.copy_(kernel)
        self.positional_embedding = nn.Parameter(pos.clone())                     # [1 + N, W]
        self.head = build_projection(width, embed_dim, proj, where)

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        self.transformer.grad_checkpointing = enable  # open_clip's Transformer checkpoints each block
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:                # [B, n_mels, T] -> [B, D]
        self._check_input(x)
        with self.trunk_context():
            h = self.patch_embed(x.unsqueeze(1))                         # [B, W, gf, gt]
            h = h.flatten(2).transpose(1, 2)                             # [B, N, W]
            cls = self.class_embedding.to(h.dtype).expand(h.shape[0], 1, -1)
            h = torch.cat([cls, h], dim=1) + self.positional_embedding.to(h.dtype)  # [B, 1+N, W]
            h = self.ln_post(self.transformer(self.ln_pre(h)))
            pooled = h[:, 0] if self.pool == "cls" else h[:, 1:].mean(dim=1)        # [B, W]
        return self.head(pooled)

    def lock_groups(self) -> List:
        blocks = list(self.transformer.resblocks)
        return [[self.patch_embed, self.class_embedding, self.positional_embedding, self.ln_pre],
                *blocks[:-1], [blocks[-1], self.ln_post]]

    def preprocess_config(self) -> dict:
        return dict(self._base_config("audio"), patch=list(self.patch), patch_stride=list(self.stride),
                    grid=list(self.grid))


def resize_pos_embed(pos: torch.Tensor, src_grid, dst_grid) -> torch.Tensor:
    """[1 + gh*gw, W] -> [1 + dh*dw, W]: CLS row kept, patch grid resized bicubically (rows -> freq)."""
    cls, grid = pos[:1], pos[1:]
    gh, gw = src_grid
    img = grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)                     # [1, W, gh, gw]
    img = F.interpolate(img.float(), size=tuple(dst_grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(-1, pos.shape[1]).to(pos.dtype)], dim=0)


def build_open_clip_vit(spec: dict, where: str) -> nn.Module:
    """An open_clip VisionTransformer from a config name or dict, with optional weights."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with 'model' or 'vision_cfg', got {spec!r}")
    check_cfg(spec, INIT_KEYS, where)
    if ("model" in spec) == ("vision_cfg" in spec):
        raise ConfigError(f"{where}: give exactly one of 'model' (open_clip config name) or 'vision_cfg'")
    import open_clip
    from open_clip.model import CLIPVisionCfg
    from align.towers.open_clip_towers import build_single_tower
    from open_clip.transformer import VisionTransformer
    if "model" in spec:
        mc = open_clip.get_model_config(spec["model"])
        if mc is None:
            raise ConfigError(f"{where}.model: {spec['model']!r} is not an open_clip model config "
                              f"(see open_clip.list_models())")
        vcfg, out_dim = dict(mc["vision_cfg"]), mc.get("embed_dim", 512)
        quick_gelu = spec.get("quick_gelu", mc.get("quick_gelu", False))
    else:
        vcfg, out_dim = dict(spec["vision_cfg"]), 512
        quick_gelu = spec.get("quick_gelu", False)
    try:
        cfg = CLIPVisionCfg(**vcfg)
    except TypeError as e:
        raise ConfigError(f"{where}.vision_cfg: {e}") from None
    if cfg.timm_model_name or isinstance(cfg.layers, (list, tuple)) or cfg.attentional_pool:
        raise ConfigError(f"{where}: only plain open_clip ViTs are supported (not timm, ResNet "
                          f"or attentional-pool towers)")
    visual = build_single_tower("image", out_dim, cfg, quick_gelu=bool(quick_gelu))
    assert isinstance(visual, VisionTransformer)
    if spec.get("weights"):
        sd = load_weights_file(spec["weights"], f"{where}.weights")
        if any(k.startswith("visual.") for k in sd):
            sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
        sd.pop("proj", None)  # the image projection is not used by the audio tower
        try:
            missing, unexpected = visual.load_state_dict(sd, strict=False)
        except RuntimeError as e:
            raise ConfigError(f"{where}.weights: does not fit the ViT config: {str(e)[:300]}") from None
        missing = [k for k in missing if k != "proj"]
        if missing or unexpected:
            raise ConfigError(f"{where}.weights: {spec['weights']!r} does not match the ViT "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return visual


class _ConvBlock(nn.Sequential):
    """`plain`: 2 x (conv3x3 - BN - ReLU) then 2x2 average pool: [B, Cin, F, T] -> [B, Cout, F/2, T/2].

    `separable`: depthwise conv3x3 - pointwise conv1x1 - BN - ReLU, then the pool: the same receptive
    field growth for ~1/9 of the multiply-adds of one plain conv (MobileNet's factorisation)."""

    def __init__(self, cin: int, cout: int, kind: str = "plain"):
        if kind == "plain":
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                      nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        else:
            layers = [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                      nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        super().__init__(*layers, nn.AvgPool2d(2))


class AudioCNNTower(_AudioTowerMixin, LockableTower):
    """CNN over log-mel (PANNs-like by default layout); see the module docstring.

    stem_stride: the first conv (3x3, `channels[0]` maps) runs with this stride, so the blocks start on a
        smaller map (2: a quarter of the positions; the input conv is where PANNs spends most of its time).
    block: `separable` (default) or `plain` (PANNs' 2 x conv3x3; with stem_stride 1 the former layout).
    """

    def __init__(self, fe: AudioFrontend, embed_dim: int, *, channels=(32, 64, 128, 256),
                 dropout: float = 0.2, proj: str = "linear", stem_stride=2, block: str = "separable",
                 where: str = "model.towers.audio"):
        super().__init__()
        if (not isinstance(channels, (list, tuple)) or not channels
                or not all(isinstance(c, int) and c > 0 for c in channels)):
            raise ConfigError(f"{where}.channels: expected a list of positive ints, got {channels!r}")
        if block not in ("plain", "separable"):
            raise ConfigError(f"{where}.block: {block!r} is not 'plain' or 'separable'")
        stem = _pair(stem_stride, "stem_stride", where)
        if stem[0] * 2 ** len(channels) > fe.n_mels or stem[1] * 2 ** len(channels) > fe.n_frames:
            raise ConfigError(f"{where}.channels: stem_stride {list(stem)} and {len(channels)} blocks halve the "
                              f"log-mel [{fe.n_mels}, {fe.n_frames}] below one bin")
        if not 0 <= dropout < 1:
            raise ConfigError(f"{where}.dropout: must be in [0, 1), got {dropout!r}")
        self.fe, self.embed_dim, self.channels = fe, embed_dim, list(channels)
        self.stem_stride, self.block = stem, block
        self.bn0 = nn.BatchNorm1d(fe.n_mels)                   # per-mel-bin input normalisation
        self.stem = nn.Sequential(nn.Conv2d(1, channels[0], 3, stride=stem, padding=1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        cins = [channels[0]] + self.channels[:-1]
        self.blocks = nn.ModuleList(_ConvBlock(a, b, block) for a, b in zip(cins, self.channels))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Sequential(nn.Linear(channels[-1], channels[-1]), nn.ReLU(inplace=True))
        self.head = build_projection(channels[-1], embed_dim, proj, where)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                # [B, n_mels, T] -> [B, D]
        self._check_input(x)
        with self.trunk_context():
            h = self.stem(self.bn0(x).unsqueeze(1))                      # [B, C0, n_mels/s, T/s]
            for blk in self.blocks:
                h = blk(h)                                               # [B, C, F', T']
            h = h.mean(dim=2)                                            # [B, C, T']
            h = h.amax(dim=2) + h.mean(dim=2)                            # [B, C]
            h = self.fc(self.dropout(h))
        return self.head(h)

    def lock_groups(self) -> List:
        blocks = list(self.blocks)
        return [[self.bn0, self.stem, blocks[0]], *blocks[1:-1], [blocks[-1], self.fc]] if len(blocks) > 1 \
            else [[self.bn0, self.stem, blocks[0], self.fc]]

    def preprocess_config(self) -> dict:
        return dict(self._base_config("audio_cnn"), stem_stride=list(self.stem_stride), block=self.block)


def _split(cfg: dict, model_keys, modality: str):
    where = f"model.towers.{modality}"
    if modality != "audio":
        raise ConfigError(f"{where}: audio towers encode the 'audio' modality, not {modality!r}")
    check_cfg(cfg, list(AudioFrontend.keys()) + list(model_keys), where)
    try:
        fe = AudioFrontend(**{k: cfg[k] for k in AudioFrontend.keys() if k in cfg}).validate(where)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    lock, unlocked = cfg.get("lock", False), cfg.get("unlocked_groups", 0)
    if not lock and "unlocked_groups" in cfg:
        raise ConfigError(f"{where}.unlocked_groups: only used with lock: true")
    rest = {k: v for k, v in cfg.items() if k in model_keys and k not in ("lock", "unlocked_groups")}
    return where, fe, rest, (lock, unlocked)


def _apply_lock(tower: LockableTower, lock_spec) -> LockableTower:
    lock, unlocked = lock_spec
    if lock:
        tower.lock(unlocked)
    return tower


@TOWERS.register("audio")
def build_audio_tower(cfg: dict, modality: str, embed_dim: int) -> AudioTransformerTower:
    """Factory for `type: audio`."""
    where, fe, rest, lock_spec = _split(cfg, VIT_KEYS, modality)
    vit = None
    if rest.get("init_from_vit") is not None:
        vit = build_open_clip_vit(rest.pop("init_from_vit"), f"{where}.init_from_vit")
        src = {"width": vit.transformer.width, "layers": len(vit.transformer.resblocks),
               "heads": vit.transformer.resblocks[0].attn.num_heads,
               "mlp_ratio": vit.transformer.resblocks[0].mlp.c_fc.out_features / vit.transformer.width}
        for k, v in src.items():
            if k in rest and rest[k] != v:
                raise ConfigError(f"{where}.{k}: {rest[k]!r} conflicts with init_from_vit ({k}={v}); "
                                  f"leave it unset")
            rest.pop(k, None)
        rest.setdefault("patch", list(vit.conv1.weight.shape[2:]))
        if "pool" not in rest:
            rest["pool"] = "mean" if getattr(vit, "pool_type", "tok") == "avg" else "cls"
    rest.pop("init_from_vit", None)
    return _apply_lock(AudioTransformerTower(fe, embed_dim, vit=vit, where=where, **rest), lock_spec)


@TOWERS.register("audio_cnn")
def build_audio_cnn_tower(cfg: dict, modality: str, embed_dim: int) -> AudioCNNTower:
    """Factory for `type: audio_cnn`."""
    where, fe, rest, lock_spec = _split(cfg, CNN_KEYS, modality)
    return _apply_lock(AudioCNNTower(fe, embed_dim, where=where, **rest), lock_spec)
