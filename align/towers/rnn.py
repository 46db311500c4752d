"""Recurrent towers: `rnn_text` (token embedding + bidirectional GRU/LSTM) and `rnn_audio` (log-mel frames
into a bidirectional GRU/LSTM), the recurrent encoders the cross-modal alignment literature names beside CNNs
and Transformers.

    towers:
      text:  {type: rnn_text, width: 128, hidden: 128, layers: 1, cell: gru, pooling: mean, context_length: 32}
      audio: {type: rnn_audio, clip_seconds: 1.0, n_mels: 64, hidden: 128, layers: 2, frame_stack: 2}

Keys (both): hidden (units per direction, default 128), layers (stacked bidirectional layers, 1), cell
(gru | lstm; default gru), pooling (mean: masked mean of the [B, T, 2*hidden] outputs | last: the forward
state at the last valid step beside the backward state at the first), dropout (between layers, 0),
proj (linear | mlp | none), lock / unlocked_groups (LiT; groups: input side + layer 0, then one per layer).
rnn_text: width (token embedding size, 128), context_length (tokens, 77). It tokenizes with open_clip's
  SimpleTokenizer (the BPE vocabulary ships inside open_clip; 49408 ids, pad id 0, <end_of_text> the
  largest id), so its exports carry the same tokenizer files as an open_clip text tower.
rnn_audio: the audio front-end keys of `audio_features.py` (shared with `audio` and `audio_cnn`), and
  frame_stack (k consecutive 10 ms frames concatenated into one step: k x fewer steps, default 1).

Padding never changes an embedding: a caption padded to any length embeds as the unpadded one.  The forward
direction reads tokens left to right, so positions before the padding never see it; the backward direction
runs a second unidirectional RNN over each row reversed *within its own length* (a gather, no packed
sequences), so it starts at the row's last real token instead of at the padding.  This keeps the tower one
plain graph of GRU/LSTM + gather ops that the TorchScript ONNX exporter writes and onnxruntime runs.

Gradient checkpointing recomputes each bidirectional layer in backward (torch.utils.checkpoint).
open_clip format cannot hold these towers (its text towers are transformers or HF models): `align export`
writes them in align and ONNX form and says so in one line.
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from align.errors import ConfigError
from align.towers import TOWERS
from align.towers.audio_features import AudioFrontend, AudioPreprocess
from align.towers.common import (LockableTower, SimpleTokenizerText, apply_lock, build_projection,
                                 build_scratch_tower, check_cfg, lock_spec, pos_int)

RNN_KEYS = ("hidden", "layers", "cell", "pooling", "dropout", "proj", "lock", "unlocked_groups")
TEXT_KEYS = RNN_KEYS + ("width", "context_length")
AUDIO_KEYS = RNN_KEYS + ("frame_stack",)
CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
POOLINGS = ("mean", "last")


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T, C] -> [B, T, C]: row b's first lengths[b] steps reversed, the steps after them left in place.

    Applying it twice gives x back, so the same call maps the backward RNN's outputs to input order."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)               # [1, T]
    n = lengths.unsqueeze(1)                                                  # [B, 1]
    idx = torch.where(t < n, n - 1 - t, t)                                    # [B, T]
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class BiLayer(nn.Module):
    """One bidirectional layer from two unidirectional RNNs: [B, T, C] (+ lengths [B]) -> [B, T, 2H]."""

    def __init__(self, in_dim: int, hidden: int, cell: str):
        super().__init__()
        self.fwd = CELLS[cell](in_dim, hidden, batch_first=True)
        self.bwd = CELLS[cell](in_dim, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        f = self.fwd(x)[0]                                                    # [B, T, H]
        b = reverse_within_length(self.bwd(reverse_within_length(x, lengths))[0], lengths)
        return torch.cat([f, b], dim=-1)


class BiRNN(nn.Module):
    """Stacked BiLayers with dropout between them, and mean or last pooling: -> [B, 2H]."""

    def __init__(self, in_dim: int, hidden: int, layers: int, cell: str, pooling: str, dropout: float,
                 where: str):
        super().__init__()
        if cell not in CELLS:
            raise ConfigError(f"{where}.cell: {cell!r} is not one of {', '.join(CELLS)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"{where}.pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"{where}.dropout: must be in [0, 1), got {dropout!r}")
        hidden, layers = pos_int(hidden, "hidden", where), pos_int(layers, "layers", where)
        self.hidden, self.cell, self.pooling = hidden, cell, pooling
        self.layers = nn.ModuleList(BiLayer(in_dim if i == 0 else 2 * hidden, hidden, cell) for i in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:   # [B, T, C], [B] -> [B, 2H]
        for i, layer in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, lengths, use_reentrant=False)
            else:
                x = layer(x, lengths)                                          # [B, T, 2H]
        if self.pooling == "last":
            h = self.hidden
            last = x.gather(1, (lengths - 1).view(-1, 1, 1).expand(-1, 1, h)).squeeze(1)   # fwd at step n-1
            return torch.cat([last, x[:, 0, h:]], dim=-1)                      # bwd ends at step 0
        mask = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).to(x.dtype)
        return (x * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)


class _RNNTower(LockableTower):
    rnn: BiRNN

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        self.rnn.grad_checkpointing = enable
        return True

    def _input_group(self) -> List:
        raise NotImplementedError

    def lock_groups(self) -> List:
        layers = list(self.rnn.layers)
        return [[*self._input_group(), layers[0]], *layers[1:]]


class RNNTextTower(SimpleTokenizerText, _RNNTower):
    """Token embedding + bidirectional GRU/LSTM + pooling + projection; see the module docstring."""

    def __init__(self, embed_dim: int, *, width: int = 128, hidden: int = 128, layers: int = 1, cell: str = "gru",
                 pooling: str = "mean", dropout: float = 0.0, context_length: int = 77, proj: str = "linear",
                 where: str = "model.towers.text"):
        super().__init__()
        self.embed_dim = embed_dim
        self._set_tokenizer(context_length, where, min_length=2, why="start and end tokens")
        self.token_embedding = nn.Embedding(self.vocab_size, pos_int(width, "width", where))
        self.rnn = BiRNN(width, hidden, layers, cell, pooling, dropout, where)
        self.head = build_projection(2 * hidden, embed_dim, proj, where)

    def lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """long [B, L] -> [B]: tokens up to and including <end_of_text> (the largest id, as open_clip pools)."""
        return ids.argmax(dim=1) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:                     # long [B, L] -> [B, D]
        with self.trunk_context():
            h = self.rnn(self.token_embedding(x), self.lengths(x))           # [B, 2H]
        return self.head(h)

    def _input_group(self) -> List:
        return [self.token_embedding]

    def preprocess_config(self) -> dict:
        return {"tower": "rnn_text", "context_length": self.context_length, "tokenizer": "open_clip.SimpleTokenizer",
                "cell": self.rnn.cell, "pooling": self.rnn.pooling}


class RNNAudioTower(_RNNTower):
    """Log-mel frames [B, n_mels, T] -> (frame_stack) -> bidirectional GRU/LSTM -> pooling -> projection."""

    modality = "audio"

    def __init__(self, fe: AudioFrontend, embed_dim: int, *, hidden: int = 128, layers: int = 1, cell: str = "gru",
                 pooling: str = "mean", dropout: float = 0.0, frame_stack: int = 1, proj: str = "linear",
                 where: str = "model.towers.audio"):
        super().__init__()
        self.fe, self.embed_dim = fe, embed_dim
        self.frame_stack = pos_int(frame_stack, "frame_stack", where)
        if self.frame_stack > fe.n_frames:
            raise ConfigError(f"{where}.frame_stack: {frame_stack} is more than the clip's {fe.n_frames} frames")
        self.steps = fe.n_frames // self.frame_stack                         # trailing frames beyond are dropped
        self.in_norm = nn.LayerNorm(fe.n_mels * self.frame_stack)
        self.rnn = BiRNN(fe.n_mels * self.frame_stack, hidden, layers, cell, pooling, dropout, where)
        self.head = build_projection(2 * hidden, embed_dim, proj, where)

    def preprocess(self, train: bool):
        return AudioPreprocess(self.fe, train)

    def dummy_input(self, batch_size: int) -> torch.Tensor:                # [B, n_mels, frames]
        return torch.randn(batch_size, self.fe.n_mels, self.fe.n_frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                     # [B, n_mels, T] -> [B, D]
        want = (self.fe.n_mels, self.fe.n_frames)
        if x.dim() != 3 or tuple(x.shape[1:]) != want:
            raise ValueError(f"RNNAudioTower: expected [B, {want[0]}, {want[1]}] log-mel, got {list(x.shape)}")
        k, b = self.frame_stack, x.shape[0]
        with self.trunk_context():
            h = x[:, :, :self.steps * k].transpose(1, 2).reshape(b, self.steps, k * want[0])   # [B, S, k*n_mels]
            lengths = torch.full((b,), self.steps, dtype=torch.long, device=x.device)        # clips are full length
            h = self.rnn(self.in_norm(h), lengths)                                           # [B, 2H]
        return self.head(h)

    def encode_clips(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, n_mels, frames] -> [B, embed_dim]: mean of the L2-normalised clip embeddings."""
        b, c = x.shape[:2]
        return F.normalize(self(x.flatten(0, 1)), dim=-1).view(b, c, -1).mean(dim=1)

    def _input_group(self) -> List:
        return [self.in_norm]

    def preprocess_config(self) -> dict:
        return dict(self.fe.config(), tower="rnn_audio", input_shape=[self.fe.n_mels, self.fe.n_frames],
                    frame_stack=self.frame_stack, cell=self.rnn.cell, pooling=self.rnn.pooling)


@TOWERS.register("rnn_text")
def build_rnn_text_tower(cfg: dict, modality: str, embed_dim: int) -> RNNTextTower:
    """Factory for `type: rnn_text`."""
    return build_scratch_tower(RNNTextTower, cfg, modality, embed_dim, TEXT_KEYS, tower_type="rnn_text",
                               encodes="text", hint=" (audio: rnn_audio)")


@TOWERS.register("rnn_audio")
def build_rnn_audio_tower(cfg: dict, modality: str, embed_dim: int) -> RNNAudioTower:
    """Factory for `type: rnn_audio`."""
    where = f"model.towers.{modality}"
    if modality != "audio":
        raise ConfigError(f"{where}: rnn_audio encodes the 'audio' modality, not {modality!r} (text: rnn_text)")
    fe_keys = AudioFrontend.keys()
    check_cfg(cfg, list(fe_keys) + list(AUDIO_KEYS), where)
    try:
        fe = AudioFrontend(**{k: cfg[k] for k in fe_keys if k in cfg}).validate(where)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    rest = {k: v for k, v in cfg.items() if k in AUDIO_KEYS and k not in ("lock", "unlocked_groups")}
    return apply_lock(RNNAudioTower(fe, embed_dim, where=where, **rest), lock_spec(cfg, where))
