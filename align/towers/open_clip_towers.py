"""open_clip image and text towers (`type: open_clip`).

A tower is built from any open_clip architecture, named (`model: ViT-B-32`) or
given as a model config (`config: {...}` inline, or `config_file: cfg.json`,
the same JSON open_clip keeps in `model_configs/`). The tower *is* open_clip's
own `VisionTransformer`/`TextTransformer` (with its projection to `embed_dim`),
so an align checkpoint maps 1:1 onto open_clip's `CustomTextCLIP` state dict
and exports without conversion.

    image: {type: open_clip, model: ViT-B-32, pretrained: laion2b_s34b_b79k}   # tag: open_clip fetches it
    image: {type: open_clip, model: ViT-B-32, pretrained: /ckpt/epoch_32.pt, pretrained_temperature: true}
    text:  {type: open_clip, model: ViT-B-32, pretrained: local-dir:/exports/clip}
    image: {type: open_clip, model: local-dir:/dl/clip, pretrained: local-dir:/dl/clip}   # a hub download's folder
    text:  {type: open_clip, config: {embed_dim: 64, vision_cfg: {...}, text_cfg: {...}}}

`model: local-dir:DIR` is the architecture of an open_clip folder (its open_clip_config.json, with the
preprocess_cfg and the tokenizer files beside it, as `config_file: DIR/open_clip_config.json`); its weights come
with `pretrained`. `pretrained` is an open_clip tag (resolved by open_clip where a network or its cache has it), a
weights file (.safetensors, or .pt/.bin loaded weights-only; open_clip_train's checkpoints too) or
an open_clip folder; only this tower is built, and its half of the checkpoint is copied (a missing
tensor or a shape mismatch fails naming it). `pretrained_temperature: true` also takes the
checkpoint's logit_scale (and SigLIP logit_bias) as the model's starting temperature.

An architecture whose text_cfg names a Hugging Face tokenizer (`hf_tokenizer_name`, a Hub id: SigLIP's
`timm/ViT-B-16-SigLIP`) reads its files from `tokenizer_folder: DIR` when given, else from the folder of the
`pretrained` weights (the open_clip folder, or the folder a weights file is in) when that holds them (tokenizer.json /
tokenizer_config.json, as a hub download leaves them), else (training) from the folder of `model.init_from` when
that holds them (align.train.init_from.init_from_tokenizer), else from the Hub id; a failed load names the folder
that lacks them.
"""
import contextlib
import copy
import logging
import os
from typing import List, Optional

import torch
from torch import nn

from align.errors import ConfigError
from align.open_clip_files import TOKENIZER_FILES, TOKENIZER_FOLDER, pretrained_file
from align.progress import main_process
from align.text import refuse_surrogates
from align.towers import TOWERS
from align.towers.base import Tower
from align.towers.text_trim import can_trim_text, trimmed_text_forward  # noqa: F401  (align.bench's too)

log = logging.getLogger("align.towers")

_KEYS = {"model", "config", "config_file", "pretrained", "quick_gelu", "lock", "unlocked_groups",
         "grad_checkpointing", "image_mean", "image_std", "resize_mode", "interpolation", "aug_cfg",
         "trim_padding", "pretrained_temperature", TOKENIZER_FOLDER}
# keys only one modality's tower reads: given to the other, they did nothing
_IMAGE_KEYS = ("image_mean", "image_std", "resize_mode", "interpolation", "aug_cfg")
_TEXT_KEYS = ("trim_padding", TOKENIZER_FOLDER)


def _tracing() -> bool:
    """True while exporting (jit trace / ONNX): the trimmed length must not be baked into a graph."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def schema_model_cfg(name: str, key: str) -> dict:
    """The architecture of `model: local-dir:DIR` (DIR/open_clip_config.json with its preprocessing and tokenizer,
    as `config_file:`; the weights come with `pretrained:` or model.init_from, as for a named architecture) or
    `model: hf-hub:ORG/NAME` (its open_clip_config.json fetched, or read from the Hugging Face cache: the same
    preprocessing and tokenizer folder as local-dir:). A Hub that does not answer, or a fetch that fails, is
    one line at once (huggingface_hub retried ~25 s, then a FileNotFoundError traceback)."""
    from open_clip.pretrained import download_pretrained_from_hf
    from align.hub import hub_offline, hub_unreachable
    from align.open_clip_files import OPEN_CLIP_CONFIG, read_config_file
    if name.startswith("local-dir:"):
        path = os.path.join(name[len("local-dir:"):], OPEN_CLIP_CONFIG)
        if not os.path.isfile(path):
            raise ConfigError(f"{key}: no {OPEN_CLIP_CONFIG} in {name[len('local-dir:'):]!r}")
        return read_config_file(path, key)
    host = hub_unreachable()
    try:
        # the file itself, not open_clip.get_model_config (its model_cfg alone): its preprocess_cfg is what the
        # Hub weights were trained with (SigLIP's mean/std 0.5, not OpenAI's), read as for local-dir:
        with hub_offline() if host else contextlib.nullcontext():      # the cache's copy, if any, at once
            path = download_pretrained_from_hf(name[len("hf-hub:"):], filename=OPEN_CLIP_CONFIG)
    except Exception as e:  # noqa: BLE001  offline, no such repo: one line
        why = f"{host} does not answer and it is not in the Hugging Face cache" if host else \
            (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{key}: cannot fetch {name}'s {OPEN_CLIP_CONFIG} ({why}); fetch the folder where a "
                          f"network is and give local-dir:DIR") from None
    return read_config_file(path, key)


def resolve_model_cfg(cfg: dict, where: str) -> dict:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg, ...) a tower section names."""
    import open_clip
    given = [k for k in ("model", "config", "config_file") if cfg.get(k) is not None]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of 'model' (open_clip name), 'config' or 'config_file'")
    if isinstance(cfg.get("model"), str) and cfg["model"].startswith(("local-dir:", "hf-hub:")):
        model_cfg = schema_model_cfg(cfg["model"], f"{where}.model")
    elif cfg.get("model") is not None:
        model_cfg = open_clip.get_model_config(cfg["model"])
        if model_cfg is None:
            raise ConfigError(f"{where}.model: unknown open_clip architecture {cfg['model']!r} "
                              f"(see open_clip.list_models())")
    elif cfg.get("config_file") is not None:
        from align.open_clip_files import read_config_file
        path = cfg["config_file"]
        if not os.path.isfile(path):
            raise ConfigError(f"{where}.config_file: no such file {path!r}")
        model_cfg = read_config_file(path, f"{where}.config_file")   # an open_clip_config.json: its preprocessing too
    else:
        model_cfg = cfg["config"]
        if not isinstance(model_cfg, dict):
            raise ConfigError(f"{where}.config: expected a mapping, got {type(model_cfg).__name__}")
    return copy.deepcopy(model_cfg)


# open_clip builds one tower alone only through private helpers (model._build_vision_tower /
# _build_text_tower), and align imports no other package's private name.  So a tower is built as part of
# open_clip's public CustomTextCLIP, with a stand-in of a few hundred parameters for the other tower.
STANDIN_VISION_CFG = {"image_size": 8, "patch_size": 8, "width": 8, "layers": 1, "head_width": 8}
STANDIN_TEXT_CFG = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}


def build_single_tower(modality: str, embed_dim: int, cfg, quick_gelu: bool = False) -> nn.Module:
    """open_clip's image tower (a dict/CLIPVisionCfg) or text tower (dict/CLIPTextCfg) for `cfg`."""
    from open_clip.model import CustomTextCLIP
    if modality == "image":
        return CustomTextCLIP(embed_dim, cfg, STANDIN_TEXT_CFG, quick_gelu=quick_gelu).visual
    return CustomTextCLIP(embed_dim, STANDIN_VISION_CFG, cfg, quick_gelu=quick_gelu).text


class OpenClipTower(Tower):
    """Wraps an open_clip VisionTransformer / TextTransformer (or timm/HF-backed variant)."""

    def __init__(self, modality: str, embed_dim: int, model_cfg: dict, cfg: dict):
        super().__init__()
        self.modality = modality
        self.embed_dim = embed_dim
        self.model_cfg = model_cfg          # full open_clip model cfg, kept for export
        self.cfg = cfg
        quick_gelu = bool(cfg.get("quick_gelu", model_cfg.get("quick_gelu", False)))
        self.quick_gelu = quick_gelu        # the activation: weights trained with one are wrong under the other
        if modality == "image":
            self.vision_cfg = dict(model_cfg.get("vision_cfg", {}))
            self.net = build_single_tower("image", embed_dim, self.vision_cfg, quick_gelu)
        elif modality == "text":
            self.text_cfg = dict(model_cfg.get("text_cfg", {}))
            self.net = build_single_tower("text", embed_dim, self.text_cfg, quick_gelu)
            self._tokenizer = None
            self.tokenizer_missing_in = None     # the `pretrained` folder without tokenizer files (named on failure)
            # open_clip's reduction_mask tokenizers (random / shuffle / ...) drop tokens at random.
            self.tokenize_is_deterministic = not self.text_cfg.get("tokenizer_kwargs", {}).get("reduction_mask")
        else:
            raise ConfigError(f"model.towers.{modality}: type open_clip builds image or text towers, not {modality!r}")
        if cfg.get("grad_checkpointing"):
            self.set_grad_checkpointing(True)
        self.trim_padding = bool(cfg.get("trim_padding", True))
        self._trimmable = modality == "text" and self._can_trim()  # fixed by the architecture

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        self.net.set_grad_checkpointing(enable)
        return True

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # image [B,3,H,W] | text long [B,L] -> [B,E]
        if self._trimmable and self.trim_padding and not _tracing():
            return trimmed_text_forward(self.net, x)
        return self.net(x)

    # Padding trimming (align.towers.text_trim): same embeddings, less work.
    trim_padding: bool = True

    def _can_trim(self) -> bool:
        return can_trim_text(self.net)

    # -- preprocessing ---------------------------------------------------------------------
    @property
    def image_size(self):
        size = self.vision_cfg.get("image_size", 224)
        return tuple(size) if isinstance(size, (list, tuple)) else size

    def input_shape(self):
        if self.modality != "image":
            return None
        s = self.image_size
        return (3, s, s) if isinstance(s, int) else (3, *s)

    def preprocess(self, train: bool):
        if self.modality != "image":
            return None
        import open_clip
        p = self.preprocess_config()
        return open_clip.image_transform(p["size"], is_train=train, mean=p["mean"], std=p["std"],
                                         resize_mode=p["resize_mode"], interpolation=p["interpolation"],
                                         aug_cfg=self.cfg.get("aug_cfg"))

    def preprocess_config(self) -> dict:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        if self.modality == "text":
            return {"context_length": self.context_length, "tokenizer": self.tokenizer_name()}
        pp = self.model_cfg.get("preprocess_cfg", {})
        return {
            "size": self.image_size,
            "mean": tuple(self.cfg.get("image_mean") or pp.get("mean") or self.vision_cfg.get("image_mean")
                          or OPENAI_DATASET_MEAN),
            "std": tuple(self.cfg.get("image_std") or pp.get("std") or self.vision_cfg.get("image_std")
                         or OPENAI_DATASET_STD),
            "interpolation": self.cfg.get("interpolation") or pp.get("interpolation") or "bicubic",
            "resize_mode": self.cfg.get("resize_mode") or pp.get("resize_mode") or "shortest",
        }

    # -- text --------------------------------------------------------------------------------
    @property
    def context_length(self) -> int:
        return int(self.text_cfg.get("context_length", 77))

    def tokenizer_name(self) -> str:
        return self.text_cfg.get("hf_tokenizer_name") or "open_clip.SimpleTokenizer"

    def tokenize(self, texts: List[str]) -> torch.Tensor:
        if self.modality != "text":
            raise NotImplementedError("image tower has no tokenizer")
        if self._tokenizer is None:
            from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
            kwargs = dict(self.text_cfg.get("tokenizer_kwargs", {}))
            if self.text_cfg.get("hf_tokenizer_name"):       # its files in an open_clip folder, else the name's
                name = self.model_cfg.get(TOKENIZER_FOLDER) or self.text_cfg["hf_tokenizer_name"]
                self._tokenizer = self._hf_tokenizer(HFTokenizer, name, kwargs)
            else:
                # SimpleTokenizer truncates to context_length and writes <end_of_text> in the last slot.
                self._tokenizer = SimpleTokenizer(context_length=self.context_length, **kwargs)
        texts = [texts] if isinstance(texts, str) else list(texts)
        refuse_surrogates(texts)          # as every text tower (align.text): open_clip's would read U+FFFD
        return self._tokenizer(texts)

    def _hf_tokenizer(self, cls, name: str, kwargs: dict):
        """open_clip's HFTokenizer of text_cfg.hf_tokenizer_name (a folder or a Hub id); a missing folder, a failed
        load or a folder without its tokenizer files (an empty vocabulary) is one line naming the key."""
        from align.towers.common import check_hf_tokenizer, hf_location
        key = f"model.towers.{self.modality}.text_cfg.hf_tokenizer_name"
        path, _ = hf_location(name, key)
        try:
            tok = cls(path, context_length=self.context_length, **kwargs)
        except Exception as e:  # noqa: BLE001  missing files, offline Hub id: one line, never a traceback
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            missing = self.tokenizer_missing_in
            where = f"model.towers.{self.modality}"
            raise ConfigError(f"{key}: cannot load the tokenizer {name!r} ({why})" + (
                f"; {missing}, the folder of the pretrained weights, holds no tokenizer files "
                f"({' or '.join(TOKENIZER_FILES)}): copy them there from the tokenizer's download, or set "
                f"{where}.{TOKENIZER_FOLDER}"
                if missing else "")) from None
        check_hf_tokenizer(tok.tokenizer, name, key)
        return tok

    def save_hf_tokenizer(self, out_dir: str) -> None:
        """Writes an hf_tokenizer_name tokenizer's files into out_dir (what open_clip's HFTokenizer(out_dir) reads)."""
        if not self.text_cfg.get("hf_tokenizer_name"):
            raise ConfigError("save_hf_tokenizer: this text tower uses open_clip's SimpleTokenizer (no HF files)")
        self.tokenize(["x"])                     # builds the tokenizer
        self._tokenizer.save_pretrained(out_dir)

    def count_tokens(self, texts: List[str]) -> Optional[List[int]]:
        if self.modality != "text":
            return None
        self.tokenize(["a"])                     # builds the tokenizer
        refuse_surrogates(texts)
        tok = self._tokenizer
        if hasattr(tok, "encode") and hasattr(tok, "sot_token_id"):           # SimpleTokenizer: <sot> text <eot>
            return [len(tok.encode(t)) + 2 for t in texts]
        inner = getattr(tok, "tokenizer", None)                              # open_clip's HFTokenizer
        if inner is not None:
            return [len(inner(t)["input_ids"]) for t in texts]
        return None

    # -- locking / misc -----------------------------------------------------------------------
    def lock(self, unlocked_groups: int = 0) -> None:
        if self.modality == "image":
            self.net.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=True)
        elif hasattr(self.net, "lock"):
            self.net.lock(unlocked_groups, freeze_layer_norm=True)
        else:
            super().lock(unlocked_groups)

    def dummy_input(self, batch_size: int) -> torch.Tensor:
        if self.modality == "image":
            s = self.image_size
            h, w = (s, s) if isinstance(s, int) else s
            return torch.randn(batch_size, 3, h, w)
        # an HF text model inside open_clip (text_cfg.hf_model_name) has its own vocabulary, not CLIP's 49408
        hf_vocab = getattr(getattr(self.net, "config", None), "vocab_size", None)
        vocab = int(self.text_cfg.get("vocab_size") or hf_vocab or 49408)
        return torch.randint(1, vocab - 1, (batch_size, self.context_length))


KEEP_POSITIONS = 20     # Long-CLIP: the first ~20 positions carry most of what CLIP learned; keep them as they are


def stretch_positions(pe: torch.Tensor, length: int, keep: int = KEEP_POSITIONS) -> torch.Tensor:
    """A text tower's positional embedding [n, width] for `length` tokens: the first `keep` rows unchanged, the
    rest linearly interpolated over the remaining length (Zhang et al. 2024, Long-CLIP); fewer tokens: the first
    `length` rows."""
    n = pe.shape[0]
    if length <= n:
        return pe[:length].clone()
    keep = min(keep, n - 1)
    tail = pe[keep:].t()[None].float()                                           # [1, width, n - keep]
    stretched = torch.nn.functional.interpolate(tail, size=length - keep, mode="linear", align_corners=True)
    return torch.cat([pe[:keep], stretched[0].t().to(pe.dtype)], dim=0)          # [length, width]


# open_clip's preprocess_cfg field -> the image tower's recipe key that sets it
PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std", "interpolation": "interpolation",
                   "resize_mode": "resize_mode"}


def check_folder_preprocess(tower, source: str, where: str, tower_where: str) -> None:
    """ConfigError when the open_clip folder `source` preprocesses images (its open_clip_config.json's
    preprocess_cfg, what its weights were trained with) otherwise than `tower` would, for a field its recipe does
    not set: the tower's config names an architecture or a config without the folder's preprocessing, and the
    weights would see images normalised another way without a word."""
    from align.open_clip_files import OPEN_CLIP_CONFIG, folder_preprocess, same_preprocess_value, strip_local_dir
    theirs = folder_preprocess(source) if getattr(tower, "modality", None) == "image" else None
    if not theirs or not hasattr(tower, "preprocess_config"):
        return
    ours = tower.preprocess_config()
    for key, recipe_key in PREPROCESS_KEYS.items():
        if key not in theirs or tower.cfg.get(recipe_key) is not None:
            continue
        a, b = theirs[key], ours[key]
        if not same_preprocess_value(a, b):
            folder = os.path.abspath(strip_local_dir(source))
            folder = os.path.dirname(folder) if os.path.isfile(folder) else folder
            shown = list(a) if isinstance(a, (list, tuple)) else a
            raise ConfigError(f"{where}: {os.path.join(folder, OPEN_CLIP_CONFIG)} preprocesses images with {key} "
                              f"{shown}, this image tower with {list(b) if isinstance(b, tuple) else b}: take the "
                              f"folder's architecture ({tower_where}.model or model.open_clip: local-dir:{folder}) "
                              f"or set {tower_where}.{recipe_key}: {shown}")


def load_pretrained(tower: OpenClipTower, name: Optional[str], pretrained: str, where: str) -> None:
    """Copies the tower's half of an open_clip checkpoint into it (only this tower is built).

    Keeps the checkpoint's logit_scale / logit_bias in `tower.pretrained_scales` (used by
    `pretrained_temperature: true`, see align.train.init_from.apply_tower_temperature)."""
    from align.open_clip_files import folder_quick_gelu, load_file_state, open_clip_to_align
    theirs = folder_quick_gelu(pretrained)
    if theirs is not None and theirs != tower.quick_gelu:
        raise ConfigError(f"{where}.pretrained: {pretrained} was trained with quick_gelu={str(theirs).lower()} but "
                          f"this tower uses quick_gelu={str(tower.quick_gelu).lower()}; set {where}.quick_gelu: "
                          f"{str(theirs).lower()}")
    check_folder_preprocess(tower, pretrained, f"{where}.pretrained", where)
    sd = open_clip_to_align(load_file_state(pretrained_file(name, pretrained, where), f"{where}.pretrained"))
    prefix = f"towers.{tower.modality}.net."
    mine = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    own = tower.net.state_dict()
    if not mine:
        raise ConfigError(f"{where}.pretrained: the checkpoint has no {tower.modality} tower tensors")
    for k, v in own.items():
        if k not in mine:
            raise ConfigError(f"{where}.pretrained: tensor {k!r} of the {tower.modality} tower is not in the "
                              "checkpoint")
        if k.endswith("positional_embedding") and tower.modality == "text" and mine[k].ndim == 2 \
                and mine[k].shape[1:] == v.shape[1:] and mine[k].shape[0] != v.shape[0]:
            # text_cfg.context_length other than the checkpoint's: stretch (or cut) its positions (long text)
            mine[k] = stretch_positions(mine[k], v.shape[0])
            if main_process():      # every process of a launch builds the tower: rank 0 says it
                log.warning("%s.pretrained: text context %d -> %d tokens: the first %d positions kept, the rest "
                            "stretched (Long-CLIP's knowledge-preserved stretching); fine-tune on long captions",
                            where, int(sd[prefix + k].shape[0]), v.shape[0], min(KEEP_POSITIONS, v.shape[0]))
        if tuple(mine[k].shape) != tuple(v.shape):
            raise ConfigError(f"{where}.pretrained: tensor {k!r} has shape {list(mine[k].shape)} in the checkpoint "
                              f"but {list(v.shape)} in the tower")
    tower.net.load_state_dict({k: mine[k] for k in own})
    tower.pretrained_scales = {k: sd[k] for k in ("logit_scale", "logit_bias") if k in sd}


def _check_unread(cfg: dict, modality: str, where: str) -> None:
    """One line for a key this tower would not read: the other modality's, unlocked_groups without lock,
    pretrained_temperature without pretrained."""
    other = [k for k in (_TEXT_KEYS if modality == "image" else _IMAGE_KEYS if modality == "text" else ())
             if k in cfg]
    if other:
        raise ConfigError(f"{where}.{other[0]}: only the {'text' if modality == 'image' else 'image'} tower "
                          f"reads it (this is the {modality} tower)")
    if "unlocked_groups" in cfg and not cfg.get("lock"):
        raise ConfigError(f"{where}.unlocked_groups: only used with lock: true")
    if cfg.get("pretrained_temperature") and not cfg.get("pretrained"):
        raise ConfigError(f"{where}.pretrained_temperature: takes the temperature of the tower's pretrained "
                          f"checkpoint; set {where}.pretrained")


def tokenizer_source(model_cfg: dict, cfg: dict, modality: str, where: str) -> Optional[str]:
    """Where a text tower's Hugging Face tokenizer (text_cfg.hf_tokenizer_name) is read, set as
    model_cfg["tokenizer_folder"]: the tower's `tokenizer_folder`, else (unless the architecture's own folder gave
    one: model: local-dir:DIR) the folder of the `pretrained` weights (DIR, or a weights file's folder) when it
    holds the tokenizer files, as a hub download leaves them; else the Hub id is asked. Returns that folder when it
    lacks them (named if the Hub id then fails), else None."""
    from align.open_clip_files import holds_tokenizer, weights_folder
    if modality != "text":
        return None
    name = (model_cfg.get("text_cfg") or {}).get("hf_tokenizer_name")
    given = cfg.get(TOKENIZER_FOLDER)
    if given is not None:
        if not name:
            raise ConfigError(f"{where}.{TOKENIZER_FOLDER}: this architecture tokenizes with open_clip's "
                              "SimpleTokenizer (its text_cfg names no hf_tokenizer_name): nothing reads the folder")
        if not (isinstance(given, str) and os.path.isdir(given) and holds_tokenizer(given)):
            raise ConfigError(f"{where}.{TOKENIZER_FOLDER}: {given!r} is no folder holding "
                              f"{' or '.join(TOKENIZER_FILES)}")
        model_cfg[TOKENIZER_FOLDER] = os.path.abspath(given)
        return None
    if not name or model_cfg.get(TOKENIZER_FOLDER) or not isinstance(cfg.get("pretrained"), str):
        return None
    folder = weights_folder(cfg["pretrained"])
    if folder is None:
        return None
    if holds_tokenizer(folder):
        model_cfg[TOKENIZER_FOLDER] = folder      # hf_tokenizer_name keeps the Hub id (what an export names)
        return None
    return folder


def tokenizer_folder_from(cfg: dict, folders) -> None:
    """cfg["tokenizer_folder"] = the first of `folders` holding tokenizer files, for a text tower section with no
    tokenizer of its own (`tokenizer_folder`, `model: local-dir:|hf-hub:`) whose architecture names an HF one."""
    from align.open_clip_files import holds_tokenizer
    if cfg.get(TOKENIZER_FOLDER) is not None or str(cfg.get("model") or "").startswith(("local-dir:", "hf-hub:")):
        return
    found = next((d for d in folders if d is not None and holds_tokenizer(d)), None)
    if found is None:
        return
    try:
        model_cfg = resolve_model_cfg(cfg, "model.towers.text")
    except ConfigError:
        return                               # the build that follows names the fault
    if (model_cfg.get("text_cfg") or {}).get("hf_tokenizer_name") and not model_cfg.get(TOKENIZER_FOLDER):
        cfg[TOKENIZER_FOLDER] = found


def keep_pretrained_tokenizer(cfg: dict) -> None:
    """For a text tower section whose weights come from elsewhere (a checkpoint; align.towers.drop_pretrained):
    the tokenizer files beside its `pretrained` weights stay its tokenizer (as `tokenizer_folder`), so a run
    trained from such a folder loads without the Hub. Only where the architecture names an HF tokenizer."""
    from align.open_clip_files import weights_folder
    if isinstance(cfg.get("pretrained"), str):
        tokenizer_folder_from(cfg, [weights_folder(cfg["pretrained"])])


@TOWERS.register("open_clip")
def build_open_clip_tower(cfg: dict, modality: str, embed_dim: int) -> OpenClipTower:
    where = f"model.towers.{modality}"
    unknown = set(cfg) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(_KEYS)}")
    _check_unread(cfg, modality, where)
    model_cfg = resolve_model_cfg(cfg, where)
    native = model_cfg.get("embed_dim")
    if cfg.get("pretrained") and native is not None and native != embed_dim:
        raise ConfigError(f"{where}: pretrained {cfg.get('model') or cfg.get('pretrained')} has embed_dim {native}, "
                          f"but model.embed_dim is {embed_dim}")
    missing = tokenizer_source(model_cfg, cfg, modality, where)
    tower = OpenClipTower(modality, embed_dim, model_cfg, cfg)
    if modality == "text":
        tower.tokenizer_missing_in = missing
    if cfg.get("pretrained"):
        load_pretrained(tower, cfg.get("model"), cfg["pretrained"], where)
    if cfg.get("lock"):
        tower.lock(int(cfg.get("unlocked_groups", 0)))
    return tower
