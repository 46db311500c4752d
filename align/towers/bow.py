"""Bag-of-words text tower, `bow_text`: token embeddings averaged over a caption's words, then a projection.

    towers:
      text: {type: bow_text, width: 64, context_length: 24, clean: canonicalize}

The text encoder of DeViSE and of the first visual-semantic embeddings (a caption as the mean of its word
vectors), for small data whose captions name a class in a few wordings ("someone saying three", "the spoken
number 3"). A transformer trained on six such wordings learns their combinations and places wordings it never
saw (a zero-shot template, "a recording of someone saying {c}") where it likes; a mean of word vectors has no
combinations to learn: any caption holding the class word lands near that word's direction, so every template
of a class meets the audio that the class word met in training. It cannot model word order or negation, which is
why the large recipes use transformers.

Keys: width (token embedding size, default 128), context_length (tokens, 77), clean (open_clip SimpleTokenizer's
text cleaning: lower | whitespace | canonicalize; default lower, as open_clip), punctuation (with clean:
canonicalize: ascii, the default, or unicode), proj (linear | mlp | none), lock / unlocked_groups (LiT: one group,
the embedding table and its LayerNorm).

Punctuation: `clean: canonicalize` is open_clip's, which deletes ASCII punctuation (string.punctuation) after ftfy has
straightened curly quotes and narrowed full-width forms: '"hello"', '“hello”' and 'ｈｅｌｌｏ！' read as 'hello', but
'«hello»', 'hello…', '¿hello', 'hello—' or '「hello」' keep the mark as a token of its own, which the mean of word
embeddings takes in (another vector than 'hello'). `punctuation: unicode` (opt-in: the default stays as the shipped
recipe measured) also deletes every character of a Unicode punctuation category (P*) from the canonicalized text.
There is no vocabulary built from the data (the BPE vocabulary is fixed), so captions, zero-shot prompts and the ONNX
export's tokenizer (preprocess.json `punctuation`) all go through this one cleaning.

Tokens: open_clip's SimpleTokenizer (the BPE vocabulary ships inside open_clip: 49408 ids, pad 0,
<end_of_text> the largest id), as `rnn_text`. The mean is over the word tokens between <start_of_text> and
<end_of_text>, so padding and the two markers never change an embedding; a caption of no words embeds as the
zero vector through the LayerNorm (its bias) and the projection.
"""
import unicodedata
from typing import List

import torch
from torch import nn

from align.errors import ConfigError
from align.towers import TOWERS
from align.towers.common import LockableTower, SimpleTokenizerText, build_projection, build_scratch_tower, pos_int

KEYS = ("width", "context_length", "clean", "punctuation", "proj", "lock", "unlocked_groups")
CLEANS = ("lower", "whitespace", "canonicalize")
PUNCTUATIONS = ("ascii", "unicode")


def drop_punctuation(text: str) -> str:
    """`text` without its Unicode punctuation (categories Pc Pd Ps Pe Pi Pf Po), whitespace runs made one space."""
    return " ".join("".join(c for c in text if not unicodedata.category(c).startswith("P")).split())


class UnicodePunctuationClean:
    """A SimpleTokenizer clean_fn: its own cleaning (`base`), then drop_punctuation. A class, not a lambda, so a tower
    handed to spawned data workers still pickles."""

    def __init__(self, base):
        self.base = base

    def __call__(self, text: str) -> str:
        return drop_punctuation(self.base(text))


def word_mask(ids: torch.Tensor) -> torch.Tensor:
    """long [B, L] -> bool [B, L]: True at the word tokens, after <start_of_text> (position 0) and before
    <end_of_text> (the largest id in the row, as open_clip pools); False at the markers and the padding."""
    t = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)        # [1, L]
    eot = ids.argmax(dim=1, keepdim=True)                                  # [B, 1]
    return (t >= 1) & (t < eot)


class BagOfWordsTextTower(SimpleTokenizerText, LockableTower):
    """Token embedding -> masked mean over the words -> LayerNorm -> projection; see the module docstring."""

    def __init__(self, embed_dim: int, *, width: int = 128, context_length: int = 77, clean: str = "lower",
                 punctuation: str = "ascii", proj: str = "linear", where: str = "model.towers.text"):
        super().__init__()
        if clean not in CLEANS:
            raise ConfigError(f"{where}.clean: {clean!r} is not one of {', '.join(CLEANS)}")
        if punctuation not in PUNCTUATIONS:
            raise ConfigError(f"{where}.punctuation: {punctuation!r} is not one of {', '.join(PUNCTUATIONS)}")
        if punctuation != "ascii" and clean != "canonicalize":
            raise ConfigError(f"{where}.punctuation: {punctuation} needs clean: canonicalize (clean: {clean} keeps "
                              f"all punctuation)")
        self.embed_dim = embed_dim
        self._set_tokenizer(context_length, where, min_length=3, why="start, a word, end", clean=clean)
        if punctuation == "unicode":
            self._tokenizer.clean_fn = UnicodePunctuationClean(self._tokenizer.clean_fn)
        self.clean, self.punctuation = clean, punctuation
        # ONNX export writes these beside the BPE file, so the exported tokenizer cleans text the same way
        self.text_cfg = {"tokenizer_kwargs": {"clean": clean}}
        self.token_embedding = nn.Embedding(self.vocab_size, pos_int(width, "width", where))
        self.ln = nn.LayerNorm(width)
        self.head = build_projection(width, embed_dim, proj, where)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                     # long [B, L] -> [B, D]
        with self.trunk_context():
            m = word_mask(x).unsqueeze(-1)                                    # [B, L, 1]
            e = self.token_embedding(x) * m                                   # [B, L, W], zero off the words
            h = e.sum(dim=1) / m.sum(dim=1).clamp(min=1)                      # [B, W]; no words -> 0
            h = self.ln(h)
        return self.head(h)

    def lock_groups(self) -> List:
        return [[self.token_embedding, self.ln]]

    def preprocess_config(self) -> dict:
        return {"tower": "bow_text", "context_length": self.context_length, "tokenizer": "open_clip.SimpleTokenizer",
                "clean": self.clean, "punctuation": self.punctuation, "pooling": "mean of the word tokens"}


@TOWERS.register("bow_text")
def build_bow_text_tower(cfg: dict, modality: str, embed_dim: int) -> BagOfWordsTextTower:
    """Factory for `type: bow_text`."""
    return build_scratch_tower(BagOfWordsTextTower, cfg, modality, embed_dim, KEYS, tower_type="bow_text",
                               encodes="text")
