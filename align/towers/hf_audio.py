"""Audio tower over a Hugging Face audio encoder (`type: hf_audio`): AST, the Whisper encoder,
wav2vec2 / HuBERT, the CLAP audio model, ...

    towers:
      audio: {type: hf_audio, model: /models/ast-finetuned-audioset, lock: true, unlocked_layers: 2}
      audio: {type: hf_audio, model: /models/wav2vec2-base, clip_seconds: 5, pooling: mean}
      audio: {type: hf_audio, model: /models/clap-htsat-unfused}      # ClapModel: its audio_model

Keys: model, clip_seconds (crop length; default: what the feature extractor fixes, e.g.
Whisper's chunk_length, CLAP's max_length_s, AST's max_length frames x 10 ms; else 10 s),
pooling (auto | pooler | cls | mean), proj, lock, unlocked_layers, from_config (true: the architecture from
config.json, no weights read: an align export's tower, whose weights are the export's).

Preprocessing runs per sample in the data workers: (wave, sample_rate) -> mono, resampled to
the extractor's rate, cropped to clip_seconds (random crop in training, centre crop in eval),
then the folder's own `AutoFeatureExtractor`. Models whose extractor returns an attention
mask (wav2vec2/HuBERT with `return_attention_mask: true`) get the wave zero-padded to
clip_seconds and the tower's input packs [2, samples] = (input_values, attention_mask),
so the Tower contract (one tensor per sample, fixed shape per batch) and single-input
ONNX export hold; the mask reaches the encoder and the masked mean pooling.
"""
from typing import Optional

import numpy as np
import torch

from align.errors import ConfigError
from align.towers import TOWERS
from align.towers.audio_features import clip_starts, crop_or_pad, wave_at
from align.towers.common import build_pretrained_tower
from align.towers.hf_encoder import HFEncoderTower

KEYS = ("model", "clip_seconds", "pooling", "proj", "lock", "unlocked_layers", "from_config")
AST_FRAME_SHIFT_S = 0.01       # AST's kaldi fbank: 10 ms per frame


def default_clip_samples(fe) -> Optional[int]:
    """The wave length the extractor itself pads/truncates to, if it fixes one."""
    for attr in ("n_samples", "nb_max_samples"):          # Whisper, CLAP
        if isinstance(getattr(fe, attr, None), int):
            return int(getattr(fe, attr))
    if isinstance(getattr(fe, "max_length", None), int):  # AST: frames
        return int(fe.max_length * AST_FRAME_SHIFT_S * fe.sampling_rate)
    return None


class HFAudioPreprocess:
    """(wave, sample_rate) -> the tower's input for one sample (picklable for data workers)."""

    def __init__(self, extractor, clip_samples: int, has_mask: bool, train: bool):
        self.fe, self.clip, self.has_mask, self.train = extractor, clip_samples, has_mask, train

    def __call__(self, sample, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        rate = int(self.fe.sampling_rate)
        w = wave_at(sample, rate)          # mono at the extractor's rate, clipped as the shard writer stores it
        if w.shape[0] > self.clip:
            start = (int(torch.randint(0, w.shape[0] - self.clip + 1, (1,), generator=generator)) if self.train
                     else int(clip_starts(w.shape[0], self.clip, 1)[0]))
            w = w[start:start + self.clip]
        if self.has_mask:
            out = self.fe(w, sampling_rate=rate, padding="max_length", max_length=self.clip, truncation=True,
                          return_attention_mask=True, return_tensors="pt")
            values = out[self.fe.model_input_names[0]][0].float()                     # [N]
            return torch.stack([values, out["attention_mask"][0].to(values.dtype)])    # [2, N]
        if default_clip_samples(self.fe) is None:        # the extractor does not fix a length: we do
            w = crop_or_pad(np.ascontiguousarray(w, dtype=np.float32), 0, self.clip)
        elif w.shape[0] < rate // 20:    # under 50 ms: shorter than a filterbank window (AST: 25 ms) fails inside
            w = crop_or_pad(np.ascontiguousarray(w, dtype=np.float32), 0, rate // 20)   # transformers; zeros after
        out = self.fe(w, sampling_rate=rate, return_tensors="pt")
        return out[self.fe.model_input_names[0]][0].float()


class HFAudioTower(HFEncoderTower):
    modality = "audio"

    def __init__(self, model: str, embed_dim: int, *, clip_seconds: Optional[float] = None, pooling: str = "auto",
                 proj: str = "linear", from_config: bool = False, where: str = "model.towers.audio"):
        super().__init__()
        from align.towers.hf_encoder import load_preprocessor, load_trunk
        self.extractor = load_preprocessor("AutoFeatureExtractor", model, where, "feature extractor")
        fe = self.extractor
        self.input_name = fe.model_input_names[0]          # input_values | input_features
        self.has_mask = bool(getattr(fe, "return_attention_mask", False)) and "attention_mask" in fe.model_input_names
        if clip_seconds is not None and (isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float))
                                         or clip_seconds <= 0):
            raise ConfigError(f"{where}.clip_seconds: expected a positive number, got {clip_seconds!r}")
        fixed = default_clip_samples(fe)
        self.clip_samples = int(round(clip_seconds * fe.sampling_rate)) if clip_seconds else (fixed or
                                                                                               10 * fe.sampling_rate)
        self.model_name = model
        trunk = load_trunk(model, "audio", where, pooling, from_config=from_config)
        self._finish(trunk, embed_dim, pooling, proj, where)

    def preprocess(self, train: bool):
        return HFAudioPreprocess(self.extractor, self.clip_samples, self.has_mask, train)

    def dummy_input(self, batch_size: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        wave = 0.1 * torch.randn(self.clip_samples, generator=g).numpy()
        x = self.preprocess(train=False)((wave, int(self.extractor.sampling_rate)))
        xs = x.expand(batch_size, *x.shape).clone()
        if self.has_mask:
            xs[:, 0] = torch.randn(xs[:, 0].shape)             # mask stays all ones
        else:
            xs = torch.randn(xs.shape)
        return xs

    def preprocess_config(self) -> dict:
        fe = self.extractor
        return {"tower": "hf_audio", "model": self.model_name, "model_type": self.model_type,
                "feature_extractor": type(fe).__name__, "sample_rate": int(fe.sampling_rate),
                "clip_samples": self.clip_samples, "input_name": self.input_name,
                "packed_attention_mask": self.has_mask,
                "extractor_fixes_length": default_clip_samples(fe) is not None,
                "how": "mono, resample to sample_rate, centre crop to clip_samples, then "
                       "transformers.AutoFeatureExtractor.from_pretrained(model)(wave, sampling_rate)"
                       + ("; input = stack([input_values, attention_mask]) padded to clip_samples"
                          if self.has_mask else "")}


@TOWERS.register("hf_audio")
def build_hf_audio_tower(cfg: dict, modality: str, embed_dim: int) -> HFAudioTower:
    return build_pretrained_tower(HFAudioTower, cfg, modality, embed_dim, KEYS, tower_type="hf_audio", encodes="audio",
                                  model_hint="a local transformers folder or a Hub id")
