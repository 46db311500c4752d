"""The Tower contract: one modality's encoder plus its projection head.

Every tower maps a batch of preprocessed inputs to un-normalised embeddings
of the shared size `embed_dim`; `AlignModel` L2-normalises them. A tower also
owns what turns raw inputs into tensors (image transform, tokenizer, audio
features), so data pipelines, benchmarks and exports ask the tower, never a
model name.
"""
from collections import OrderedDict
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn


class Tower(nn.Module):
    """Base class. Subclasses set `modality` and `embed_dim` and implement forward."""

    modality: str = ""        # "image" | "text" | "audio"
    embed_dim: int = 0        # size of the shared embedding space

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, ...] -> [B, embed_dim]
        raise NotImplementedError

    def preprocess(self, train: bool) -> Optional[Callable]:
        """Raw input -> tensor for one sample.

        image: PIL.Image -> float [3, H, W]; audio: (np.float32 wave [T], sample_rate) ->
        float features (see the audio tower); text: None (use `tokenize`).
        """
        return None

    def tokenize(self, texts: List[str]) -> torch.Tensor:  # text towers: list[str] -> long [B, L]
        raise NotImplementedError(f"{type(self).__name__} is not a text tower")

    # False for a tokenizer with random parts (e.g. open_clip's random token dropping): never cached.
    tokenize_is_deterministic: bool = True

    def count_tokens(self, texts: List[str]) -> Optional[List[int]]:
        """Text towers: each text's token count before truncation (special tokens included), so the loader can
        count the captions `tokenize` cuts at `context_length`; None when the tower cannot tell."""
        return None

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        """Recompute activations in backward instead of storing them; False: this tower cannot."""
        return False

    def lock(self, unlocked_groups: int = 0) -> None:
        """Freeze the tower except its last `unlocked_groups` layer groups (LiT)."""
        for p in self.parameters():
            p.requires_grad_(False)

    def dummy_input(self, batch_size: int) -> torch.Tensor:
        """A batch of valid random inputs (synthetic data, ONNX export, FLOP counting)."""
        raise NotImplementedError

    def input_shape(self) -> Optional[Tuple[int, ...]]:
        """Image towers: the [C, H, W] of one sample that `preprocess` makes and forward expects (encode_image
        refuses a batch of another size in one line: a ViT failed deep in torch, a CNN embedded it silently);
        None when the tower takes any size."""
        return None

    def preprocess_config(self) -> dict:
        """JSON-able description of preprocessing (for exports and model cards)."""
        return {}


class CachedTokenize:
    """`tokenize` with an LRU cache of single captions: list[str] -> long [B, L].

    The data pipeline tokenizes one caption per sample in its workers; datasets
    whose captions repeat (class templates, keyword captions) then skip the
    tokenizer (~0.4 ms per caption for open_clip's BPE) on every repeat.  Only
    for deterministic tokenizers (maxsize 0: no cache); batches of several captions pass straight through.
    """

    def __init__(self, tokenize: Callable[[List[str]], torch.Tensor], maxsize: int = 16384, *,
                 count_tokens: Optional[Callable] = None, context_length: Optional[int] = None):
        self.tokenize = tokenize
        self.maxsize = maxsize
        # the tower's own, for counting captions cut at the context length (align.data.stream.decode)
        self.count_tokens, self.context_length = count_tokens, context_length
        self.cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, texts: List[str]) -> torch.Tensor:
        if len(texts) != 1 or self.maxsize <= 0:
            return self.tokenize(texts)
        key = texts[0]
        tokens = self.cache.get(key)
        if tokens is None:
            self.misses += 1
            tokens = self.tokenize([key])                              # [1, L]
            self.cache[key] = tokens
            if len(self.cache) > self.maxsize:
                self.cache.popitem(last=False)
        else:
            self.hits += 1
            self.cache.move_to_end(key)
        return tokens.clone()  # callers may write into their batch; the cached copy stays intact
