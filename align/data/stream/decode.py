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
not match it, one per line. Up to K of them (the first K; the rest are counted in `noted`, shipped with the
batches) are tokenized with the text transform, and collate() pads them to batch["neg_text"] long [B, K, L] with
batch["neg_text_mask"] bool [B, K] (False: no negative there) for align.losses.HardNegativeClipLoss.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from typing import Callable
from urllib.parse import urlsplit

import numpy as np
import torch

from align.limits import DataLimits, LimitExceeded, as_limits
from align.media.audio import decode_audio, preload_resampler
from align.media.image import decode_image
from align.data.stream.augment import sample_seed
from align.data.stream.stored_teacher import collate_teacher, read_teacher
from align.data.stream.features import batch_features, failed, is_two_stage
from align.data.stream.keys import AUG, DRAW, KEY, PENDING, SEED, URL, mask_key
from align.data.stream.faults import (
    BAD_CLS, EMPTY_CAPTION, FEW_MODALITIES, NO_LOSS_PAIR, TEXT_TOO_LONG, TRANSFORM_FAILED, UNDECODABLE_AUDIO,
    UNDECODABLE_IMAGE, UNDECODABLE_TEXT, SkipSample,
)
from align.errors import DataError
from align.text import first_surrogate, split_lines
from align.wds.format import LABEL_EXT, MODALITIES, MODALITY_EXTS, NEG_EXT, pick
from align.wds.reader import Oversize


def captions(data: bytes) -> list[str]:
    """`txt` bytes -> non-empty stripped lines, or the non-empty strings of a JSON list (may be empty: the caller
    skips). A line ends at \\n, \\r\\n or \\r only (align.text.split_lines): a U+2028 inside a caption is no line
    end."""
    text = data.decode("utf-8-sig")     # a byte-order mark (Notepad, Excel) is no part of the first caption
    if text.lstrip().startswith("["):  # several captions written as a JSON list
        import json
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        # a gap in the list (null, NaN: a shorter row of a table's caption columns) is no caption, as in
        # keyed_captions; a list of no string at all ("[1, 2]") stays text
        if isinstance(items, list) and any(isinstance(c, str) for c in items):
            return [c.strip() for c in items if isinstance(c, str) and c.strip()]
    return [line.strip() for line in split_lines(text) if line.strip()]


def check_captions(lines: list[str], where: str) -> list[str]:
    """`lines`, or SkipSample(UNDECODABLE_TEXT, "WHERE: lone surrogate at position N (caption i of n)") when one
    holds a lone surrogate (a JSON "\\ud800" escape): no tokenizer reads it (align.text.lone_surrogate), so the
    sample is skipped and counted like a member that is not UTF-8."""
    i, bad = first_surrogate(lines)
    if bad:
        raise SkipSample(UNDECODABLE_TEXT, f"{where}: {bad} (caption {i + 1} of {len(lines)})")
    return lines


def present(raw: dict, modalities) -> dict[str, str]:
    """modality -> the extension holding it, for the given modalities present in `raw`."""
    found = {}
    for m in modalities:
        ext = pick(raw, m)
        if ext is not None:
            found[m] = ext
    return found


CAPTION_TRUNCATED = "captions cut at the context length"
NEGATIVES_DROPPED = "hard negatives beyond data's K"


def keyed_captions(raw: dict, key: str) -> list[str] | None:
    """The captions a data.text_keys key names in a raw sample, or None when the sample lacks it: a member
    extension (`txt`, `long.txt`: one caption per line or a JSON list) or `json:PATH`, a dotted path into the
    sample's .json whose value is a string or a list of strings (`json:extra.caption_long` for a column that
    `align data shards` kept)."""
    if not key.startswith("json:"):
        return captions(raw[key]) if key in raw else None
    try:
        value = json.loads(raw["json"]) if "json" in raw else None
    except ValueError:
        return None
    for part in key[5:].split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None
    return [c.strip() for c in value if isinstance(c, str) and c.strip()]


def pick_text_key(raw: dict, text_keys, rng: random.Random | None):
    """(key, captions) drawn by weight among the keys of `text_keys` [(key, weight)] the sample has (rng None:
    the first it has); (None, None) when it has none of them. SkipSample when a caption of any of those keys holds a
    lone surrogate (check_captions: the sample is skipped on every visit, whichever key a visit draws)."""
    have = [(k, w, c) for k, w in text_keys if w > 0 for c in [keyed_captions(raw, k)] if c]
    for k, _, c in have:
        check_captions(c, k)
    if not have:
        return None, None
    if rng is None or len(have) == 1:
        return have[0][0], have[0][2]
    x, acc = rng.random() * sum(w for _, w, _ in have), 0.0
    for k, w, c in have:
        acc += w
        if x < acc:
            return k, c
    return have[-1][0], have[-1][2]


def decode_raw(raw: dict, modalities, min_modalities: int = 2, caption_seed: str | None = None,
               limits: DataLimits | None = None, negatives: bool = False, text_keys=None, pairs=None) -> dict:
    """raw sample -> {modality: PIL image | (wave [T], sr) | [caption], "cls": int (-1 = none)}.

    Raises SkipSample(reason) for the first problem found: first a member over its size limit (an
    `Oversize` marker from the tar reader, whatever its extension), then too few modalities, then (given
    `pairs`, the loss's modality pairs) no pair whose two modalities the sample both has, then each
    modality's decoding (sizes from the media headers checked against `limits` before decoding).
    caption_seed: pick one caption line at random, seeded by it (training); None picks the first.
    negatives: with text, also "neg": the captions of the `neg.txt` member ([] when the sample has none).
    text_keys: data.text_keys, [(key, weight)]: the text is drawn from one of these keys (keyed_captions), by
    weight (seeded by caption_seed; the first present without it), then one of its captions as above.
    """
    limits = as_limits(limits)
    for ext, value in raw.items():
        if isinstance(value, Oversize):
            raise SkipSample(value.reason, value.describe(ext))
    found, keyed = _modalities_found(raw, modalities, min_modalities, caption_seed, text_keys, pairs)
    out: dict = {}
    for m, ext in found.items():
        if m == "image" or m == "audio":
            out[m] = _decode_media(m, raw, ext, limits)
        else:
            lines = keyed if ext == "keyed" else _text_lines(raw[ext], ext, limits)    # keyed: data.text_keys
            out[m] = _one_caption(lines, caption_seed)
    if negatives and "text" in out:
        try:
            out["neg"] = check_captions(captions(raw[NEG_EXT]), NEG_EXT) if NEG_EXT in raw else []
        except UnicodeDecodeError as exn:
            raise SkipSample(UNDECODABLE_TEXT, f"{NEG_EXT}: {exn!r}") from None
    out["cls"] = -1
    if LABEL_EXT in raw:
        try:
            out["cls"] = int(raw[LABEL_EXT].decode("utf-8").strip())
        except (UnicodeDecodeError, ValueError):
            raise SkipSample(BAD_CLS, repr(raw[LABEL_EXT][:20])) from None
    return out


def _modalities_found(raw: dict, modalities, min_modalities: int, caption_seed: str | None, text_keys,
                      pairs) -> tuple[dict[str, str], list[str] | None]:
    """(modality -> the extension holding it, "keyed" for a text drawn from data.text_keys; those keyed captions)
    of a raw sample; SkipSample when it has fewer than `min_modalities` of them or none of the loss's pairs."""
    keyed = None
    if text_keys and "text" in modalities:
        rng = random.Random(f"{caption_seed}:key".encode("utf-8", "surrogateescape")) if caption_seed else None
        keyed = pick_text_key(raw, text_keys, rng)[1]
    found = present(raw, [m for m in modalities if not (m == "text" and text_keys)])
    if keyed:
        found["text"] = "keyed"
    if len(found) < min_modalities:
        reason = FEW_MODALITIES if min_modalities == 2 else (
            "no requested modality" if min_modalities == 1 else f"fewer than {min_modalities} modalities")
        raise SkipSample(reason, f"has {sorted(k for k in raw if not k.startswith('__'))}")
    if pairs and not any(a in found and b in found for a, b in pairs):
        # e.g. image+audio under bind's [[image, text], [audio, text]]: in no pair of the loss, it would train
        # nothing (every pair masks it out) while it counts as trained
        raise SkipSample(NO_LOSS_PAIR, f"has {'+'.join(sorted(found))}; loss.pairs: "
                                       f"{', '.join(f'{a}-{b}' for a, b in pairs)}")
    return found, keyed


def _decode_media(m: str, raw: dict, ext: str, limits: DataLimits):
    """Member `ext` of a raw sample decoded as modality m ("image": PIL image; "audio": (wave [T], sr)), within
    `limits`; SkipSample (the limit's reason, or undecodable) otherwise."""
    try:
        if m == "image":
            return decode_image(raw[ext], limits)
        return decode_audio(raw[ext], name=raw[KEY], limits=limits)
    except LimitExceeded as exn:
        raise SkipSample(exn.reason, f"{ext}: {exn.detail}" if m == "image" else exn.detail) from None
    except Exception as exn:
        raise SkipSample(UNDECODABLE_IMAGE if m == "image" else UNDECODABLE_AUDIO, f"{ext}: {exn!r}") from None


def _text_lines(data: bytes, ext: str, limits: DataLimits) -> list[str]:
    """A text member's captions (captions, check_captions); SkipSample when it is too long or not UTF-8."""
    if len(data) > limits.max_text_bytes:   # bytes that did not come through the tar reader
        raise SkipSample(TEXT_TOO_LONG, f"{ext}: {len(data)} bytes, over data.limits.max_text_bytes="
                                        f"{limits.max_text_bytes}")
    try:
        return check_captions(captions(data), ext)
    except UnicodeDecodeError as exn:
        raise SkipSample(UNDECODABLE_TEXT, repr(exn)) from None


def _one_caption(lines: list[str], caption_seed: str | None) -> list[str]:
    """[one of `lines`]: drawn seeded by caption_seed (training), else the first; SkipSample when there is none."""
    if not lines:
        raise SkipSample(EMPTY_CAPTION)
    if caption_seed is not None and len(lines) > 1:
        # bytes seed the same as their str (random.seed encodes a str); a key read from a damaged tar
        # name may hold surrogates, which str.encode() refuses
        rng = random.Random(caption_seed.encode("utf-8", "surrogateescape"))
        return [lines[rng.randrange(len(lines))]]
    return [lines[0]]


def shard_name(url: str | None) -> str | None:
    """The part of a shard's URL that the per-sample seeds use: its file name (`train-000003.tar`), without the
    folder, host or query. The same shards copied to another folder, node-local scratch or bucket then give the
    same crops, captions and augmentations, so a run reproduces (and resumes bitwise) wherever its data sits.
    Two sources may hold shards of one name: their samples' seeds then differ only by key, which is harmless."""
    if url is None:
        return None
    path = urlsplit(url).path if "://" in url else url
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def visit(epoch: int, raw: dict) -> int | str:
    """What tells one reading of a sample from another in the per-sample seeds: the epoch, and with
    data.resampled also the stream and draw of its shard (DRAW; `epoch.RANK.WORKER/k`).  A resampled stream
    never ends its epoch, so without the draw every later reading of a sample would repeat its first crops,
    captions and augmentations for the whole run (and two readers drawing one shard would read it alike)."""
    draw = raw.get(DRAW)
    return epoch if draw is None else f"{epoch}.{draw}"


def transform_seed(seed: int, epoch: int | str, shard: str | None, key: str) -> int:
    """The 62-bit seed of one sample's tower transforms in one visit (`visit`: the epoch; with data.resampled
    also the stream and draw that read it): a function of (seed, visit, the sample's shard file name and key),
    i.e. of its place in the epoch's global order (or the resampled stream's), never of the process or worker
    reading it (an elastic resume reads on the checkpoint's streams), nor of where the shards are stored
    (`shard_name`)."""
    text = f"align:transforms:{seed}:{epoch}:{shard}:{key}".encode("utf-8", "surrogateescape")   # keys may hold
    h = hashlib.blake2b(text, digest_size=8).digest()                                         # surrogates
    return int.from_bytes(h, "little") >> 2


class _GlobalRngs:
    """Seed the global RNGs (torch CPU, `random`, numpy) that towers' random transforms draw from
    (open_clip RandomResizedCrop, timm, the audio crops) for one sample.  restore=True (the training
    process: 0 workers) puts their previous states back afterwards, so decoding never shifts the
    training's own random stream (dropout, ...); a worker process needs no restore."""

    def __init__(self, seed: int, restore: bool):
        self.seed, self.restore = seed, restore

    def __enter__(self):
        if self.restore:
            self.saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        torch.default_generator.manual_seed(self.seed)   # CPU only: torch.manual_seed costs ~0.5 ms
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)

    def __exit__(self, *exc):
        if self.restore:
            torch.set_rng_state(self.saved[0])
            random.setstate(self.saved[1])
            np.random.set_state(self.saved[2])
        return False


def rng_preserving(items):
    """Run generator `items` with the global RNG states put back before each of its items is handed out:
    in the training process (0 workers) decoding then never shifts the training's own random stream, at
    the cost of one save/restore per batch rather than per sample (~0.3 ms on a busy CPU)."""
    while True:
        saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])
        yield item


class SampleDecoder:
    """Decode + transform one raw sample; collate decoded samples into a batch.

    train=True picks a random caption (seeded by seed, epoch, shard file name and
    key, so a resumed run picks the same one); train=False picks the first.
    Every sample's random transforms (the towers' own and the augmentation stages) are seeded by
    (seed, epoch, shard file name, key) only -- with data.resampled also the stream and draw that read it
    (`visit`): the same tensors whatever rank, worker or resume reads it.
    """

    def __init__(self, modalities: list[str], transforms: dict[str, Callable], *, train: bool,
                 seed: int = 0, min_modalities: int = 2, augment=None, limits: DataLimits | None = None,
                 hard_negatives: int = 0, text_keys=None, teacher: tuple = (), features_in_step: bool = False,
                 pairs=None):
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
        # the loss's modality pairs (training): a sample in none of them is skipped and counted (decode_raw)
        self.pairs = [tuple(p) for p in pairs] if pairs else None
        self.limits = as_limits(limits)   # data.limits: also what the shard reader is given (loader)
        if isinstance(hard_negatives, bool) or not isinstance(hard_negatives, int) or hard_negatives < 0:
            raise DataError(f"hard_negatives must be an integer >= 0, got {hard_negatives!r}")
        if hard_negatives and "text" not in self.modalities:
            raise DataError("hard_negatives are captions: they need the 'text' modality")
        self.hard_negatives = hard_negatives       # K: negatives kept per sample (the batch is padded to K)
        # data.text_keys as [(key, weight)]: the text of a sample is drawn from one of these (keyed_captions)
        self.text_keys = [(str(k), float(w)) for k, w in (text_keys or {}).items()] or None
        # Events that change no sample's fate but that a user should hear of, counted in this process (worker)
        # and shipped with each batch (keys.NOTED): captions cut at the context length, negatives beyond K.
        self.noted: Counter = Counter()
        self.teacher = tuple(teacher)              # modalities of stored teacher embeddings to read (stored_teacher)
        self._templates: dict[str, torch.Tensor] = {}
        # align.data.stream.augment.Augmenter (training only): image stages before the image transform, wave
        # stages after the audio front end's per-sample step, log-mel stages after its per-batch step.
        self.augment = augment if train else None
        # training only: collate leaves the two-stage transforms' batched step (the log-mel) and the log-mel
        # augmentation to the training step on its device (align.data.stream.features)
        self.features_in_step = bool(features_in_step and train)
        if "audio" in self.modalities:
            preload_resampler()   # the workers forked for each epoch inherit it instead of importing it again
        if self.augment and self.augment.wave_stages + self.augment.logmel_stages and "audio" in transforms \
                and not is_two_stage(transforms["audio"]):
            raise DataError("data.augment.audio needs the audio towers' two-stage front end (per_sample/per_batch)")

    def __call__(self, raw: dict, epoch: int, restore_rng: bool = False) -> dict:
        """raw sample -> {KEY, modality: Tensor, ..., "cls": int, SEED: int}; raises SkipSample.

        restore_rng: put the global RNGs back after the sample's seeded transforms (see _GlobalRngs)."""
        shard, key = shard_name(raw.get(URL)), raw[KEY]
        epoch = visit(epoch, raw)
        seed = transform_seed(self.seed, epoch, shard, key)
        with _GlobalRngs(seed, restore_rng):
            return self._decode(raw, epoch, seed, shard)

    def _decode(self, raw: dict, epoch: int | str, seed: int, shard: str | None) -> dict:
        key = raw[KEY]
        caption_seed = f"align:caption:{self.seed}:{epoch}:{shard}:{key}" if self.train else None
        decoded = decode_raw(raw, self.modalities, self.min_modalities, caption_seed, self.limits,
                             negatives=self.hard_negatives > 0, text_keys=self.text_keys, pairs=self.pairs)
        out = {KEY: key, "cls": decoded.pop("cls"), SEED: seed}
        negs = decoded.pop("neg", [])
        if negs:
            if len(negs) > self.hard_negatives:
                self.noted[NEGATIVES_DROPPED] += len(negs) - self.hard_negatives
            try:
                out["neg_text"] = self._negatives(negs[:self.hard_negatives])        # long [k, L]
            except Exception as exn:
                raise SkipSample(TRANSFORM_FAILED.format(modality="text"), f"{NEG_EXT}: {exn!r}") from None
        if self.teacher:
            out.update(read_teacher(raw, self.teacher))        # {teacher_<m>: float [Et]}
        aug_seed = None
        if self.train and self.augment:
            # augmentation draws from its own generators, seeded by (seed, visit, shard file name, key)
            aug_seed = sample_seed(self.seed, epoch, shard, key)
            out[AUG] = aug_seed
        for m, value in decoded.items():
            try:
                if m == "image" and self.augment and self.augment.image_stages:
                    value = self.augment.image(value, aug_seed)
                if m == "text" and self.augment and self.augment.text_stages:
                    value = [self.augment.text(c, aug_seed) for c in value]      # [the drawn caption]
                out[m] = self._apply(m, value)
                if m == "audio" and self.augment and self.augment.wave_stages:
                    out[m] = self.augment.wave(out[m], self.transforms[m].fe.sample_rate, aug_seed)
            except Exception as exn:
                raise SkipSample(TRANSFORM_FAILED.format(modality=m), repr(exn)) from None
        return out

    def take_noted(self) -> dict:
        """The noted counts since the last call (and reset them)."""
        out, self.noted = dict(self.noted), Counter()
        return out

    def _apply(self, modality: str, value) -> torch.Tensor:
        tf = self.transforms[modality]
        # A two-stage transform (e.g. the audio front end) does its per-sample part here and its
        # batched part in collate(): see AudioPreprocess.per_sample / per_batch.
        t = tf.per_sample(value) if is_two_stage(tf) else tf(value)
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        if modality == "text" and t.ndim >= 2 and t.shape[0] == 1:
            t = t[0]  # [1, L] -> [L]
        count = getattr(tf, "count_tokens", None) if modality == "text" else None
        # Only a row that fills the whole context can have been cut (a shorter one ends in padding, id 0; a cut one
        # ends in the end-of-text token): count the tokens, a second tokenizer pass, for those alone.
        if count is not None and t.ndim == 1 and int(t[-1]) != 0 and count(value)[0] > tf.context_length:
            self.noted[CAPTION_TRUNCATED] += 1
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
                with _GlobalRngs(0, restore=True):      # a random transform on the dummy must not shift the RNGs
                    t = self._apply(modality, dummy)
            except Exception as exn:
                raise DataError(
                    f"transforms['{modality}'] failed on a dummy input ({exn!r}); it is needed to build "
                    f"the zero placeholder for batches without any {modality}") from None
            self._templates[modality] = torch.zeros_like(t)
        return self._templates[modality]

    def collate(self, samples: list[dict]) -> dict:
        """Decoded samples -> batch dict.

        {m: Tensor[B, ...], mask_key(m): BoolTensor[B], "cls": LongTensor[B] (-1 = none),
         KEY: list[str]}; a missing modality is filled with zeros.
        """
        batch: dict = {KEY: [s[KEY] for s in samples]}
        for m in self.modalities:
            have = [s[m] for s in samples if m in s]
            ref = have[0] if have else self.template(m)
            for t in have:
                if t.shape != ref.shape:
                    keys = [s[KEY] for s in samples if m in s]
                    raise DataError(
                        f"transforms['{m}'] returned shapes {tuple(ref.shape)} ({keys[0]}) and {tuple(t.shape)} "
                        f"in one batch; the {m} transform must crop/pad to a fixed shape")
            zero = torch.zeros_like(ref)
            batch[m] = torch.stack([s[m] if m in s else zero for s in samples])
            tf = self.transforms[m]
            if self.features_in_step and is_two_stage(tf):
                batch.setdefault(PENDING, []).append(m)     # clips [B, C, samples]: StepFeatures finishes them
            elif is_two_stage(tf):
                try:
                    batch[m] = batch_features(tf, batch[m], [s.get(SEED, 0) for s in samples],
                                              [s.get(AUG, 0) for s in samples],
                                              self.augment if m == "audio" else None, self.train)
                except Exception as exn:   # cannot be pinned on one sample: a transform bug, stated plainly
                    raise failed(m, len(samples), batch[KEY][0], exn) from None
            batch[mask_key(m)] = torch.tensor([m in s for s in samples], dtype=torch.bool)
        batch["cls"] = torch.tensor([s["cls"] for s in samples], dtype=torch.long)
        if PENDING in batch:
            batch[SEED], batch[AUG] = [s.get(SEED, 0) for s in samples], [s.get(AUG, 0) for s in samples]
        if self.hard_negatives:
            self._collate_negatives(samples, batch)
        if self.teacher:
            collate_teacher(samples, batch, self.teacher)
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
