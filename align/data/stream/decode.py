"""Turn one raw webdataset sample into model inputs, and a list of them into a batch.

Shard conventions: `align.wds.format` (extensions per modality; `txt` is UTF-8,
one caption per line; `cls` an int; `json` ignored here).  `decode_raw` decodes
a sample's requested modalities (no transforms: what `align data inspect`
checks); anything broken raises `SkipSample(reason)` so the caller counts it.
Transform contract (see `build_train_loader`):

- "image": PIL.Image (RGB) -> Tensor[3, H, W]
- "text":  list[str] -> LongTensor[1, L]; called per sample with [caption]
           and squeezed to [L] here, so tokenization runs in the workers
- "audio": (np.float32 mono wave [T], sample_rate) -> Tensor[...] of a fixed
           shape in training (the transform crops/pads and computes features)

Hard negatives (`SampleDecoder(hard_negatives=K)`): a sample's `neg.txt` member holds captions that must
not match it, one per line. Up to K of them (the first K; the rest are counted in `negatives_dropped`)
are tokenized with the text transform, and collate() pads them to batch["neg_text"] long [B, K, L] with
batch["neg_text_mask"] bool [B, K] (False: no negative there) for align.losses.HardNegativeClipLoss.
"""

from __future__ import annotations

import io
import random
from typing import Callable

import numpy as np
import torch

from align.media.audio import decode_audio
from align.data.stream.augment import sample_seed
from align.data.stream.faults import (
    BAD_CLS, EMPTY_CAPTION, FEW_MODALITIES, TRANSFORM_FAILED, UNDECODABLE_AUDIO, UNDECODABLE_IMAGE,
    UNDECODABLE_TEXT, SkipSample,
)
from align.errors import DataError
from align.wds.format import LABEL_EXT, MODALITIES, MODALITY_EXTS, NEG_EXT, pick


def decode_image(data: bytes):
    """Image bytes -> RGB PIL.Image (fully decoded, so truncation is caught here)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def captions(data: bytes) -> list[str]:
    """`txt` bytes -> non-empty stripped lines, or the strings of a JSON list (may be empty: the caller skips)."""
    text = data.decode("utf-8")
    if text.lstrip().startswith("["):  # several captions written as a JSON list
        import json
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list) and all(isinstance(c, str) for c in items):
            return [c.strip() for c in items if c.strip()]
    return [line.strip() for line in text.splitlines() if line.strip()]


def present(raw: dict, modalities) -> dict[str, str]:
    """modality -> the extension holding it, for the given modalities present in `raw`."""
    found = {}
    for m in modalities:
        ext = pick(raw, m)
        if ext is not None:
            found[m] = ext
    return found


def decode_raw(raw: dict, modalities, min_modalities: int = 2, caption_seed: str | None = None,
               negatives: bool = False) -> dict:
    """raw sample -> {modality: PIL image | (wave [T], sr) | [caption], "cls": int (-1 = none)}.

    Raises SkipSample(reason) for the first problem found.  caption_seed: pick one caption line at
    random, seeded by it (training); None picks the first.  negatives: with text, also "neg": the
    captions of the `neg.txt` member ([] when the sample has none).
    """
    found = present(raw, modalities)
    if len(found) < min_modalities:
        reason = FEW_MODALITIES if min_modalities == 2 else (
            "no requested modality" if min_modalities == 1 else f"fewer than {min_modalities} modalities")
        raise SkipSample(reason, f"has {sorted(k for k in raw if not k.startswith('__'))}")
    out: dict = {}
    for m, ext in found.items():
        data = raw[ext]
        if m == "image":
            try:
                out[m] = decode_image(data)
            except Exception as exn:
                raise SkipSample(UNDECODABLE_IMAGE, f"{ext}: {exn!r}") from None
        elif m == "audio":
            try:
                out[m] = decode_audio(data, name=raw["__key__"])
            except Exception as exn:
                raise SkipSample(UNDECODABLE_AUDIO, f"{ext}: {exn!r}") from None
        else:
            try:
                lines = captions(data)
            except UnicodeDecodeError as exn:
                raise SkipSample(UNDECODABLE_TEXT, repr(exn)) from None
            if not lines:
                raise SkipSample(EMPTY_CAPTION)
            if caption_seed is not None and len(lines) > 1:
                out[m] = [lines[random.Random(caption_seed).randrange(len(lines))]]
            else:
                out[m] = [lines[0]]
    if negatives and "text" in out:
        try:
            out["neg"] = captions(raw[NEG_EXT]) if NEG_EXT in raw else []
        except UnicodeDecodeError as exn:
            raise SkipSample(UNDECODABLE_TEXT, f"{NEG_EXT}: {exn!r}") from None
    out["cls"] = -1
    if LABEL_EXT in raw:
        try:
            out["cls"] = int(raw[LABEL_EXT].decode("utf-8").strip())
        except (UnicodeDecodeError, ValueError):
            raise SkipSample(BAD_CLS, repr(raw[LABEL_EXT][:20])) from None
    return out


class SampleDecoder:
    """Decode + transform one raw sample; collate decoded samples into a batch.

    train=True picks a random caption (seeded by seed, epoch, shard URL and
    key, so a resumed run picks the same one); train=False picks the first.
    """

    def __init__(self, modalities: list[str], transforms: dict[str, Callable], *, train: bool,
                 seed: int = 0, min_modalities: int = 2, augment=None, hard_negatives: int = 0):
        unknown = [m for m in modalities if m not in MODALITY_EXTS]
        if unknown or not modalities:
            raise DataError(f"data modalities {list(modalities)}: each must be one of {list(MODALITIES)}")
        missing = [m for m in modalities if m not in transforms]
        if missing:
            raise DataError(f"data modalities {list(modalities)}: no transform given for {missing}")
        self.modalities = list(modalities)
        self.transforms = transforms
        self.train = train
        self.seed = seed
        self.min_modalities = min(min_modalities, len(self.modalities))
        if isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int) or hard_negatives < 0:
            raise DataError(f"hard_negatives must be an integer >= 0, got {hard_negatives!r}")
        if hard_negatives and "text" not in self.modalities:
            raise DataError("hard_negatives are captions: they need the 'text' modality")
        self.hard_negatives = hard_negatives       # K: negatives kept per sample (the batch is padded to K)
        self.negatives_dropped = 0                 # negatives beyond K, in this process (worker)
        self._templates: dict[str, torch.Tensor] = {}
        # align.data.stream.augment.Augmenter (training only): image stages before the image transform, wave
        # stages after the audio front end's per-sample step, log-mel stages after its per-batch step.
        self.augment = augment if train else None
        if self.augment and self.augment.wave_stages + self.augment.logmel_stages and "audio" in transforms \
                and not hasattr(transforms["audio"], "per_batch"):
            raise DataError("data.augment.audio needs the audio towers' two-stage front end (per_sample/per_batch)")

    def __call__(self, raw: dict, epoch: int) -> dict:
        """raw sample -> {"__key__", modality: Tensor, ..., "cls": int}; raises SkipSample."""
        seed = f"align:caption:{self.seed}:{epoch}:{raw.get('__url__')}:{raw['__key__']}" if self.train else None
        decoded = decode_raw(raw, self.modalities, self.min_modalities, seed, negatives=self.hard_negatives > 0)
        out = {"__key__": raw["__key__"], "cls": decoded.pop("cls")}
        negs = decoded.pop("neg", [])
        if negs:
            self.negatives_dropped += max(0, len(negs) - self.hard_negatives)
            try:
                out["neg_text"] = self._negatives(negs[:self.hard_negatives])        # long [k, L]
            except Exception as exn:
                raise SkipSample(TRANSFORM_FAILED.format(modality="text"), f"{NEG_EXT}: {exn!r}") from None
        aug_seed = None
        if self.train and self.augment:
            # augmentation draws from its own generators, seeded by (seed, epoch, shard URL, key); the towers'
            # own random transforms are reseeded per sample by the pipeline (align.data.stream.loader)
            aug_seed = sample_seed(self.seed, epoch, raw.get("__url__"), raw["__key__"])
            out["__aug__"] = aug_seed
        for m, value in decoded.items():
            try:
                if m == "image" and self.augment and self.augment.image_stages:
                    value = self.augment.image(value, aug_seed)
                out[m] = self._apply(m, value)
                if m == "audio" and self.augment and self.augment.wave_stages:
                    out[m] = self.augment.wave(out[m], self.transforms[m].fe.sample_rate, aug_seed)
            except Exception as exn:
                raise SkipSample(TRANSFORM_FAILED.format(modality=m), repr(exn)) from None
        return out

    def _apply(self, modality: str, value) -> torch.Tensor:
        tf = self.transforms[modality]
        # A two-stage transform (e.g. the audio front end) does its per-sample part here and its
        # batched part in collate(): see AudioPreprocess.per_sample / per_batch.
        t = tf.per_sample(value) if hasattr(tf, "per_batch") else tf(value)
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        if modality == "text" and t.ndim >= 2 and t.shape[0] == 1:
            t = t[0]  # [1, L] -> [L]
        return t

    def _negatives(self, negs: list[str]) -> torch.Tensor:
        """k captions -> long [k, L] with the text transform (it tokenizes a list in one call)."""
        t = torch.as_tensor(self.transforms["text"](negs))
        if t.ndim != 2 or t.shape[0] != len(negs):
            raise ValueError(f"the text transform gave {tuple(t.shape)} for {len(negs)} captions")
        return t

    def template(self, modality: str) -> torch.Tensor:
        """A zero tensor shaped like this modality's transform output (from a dummy input).

        Only needed when no sample of a batch has the modality, to fill its slot.
        """
        if modality not in self._templates:
            from PIL import Image

            dummy = {
                "image": Image.new("RGB", (256, 256)),
                "audio": (np.zeros(16000, dtype=np.float32), 16000),
                "text": ["a"],
            }[modality]
            try:
                t = self._apply(modality, dummy)
            except Exception as exn:
                raise DataError(
                    f"transforms['{modality}'] failed on a dummy input ({exn!r}); it is needed to build "
                    f"the zero placeholder for batches without any {modality}") from None
            self._templates[modality] = torch.zeros_like(t)
        return self._templates[modality]

    def collate(self, samples: list[dict]) -> dict:
        """Decoded samples -> batch dict.

        {m: Tensor[B, ...], f"{m}_mask": BoolTensor[B], "cls": LongTensor[B] (-1 = none),
         "__key__": list[str]}; a missing modality is filled with zeros.
        """
        batch: dict = {"__key__": [s["__key__"] for s in samples]}
        for m in self.modalities:
            have = [s[m] for s in samples if m in s]
            ref = have[0] if have else self.template(m)
            for t in have:
                if t.shape != ref.shape:
                    keys = [s["__key__"] for s in samples if m in s]
                    raise DataError(
                        f"transforms['{m}'] returned shapes {tuple(ref.shape)} ({keys[0]}) and {tuple(t.shape)} "
                        f"in one batch; the {m} transform must crop/pad to a fixed shape")
            zero = torch.zeros_like(ref)
            batch[m] = torch.stack([s[m] if m in s else zero for s in samples])
            tf = self.transforms[m]
            if hasattr(tf, "per_batch"):
                try:
                    batch[m] = tf.per_batch(batch[m])
                    if m == "audio" and self.augment and self.augment.logmel_stages:
                        batch[m] = self.augment.logmel(batch[m], [s.get("__aug__", 0) for s in samples])
                except Exception as exn:   # cannot be pinned on one sample: a transform bug, stated plainly
                    raise DataError(f"transforms['{m}'].per_batch failed on a batch of {len(samples)} "
                                    f"({batch['__key__'][0]}, ...): {exn!r}") from None
            batch[f"{m}_mask"] = torch.tensor([m in s for s in samples], dtype=torch.bool)
        batch["cls"] = torch.tensor([s["cls"] for s in samples], dtype=torch.long)
        if self.hard_negatives:
            self._collate_negatives(samples, batch)
        return batch

    def _collate_negatives(self, samples: list[dict], batch: dict) -> None:
        """batch["neg_text"] long [B, K, L] (0 = padding) and batch["neg_text_mask"] bool [B, K]."""
        b, k, length = len(samples), self.hard_negatives, batch["text"].shape[-1]
        neg = torch.zeros(b, k, length, dtype=batch["text"].dtype)
        mask = torch.zeros(b, k, dtype=torch.bool)
        for i, s in enumerate(samples):
            if "neg_text" in s:
                n = s["neg_text"].shape[0]
                neg[i, :n], mask[i, :n] = s["neg_text"], True
        batch["neg_text"], batch["neg_text_mask"] = neg, mask
