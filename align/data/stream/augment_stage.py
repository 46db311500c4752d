"""The augmentation stage base: the STAGES registry, `register`, the per-sample seeds and the `Stage` class.

align.data.stream.augment (the chains, the image and text stages) and align.data.stream.augment_audio (the audio
stages) define the stages on this base; importing align.data.stream.augment registers them all.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Dict, Optional, Union

import numpy as np

from align.errors import ConfigError
from align.registry import Registry

STAGES: Registry = Registry("augmentation")


def register(name: str) -> Callable[[type], type]:
    """STAGES.register, also telling the stage class its type name (for its error messages)."""
    def deco(cls: type) -> type:
        cls.type_name = name
        return STAGES.register(name)(cls)
    return deco


def sample_seed(seed: int, epoch: Union[int, str], shard: Optional[str], key: str) -> int:
    """A 64-bit seed that names one visit of one sample (no global state involved); `epoch` is the visit
    (align.data.stream.decode.visit: the epoch, with data.resampled also the stream and draw); `shard` is the shard's
    file name (align.data.stream.decode.shard_name), so where the shards are stored does not matter."""
    text = f"align:augment:{seed}:{epoch}:{shard}:{key}".encode("utf-8", "surrogateescape")   # keys may hold surrogates
    h = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(h, "little")


def stage_rng(seed: int, stage: int) -> np.random.Generator:
    """The generator of stage number `stage` for one sample visit (`sample_seed`)."""
    return np.random.default_rng([seed, stage])


# ---- parameter checking --------------------------------------------------------------------

class Stage:
    """One augmentation: checked parameters, applied with an explicit generator."""

    type_name = ""
    modality = ""           # "image" | "audio" | "text"
    level = ""              # image: "pil"; audio: "wave" (clip [C, L]) or "logmel" ([n_mels, T]); text: "str"
    defaults: Dict[str, Any] = {}

    def __init__(self, params: dict, where: str):
        unknown = sorted(set(params) - set(self.defaults) - {"type", "p"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} for type {self.type_name}; valid: "
                              f"{sorted(set(self.defaults) | {'p'})}")
        self.where = where
        self.p = self._num(params.get("p", getattr(self, "default_p", 1.0)), "p", 0, 1)
        self.params = {k: params.get(k, v) for k, v in self.defaults.items()}
        self.check()

    def check(self) -> None:
        pass

    def _num(self, v, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ConfigError(f"{self.where}.{key}: expected a number in [{lo}, {hi}], got {v!r}")
        return float(v)

    def _range(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> tuple:
        v = self.params[key]
        if not (isinstance(v, (list, tuple)) and len(v) == 2):
            raise ConfigError(f"{self.where}.{key}: expected [low, high], got {v!r}")
        a, b = (self._num(x, key, lo, hi) for x in v)
        if a > b:
            raise ConfigError(f"{self.where}.{key}: low {a} is above high {b}")
        return a, b

    def _int(self, key: str, lo: int = 0) -> int:
        v = self.params[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{self.where}.{key}: expected an integer >= {lo}, got {v!r}")
        return v

    def __call__(self, x, rng: np.random.Generator, **kw):
        if self.p < 1 and rng.random() >= self.p:
            return x
        return self.apply(x, rng, **kw)

    def apply(self, x, rng, **kw):
        raise NotImplementedError
