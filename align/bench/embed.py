"""Batched, disk-cached encoding of benchmark datasets and prompt lists.

`embed_dataset(model, dataset, modality)` decodes, transforms and encodes every
item that has `modality` (for "text": every caption of every item) under
torch.no_grad with a tqdm bar, and returns L2-normalised float32 vectors [N, D]
plus the item index of each row (several text rows can share one item).
Samples that fail to decode or transform are skipped and counted. Media are decoded within the limits the model
carries (`model.data_limits`: its recipe's `data.limits`, set by align.load and align.bench.models.load_model,
with any `--limit NAME=VALUE` over them; the defaults for a model without one).

Cache layout (a re-run with the same weights, data files and transforms
encodes nothing):
    cache_dir/{model_fingerprint}/{dataset_fingerprint}/{modality}.npy       [N, D] float32
    cache_dir/{model_fingerprint}/{dataset_fingerprint}/{modality}.ids.npy   [N] int64 item index
    cache_dir/{model_fingerprint}/{dataset_fingerprint}/{modality}.json      meta (written last)
`model_fingerprint` is `model.fingerprint()` or a hash of the state_dict (plus `-bf16` / `-fp16`
when encoded under that autocast precision, `-onnxruntime` under that engine);
`dataset_fingerprint` hashes the data files' names/sizes/mtimes, the layout
options, the model's transform settings and the limits that differ from the defaults (other limits skip other
samples). Prompt lists are cached under
`cache_dir/{model_fingerprint}/prompts-{hash of the prompts}/text.npy`.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from align.progress import progress as tqdm   # plain lines off a terminal

from align.bench.datasets import BenchDataset, SampleError
from align.errors import AlignError, ConfigError, DataError
from align.limits import DataLimits, as_limits, changed_limits
from align.model import weights_fingerprint
from align.text import first_surrogate

_ENCODERS = {"image": "encode_image", "text": "encode_text", "audio": "encode_audio"}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # autocast dtype while encoding
_FP_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
MAX_ERRORS_KEPT = 10


@dataclass
class Embeddings:
    vectors: np.ndarray            # [N, D] float32, rows L2-normalised
    ids: np.ndarray                # [N] int64 item index in the dataset
    skipped: int = 0               # items that failed to decode / transform
    missing: int = 0               # items without this modality at all
    errors: List[str] = field(default_factory=list)  # first few skip reasons
    cached: bool = False


def model_fingerprint(model) -> str:
    """`model.fingerprint()` when present, else align.model.weights_fingerprint of its state_dict (memoised)."""
    fn = getattr(model, "fingerprint", None)
    if callable(fn):
        return str(fn())
    try:
        return _FP_MEMO[model]
    except (KeyError, TypeError):
        pass
    if not callable(getattr(model, "state_dict", None)):
        raise AlignError(f"model {getattr(model, 'name', type(model).__name__)!r} has neither fingerprint() nor "
                         f"state_dict(); cannot key the embedding cache (pass cache_dir=None)")
    fp = weights_fingerprint(model)
    try:
        _FP_MEMO[model] = fp
    except TypeError:
        pass
    return fp


def _signature(obj) -> str:
    """A stable text for a transform: its repr, or its qualified name when repr holds a memory address."""
    if obj is None:
        return "none"
    r = repr(obj)
    if " at 0x" in r:
        r = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    return r


def model_limits(model) -> DataLimits:
    """The limits the model's media are decoded within: `model.data_limits` (its recipe's data.limits, with any
    --limit over them), else the defaults (an open_clip model, a model built in code)."""
    return as_limits(getattr(model, "data_limits", None))


def model_device(model, device=None) -> torch.device:
    """`device` when given, else the device of the model's first parameter (cpu for a model without any)."""
    if device is not None:
        return torch.device(device)
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


class MissingModalityError(AlignError):
    """The model has no tower for a modality a benchmark needs (a suite skips that pair)."""


def _check_modality(model, modality: str) -> None:
    if modality not in _ENCODERS:
        raise ConfigError(f"unknown modality {modality!r}; valid: {', '.join(_ENCODERS)}")
    have = list(getattr(model, "modalities", []))
    if modality not in have:
        raise MissingModalityError(f"model {getattr(model, 'name', '?')!r} cannot encode {modality!r} "
                         f"(its modalities: {', '.join(have) or 'none'})")


class _EvalMode:
    """Put an nn.Module in eval for the duration, then restore its training flag."""

    def __init__(self, model):
        self.model, self.was_training = model, bool(getattr(model, "training", False))

    def __enter__(self):
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.model.train()


def check_precision(precision: str, device) -> None:
    """One-line refusal of a precision the device cannot autocast to."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ConfigError(f"--precision fp16 needs a CUDA device (this run is on {dev.type}); use bf16 or fp32")
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this CUDA device has no bfloat16 support; use fp16 or fp32")


def _precision(precision: Optional[str]) -> str:
    p = precision or "fp32"
    if p not in PRECISIONS:
        raise ConfigError(f"precision {p!r} is not one of {', '.join(PRECISIONS)}")
    return p


def _autocast(device: torch.device, precision: str):
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def _model_key(model, precision: str) -> str:
    """Cache folder of a model: its fingerprint, plus the precision when not fp32 and the engine when not torch
    (other numbers, other cache)."""
    fp = model_fingerprint(model)
    fp = fp if precision == "fp32" else f"{fp}-{precision}"
    engine = getattr(model, "engine", "torch")
    return fp if engine == "torch" else f"{fp}-{engine}"


def _encode(model, modality: str, batch, device, precision: str = "fp32") -> np.ndarray:
    """batch (tensor [B, ...] or list[str]) -> normalised float32 numpy [B, D]."""
    if modality == "text":
        batch = model.tokenize(list(batch))
    try:
        with _autocast(device, precision):
            out = getattr(model, _ENCODERS[modality])(batch.to(device))
    except torch.cuda.OutOfMemoryError:
        raise ConfigError(f"out of memory on {device} encoding a batch of {len(batch)} {modality} items; lower "
                          f"--batch-size (eval.batch_size in a recipe)") from None
    # re-normalise in float32 as CLIP_benchmark does (F.normalize on the model output)
    return F.normalize(out.float(), dim=-1).cpu().numpy()


# ------------------------------------------------------------------- caching
def check_finite(vectors: np.ndarray, name, what: str, precision: str) -> None:
    """One line (DataError) naming the first row of `vectors` [N, D] with a NaN or inf, by name(row): a NaN
    embedding (e.g. an fp16 overflow) would otherwise be ranked as a number by FAISS, or refused later by row
    number in another array. Checked before anything is cached. By the float64 row sums: the rows are
    L2-normalised (|x| <= 1, no overflow), so a row is finite iff its sum is, without an [N, D] bool array."""
    bad = ~np.isfinite(vectors.sum(axis=1, dtype=np.float64)) if vectors.ndim == 2 else np.zeros(0, bool)
    if bad.any():
        hint = "; encode in fp32 (--precision fp32)" if precision != "fp32" else ""
        raise DataError(f"{what} {name(int(np.flatnonzero(bad)[0]))} is NaN or inf ({int(bad.sum())} of "
                        f"{len(vectors)} rows){hint}")


def _cache_paths(cache_dir: str, model_fp: str, data_fp: str, modality: str):
    d = os.path.join(cache_dir, model_fp, data_fp)
    return d, os.path.join(d, f"{modality}.npy"), os.path.join(d, f"{modality}.ids.npy"), \
        os.path.join(d, f"{modality}.json")


def content_hash(a: np.ndarray) -> str:
    """A checksum of an array's values (blake2b, 128 bits; ~1 GB/s): a cache entry whose bytes changed on disk
    (a zero-filled block after a crash, a flipped bit) has the right size and header but not this."""
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).hexdigest()


def _load_cached(vec_p, ids_p, meta_p) -> Optional[Embeddings]:
    if not (os.path.isfile(meta_p) and os.path.isfile(vec_p) and os.path.isfile(ids_p)):
        return None
    try:
        meta = json.load(open(meta_p))
        vecs, ids = np.load(vec_p), np.load(ids_p)
    except (OSError, ValueError):
        return None  # a damaged cache entry is re-encoded, not trusted
    if len(vecs) != len(ids) or meta.get("n") != len(vecs):
        return None
    sums = meta.get("blake2b")               # (an entry cached before the checksums: taken as it is)
    if sums and (sums.get("vectors") != content_hash(vecs) or sums.get("ids") != content_hash(ids)):
        print(f"align: warning: {vec_p}: the cached embeddings changed on disk since they were written (checksum "
              f"differs); encoding again", file=sys.stderr, flush=True)
        return None
    return Embeddings(vecs, ids, skipped=meta.get("skipped", 0), missing=meta.get("missing", 0),
                      errors=meta.get("errors", []), cached=True)


_CACHE_FULL_SAID = set()     # the cache dirs a full disk was reported for (one line each per process)


def _store(paths, emb: Embeddings, meta: dict) -> None:
    """The cache entry (meta last: an entry without it is never read). A full disk is one line on stderr and the
    benchmark goes on with the embeddings in hand, uncached; other errors pass."""
    from align.writes import atomic_write, is_storage_error
    d, vec_p, ids_p, meta_p = paths
    meta = dict(meta, n=int(len(emb.vectors)), dim=int(emb.vectors.shape[1]) if emb.vectors.ndim == 2 else 0,
                skipped=emb.skipped, missing=emb.missing, errors=emb.errors, created=time.time(),
                blake2b={"vectors": content_hash(emb.vectors), "ids": content_hash(emb.ids)})
    try:
        os.makedirs(d, exist_ok=True)
        atomic_write(vec_p, lambda f: np.save(f, emb.vectors))
        atomic_write(ids_p, lambda f: np.save(f, emb.ids))
        atomic_write(meta_p, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    except OSError as e:
        if not is_storage_error(e):
            raise
        for p in (vec_p, ids_p):                # an entry without its meta is never read: nothing half-kept
            with contextlib.suppress(OSError):
                os.remove(p)
        cache = os.path.dirname(os.path.dirname(d))
        if cache not in _CACHE_FULL_SAID:
            _CACHE_FULL_SAID.add(cache)
            print(f"align: warning: {vec_p}: {e.strerror or str(e)}; embeddings are not cached in {cache} "
                  f"(the results are not affected; free space to cache them)", file=sys.stderr, flush=True)


def dataset_fingerprint(model, dataset: BenchDataset) -> str:
    """Data files + layout options + the model's transform settings."""
    parts = [dataset.fingerprint(), _signature(getattr(model, "image_transform", None)),
             _signature(getattr(model, "audio_transform", None))]
    changed = changed_limits(model_limits(model))
    if changed:                 # the defaults add nothing: entries cached before limits were keyed stay valid
        parts.append(json.dumps(changed, sort_keys=True))
    blob = "|".join(parts)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ encoding
class _MediaView(torch.utils.data.Dataset):
    """Item j -> (item index, transformed tensor or None, error or None); runs in DataLoader workers."""

    def __init__(self, dataset: BenchDataset, modality: str, transform, indices: np.ndarray, limits: DataLimits):
        self.dataset, self.modality, self.transform, self.indices = dataset, modality, transform, indices
        self.limits = limits

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = int(self.indices[j])
        try:
            x = self.dataset.load(i, self.modality, self.limits)
        except SampleError as e:
            return i, None, str(e)
        try:
            t = self.transform(x) if self.modality == "image" else self.transform(*x)  # audio: (wave, sr)
        except Exception as e:  # a sample the transform cannot handle is skipped and counted, like a bad decode
            return i, None, f"{self.dataset.name}: sample {self.dataset.items[i].key!r}: transform failed: " \
                            f"{type(e).__name__}: {e}"
        return i, t, None


def _stack(tensors, where: str) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise AlignError(f"{where}: the transform returned tensors of different shapes {sorted(shapes)[:2]} in one "
                         f"batch; it must return a fixed shape")
    return torch.stack(tensors)


def embed_dataset(model, dataset: BenchDataset, modality: str, *, cache_dir: Optional[str] = None,
                  batch_size: int = 64, device=None, num_workers: int = 0, progress: bool = True,
                  precision: Optional[str] = None) -> Embeddings:
    """Encode every item of `dataset` that has `modality` ("text": every caption). Cached when cache_dir is set.
    num_workers > 0 decodes and transforms in DataLoader worker processes; precision: fp32 | bf16 | fp16
    autocast (default fp32)."""
    _check_modality(model, modality)
    if batch_size < 1:          # -(-n // 0) would be a ZeroDivisionError, a negative one an empty loader
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    precision = _precision(precision)
    paths = None
    if cache_dir:
        paths = _cache_paths(cache_dir, _model_key(model, precision), dataset_fingerprint(model, dataset), modality)
        hit = _load_cached(*paths[1:])
        if hit is not None:
            return hit
    device = model_device(model, device)
    if modality == "text":
        emb = _embed_captions(model, dataset, batch_size, device, progress, precision)
    else:
        emb = _embed_media(model, dataset, modality, batch_size, device, num_workers, progress, precision)
    check_finite(emb.vectors, lambda r: f"sample {dataset.items[emb.ids[r]].key!r}",
                 f"dataset {dataset.path!r}: the model's {modality} embedding of", precision)
    if len(emb.vectors) == 0:
        first = emb.errors[0] if emb.errors else f"no item has {modality}"
        raise DataError(f"dataset {dataset.path!r}: no {modality} could be encoded ({first})")
    if emb.skipped and progress:
        print(f"{dataset.name}: skipped {emb.skipped} {modality} samples that failed to decode "
              f"(first: {emb.errors[0]})")
    if paths is not None:
        _store(paths, emb, {"model": getattr(model, "name", ""), "dataset": dataset.path, "modality": modality,
                            "precision": precision})
    return emb


def _embed_captions(model, dataset, batch_size, device, progress, precision) -> Embeddings:
    """One row per caption. An item with a caption no tokenizer reads (a lone surrogate, align.text) is a broken
    sample: none of its captions is encoded, it is counted in `skipped` and named in `errors`."""
    texts, ids, errors = [], [], []
    for i, it in enumerate(dataset.items):
        caps = it.captions or []
        j, bad = first_surrogate(caps)
        if bad:
            errors.append(f"sample {it.key!r}: caption {j + 1} of {len(caps)}: {bad}")
            continue
        texts += caps
        ids += [i] * len(caps)
    missing = sum(1 for it in dataset.items if not it.captions)
    vecs = _embed_text_list(model, texts, batch_size, device, progress, f"encode {dataset.name} text", precision)
    return Embeddings(vecs, np.asarray(ids, dtype=np.int64), skipped=len(errors), missing=missing,
                      errors=errors[:MAX_ERRORS_KEPT])


def _collate(batch):
    """[(item index, tensor or None, error or None)] -> (good ids, [B, ...] tensor or a list when the shapes
    differ or nothing decoded, errors). Runs in the worker: one stacked tensor crosses to the main process
    through one shared-memory segment, where a list of B tensors took B file-descriptor handshakes (~0.6 ms
    each; 10k images at 32 px: ~9 CPU-s of 30, py-spy)."""
    ids = [i for i, t, err in batch if err is None]
    good = [t for _, t, err in batch if err is None]
    errors = [err for _, _, err in batch if err is not None]
    if good and len({tuple(t.shape) for t in good}) == 1:
        good = torch.stack(good)
    return ids, good, errors


def _embed_media(model, dataset, modality, batch_size, device, num_workers, progress, precision) -> Embeddings:
    transform = getattr(model, f"{modality}_transform", None)
    if transform is None:
        raise AlignError(f"model {getattr(model, 'name', '?')!r} has no {modality}_transform")
    indices = np.array([i for i, it in enumerate(dataset.items) if modality in it.media], dtype=np.int64)
    # no more workers than batches: a worker with nothing to decode only costs its start-up
    num_workers = min(num_workers, -(-len(indices) // batch_size))
    view = _MediaView(dataset, modality, transform, indices, model_limits(model))
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers, collate_fn=_collate)
    vecs, ids, errors, skipped = [], [], [], 0
    bar = tqdm(total=len(indices), desc=f"encode {dataset.name} {modality}", unit="item", disable=not progress)
    with torch.no_grad(), _EvalMode(model):
        for good_ids, x, errs in loader:
            skipped += len(errs)
            errors.extend(errs[:max(0, MAX_ERRORS_KEPT - len(errors))])
            if good_ids:
                if isinstance(x, list):                                            # shapes differ: one line
                    x = _stack(x, f"{dataset.name} {modality}")
                vecs.append(_encode(model, modality, x, device, precision))       # [B, D]
                ids.extend(good_ids)
            bar.update(len(good_ids) + len(errs))
    bar.close()
    dim = vecs[0].shape[1] if vecs else 0
    return Embeddings(np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32),
                      np.asarray(ids, dtype=np.int64), skipped=skipped,
                      missing=len(dataset) - len(indices), errors=errors)


def _embed_text_list(model, texts: Sequence[str], batch_size, device, progress, desc,
                     precision: str = "fp32") -> np.ndarray:
    out = []
    with torch.no_grad(), _EvalMode(model):
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress):
            out.append(_encode(model, "text", texts[s:s + batch_size], device, precision))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# Within `same_weights_prompts()` (a suite's loop over one model's benchmarks): prompt lists already encoded
# by the same model object at the same precision, kept in memory -> {(id(model), precision, hash): [P, D]}.
_PROMPT_MEMO: contextvars.ContextVar = contextvars.ContextVar("align_prompt_memo", default=None)


@contextlib.contextmanager
def same_weights_prompts():
    """A block in which no model's weights change: embed_texts encodes a prompt list once per model and
    precision (ImageNet and its variants share 1,000 classes x 80 templates), then answers from memory.
    Outside such a block nothing is kept (evaluation during training sees new weights every time)."""
    token = _PROMPT_MEMO.set({})
    try:
        yield
    finally:
        _PROMPT_MEMO.reset(token)


def embed_texts(model, texts: Sequence[str], *, cache_dir: Optional[str] = None, batch_size: int = 256,
                device=None, progress: bool = True, desc: str = "encode prompts",
                precision: Optional[str] = None) -> np.ndarray:
    """Encode a list of strings -> normalised float32 [len(texts), D]; cached by the prompts' hash (on disk
    under cache_dir; in memory within same_weights_prompts())."""
    _check_modality(model, "text")
    precision = _precision(precision)
    texts = list(texts)
    h = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]
    memo, key = _PROMPT_MEMO.get(), (id(model), precision, h)
    if memo is not None and key in memo:
        return memo[key]
    vecs = _embed_texts_cached(model, texts, h, cache_dir, batch_size, device, progress, desc, precision)
    if memo is not None:
        memo[key] = vecs
    return vecs


def _embed_texts_cached(model, texts, h, cache_dir, batch_size, device, progress, desc, precision) -> np.ndarray:
    paths = None
    if cache_dir:
        paths = _cache_paths(cache_dir, _model_key(model, precision), f"prompts-{h}", "text")
        hit = _load_cached(*paths[1:])
        if hit is not None:
            return hit.vectors
    vecs = _embed_text_list(model, texts, batch_size, model_device(model, device), progress, desc, precision)
    check_finite(vecs, lambda r: f"prompt {texts[r]!r}", "the model's text embedding of", precision)
    if paths is not None:
        meta = {"model": getattr(model, "name", ""), "dataset": "prompts", "modality": "text"}
        _store(paths, Embeddings(vecs, np.arange(len(texts), dtype=np.int64)), meta)
    return vecs
