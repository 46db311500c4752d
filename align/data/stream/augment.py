"""Training augmentations as data stages, keyed by explicit type names and seeded per sample.

    data:
      augment:
        image: [{type: random_resized_crop, scale: [0.6, 1]}, {type: affine, degrees: 10}, {type: blur}, {type: stroke}]
        audio: [{type: gain, db: [-6, 6]}, {type: noise, snr_db: [10, 30]}, {type: spec_augment}]
        text: [{type: word_dropout, rate: 0.2}, {type: word_shuffle, p: 0.5}]

They run in the data workers (`SampleDecoder`, training only) between decoding and
the tower's own transform:

    image:  PIL RGB --image stages--> tower transform -> [3, H, W]
    text:   the caption drawn for this visit (str) --text stages--> tokenizer -> [L]
    audio:  wave --tower per_sample (resample, trim, normalise, crop)--> clip [C, L] at the
            front end's rate --wave stages--> per_batch log-mel [B, n_mels, T] --log-mel stages-->

Every random draw comes from a generator seeded by (seed, epoch, shard file name, sample key, stage
index), never from a global RNG: a sample gets the same augmentation whichever worker reads it
and whether or not the run was resumed, so exact resume stays bitwise.  A different epoch draws
again.  Captions: a sample with several (one per line, or a JSON list) gets one drawn per visit
(see `align.data.stream.decode.captions`).  Each stage has a probability `p` (default 1, random_erasing 0.5).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch

# the audio stages live in their own module; importing it registers them in STAGES
from align.data.stream import augment_audio  # noqa: F401
from align.data.stream.augment_stage import STAGES, Stage, register, sample_seed, stage_rng
from align.errors import ConfigError

__all__ = ["STAGES", "Stage", "register", "sample_seed", "Augmenter", "build_augmenter"]

# ---- image (PIL RGB in, PIL RGB out, same size) ----------------------------------------------

class ImageStage(Stage):
    modality, level = "image", "pil"


@register("random_resized_crop")
class RandomResizedCrop(ImageStage):
    """A crop of `scale` of the area and aspect `ratio` (log-uniform), resized back to the input size."""
    defaults = {"scale": [0.6, 1.0], "ratio": [3 / 4, 4 / 3]}

    def check(self):
        self.scale, self.ratio = self._range("scale", 0.01, 1), self._range("ratio", 0.05, 20)

    def apply(self, img, rng):
        from PIL import Image
        w, h = img.size
        for _ in range(10):   # torchvision's rejection sampling, with our generator
            area = w * h * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return img.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        return img


@register("affine")
class Affine(ImageStage):
    """Rotation (degrees), translation (fraction of size), shear (degrees) and scale, about the centre."""
    defaults = {"degrees": 10.0, "translate": [0.1, 0.1], "shear": 5.0, "scale": [1.0, 1.0], "fill": 0}

    def check(self):
        self.degrees = self._num(self.params["degrees"], "degrees", 0, 180)
        self.shear = self._num(self.params["shear"], "shear", 0, 60)
        t = self.params["translate"]
        if not (isinstance(t, (list, tuple)) and len(t) == 2):
            raise ConfigError(f"{self.where}.translate: expected [x, y] fractions of the size, got {t!r}")
        self.translate = tuple(self._num(v, "translate", 0, 1) for v in t)   # max shift (x, y)
        self.scale = self._range("scale", 0.1, 10)
        self.fill = int(self._num(self.params["fill"], "fill", 0, 255))

    def apply(self, img, rng):
        import torchvision.transforms.functional as TF
        w, h = img.size
        angle = float(rng.uniform(-self.degrees, self.degrees))
        tx = int(round(rng.uniform(-self.translate[0], self.translate[0]) * w))
        ty = int(round(rng.uniform(-self.translate[1], self.translate[1]) * h))
        shear = [float(rng.uniform(-self.shear, self.shear)), 0.0]
        return TF.affine(img, angle=angle, translate=[tx, ty], scale=float(rng.uniform(*self.scale)),
                         shear=shear, fill=[self.fill] * 3)


@register("color_jitter")
class ColorJitter(ImageStage):
    """Brightness, contrast, saturation (factors 1 +- value) and hue (+- value, at most 0.5), random order."""
    defaults = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0}

    def check(self):
        for k in ("brightness", "contrast", "saturation"):
            self._num(self.params[k], k, 0, 1)
        self._num(self.params["hue"], "hue", 0, 0.5)

    def apply(self, img, rng):
        import torchvision.transforms.functional as TF
        ops = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
               "saturation": TF.adjust_saturation}
        for i in rng.permutation(4):
            k = ("brightness", "contrast", "saturation", "hue")[i]
            v = float(self.params[k])
            if v == 0:
                continue
            if k == "hue":
                img = TF.adjust_hue(img, float(rng.uniform(-v, v)))
            else:
                img = ops[k](img, float(rng.uniform(1 - v, 1 + v)))
        return img


@register("grayscale")
class Grayscale(ImageStage):
    """Grey in all three channels (with probability p, default 0.2)."""
    default_p = 0.2

    def apply(self, img, rng):
        return img.convert("L").convert("RGB")


@register("blur")
class Blur(ImageStage):
    """Gaussian blur with a radius (sigma, pixels) drawn from `sigma`."""
    defaults = {"sigma": [0.1, 1.5]}

    def check(self):
        self.sigma = self._range("sigma", 0, 50)

    def apply(self, img, rng):
        from PIL import ImageFilter
        return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*self.sigma))))


@register("stroke")
class Stroke(ImageStage):
    """Thinner or thicker strokes (light ink on dark): a `size` x `size` min filter (erode) or max filter
    (dilate), each with half the probability (p defaults to 0.5)."""
    default_p = 0.5
    defaults = {"size": 3}

    def check(self):
        self.size = self._int("size", 3)
        if self.size % 2 == 0:
            raise ConfigError(f"{self.where}.size: must be odd, got {self.size}")

    def apply(self, img, rng):
        from PIL import ImageFilter
        f = ImageFilter.MinFilter(self.size) if rng.random() < 0.5 else ImageFilter.MaxFilter(self.size)
        return img.filter(f)


@register("random_erasing")
class RandomErasing(ImageStage):
    """A rectangle of `scale` of the area and aspect `ratio` filled with noise (or `value` 0..255)."""
    default_p = 0.5
    defaults = {"scale": [0.02, 0.2], "ratio": [0.3, 3.3], "value": "random"}

    def check(self):
        self.scale, self.ratio = self._range("scale", 0, 1), self._range("ratio", 0.05, 20)
        v = self.params["value"]
        if v != "random":
            self._num(v, "value", 0, 255)

    def apply(self, img, rng):
        from PIL import Image
        w, h = img.size
        for _ in range(10):
            area = w * h * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            ew, eh = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < ew < w and 0 < eh < h:
                x0, y0 = int(rng.integers(0, w - ew + 1)), int(rng.integers(0, h - eh + 1))
                arr = np.array(img)                                       # [H, W, 3] uint8
                v = self.params["value"]
                arr[y0:y0 + eh, x0:x0 + ew] = (rng.integers(0, 256, (eh, ew, 3), dtype=np.uint8)
                                               if v == "random" else int(v))
                return Image.fromarray(arr)
        return img


# ---- text: the caption string, before the tokenizer ---------------------------------------------

@register("word_dropout")
class WordDropout(Stage):
    """Drop each whitespace-separated word with probability `rate`, keeping at least one (drawn at random).

    A small from-scratch text tower trained on a few caption phrasings learns them as wholes; zero-shot
    prompts are other phrasings. Captions with words missing make the class word carry the embedding."""
    modality, level = "text", "str"
    defaults = {"rate": 0.2}

    def check(self):
        self.rate = self._num(self.params["rate"], "rate", 0, 0.95)

    def apply(self, text, rng):
        words = text.split()
        if len(words) < 2:
            return text
        keep = rng.random(len(words)) >= self.rate
        if not keep.any():
            keep[int(rng.integers(len(words)))] = True
        return " ".join(w for w, k in zip(words, keep) if k)


@register("word_shuffle")
class WordShuffle(Stage):
    """Put the caption's words in a random order (every word kept), with the stage's probability `p`.

    The label-safe sibling of word_dropout (EDA's random swap taken to a permutation): no word is lost, so the
    class word never is, while the tower sees its words at other positions and beside other neighbours than
    the few training phrasings place them."""
    modality, level = "text", "str"

    def apply(self, text, rng):
        words = text.split()
        if len(words) < 2:
            return text
        return " ".join(words[i] for i in rng.permutation(len(words)))


# ---- the per-modality chains ---------------------------------------------------------------------

class Augmenter:
    """The configured stages: `image(img, seed)`, `text(caption, seed)`, `wave(clips, sr, seed)`,
    `logmel(feats, seeds)`."""

    def __init__(self, stages: Dict[str, List[Stage]]):
        self.stages = stages
        self.image_stages = list(stages.get("image", []))
        self.wave_stages = [s for s in stages.get("audio", []) if s.level == "wave"]
        self.logmel_stages = [s for s in stages.get("audio", []) if s.level == "logmel"]
        self.text_stages = list(stages.get("text", []))

    def __bool__(self) -> bool:
        return bool(self.image_stages or self.wave_stages or self.logmel_stages or self.text_stages)

    def modalities(self) -> List[str]:
        return [m for m, s in self.stages.items() if s]

    def image(self, img, seed: int):
        for i, st in enumerate(self.image_stages):
            img = st(img, stage_rng(seed, i))
        return img

    def text(self, caption: str, seed: int) -> str:
        for i, st in enumerate(self.text_stages):
            caption = st(caption, stage_rng(seed, 300 + i))
        return caption

    def wave(self, clips: torch.Tensor, sr: int, seed: int) -> torch.Tensor:
        """clips: float32 [C, L] at `sr` -> same shape."""
        for i, st in enumerate(self.wave_stages):
            clips = st(clips, stage_rng(seed, 100 + i), sr=sr)
        return clips

    def logmel(self, feats: torch.Tensor, seeds: List[int]) -> torch.Tensor:
        """feats: [B, n_mels, T] (one per sample, in `seeds` order) -> same shape."""
        if not self.logmel_stages:
            return feats
        out = []
        for f, seed in zip(feats, seeds):
            for i, st in enumerate(self.logmel_stages):
                f = st(f, stage_rng(seed, 200 + i))
            out.append(f)
        return torch.stack(out)


def build_augmenter(cfg: Optional[dict], where: str = "data.augment") -> Optional[Augmenter]:
    """{modality: [{type: name, ...}, ...]} -> Augmenter (None when nothing is configured).

    Raises ConfigError (one line naming the entry) on an unknown type, key or value."""
    if not cfg:
        return None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected a mapping of modality -> list of stages, got {cfg!r}")
    stages: Dict[str, List[Stage]] = {}
    for modality, items in cfg.items():
        if modality not in ("image", "audio", "text"):
            raise ConfigError(f"{where}.{modality}: augmentations exist for image, audio and text")
        if items is None:
            continue
        if not isinstance(items, list):
            raise ConfigError(f"{where}.{modality}: expected a list of stages, got {items!r}")
        stages[modality] = []
        for i, item in enumerate(items):
            w = f"{where}.{modality}[{i}]"
            if not isinstance(item, dict) or "type" not in item:
                raise ConfigError(f"{w}: expected a mapping with a 'type', got {item!r}")
            if item["type"] not in STAGES:
                raise ConfigError(f"{w}.type: unknown augmentation {item['type']!r}; "
                                  f"valid: {', '.join(STAGES.names())}")
            cls = STAGES.get(item["type"])
            if cls.modality != modality:
                raise ConfigError(f"{w}.type: {item['type']} is a {cls.modality} augmentation, not {modality}")
            stages[modality].append(cls(item, w))
    aug = Augmenter(stages)
    return aug if aug else None
