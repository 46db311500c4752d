"""Bench test helpers: a tiny deterministic fake model and writers for small on-disk datasets.

FakeModel follows the duck-typed model interface the benchmarks use:
  image: PIL -> resize to S x S -> float [3, S, S]; encode = flatten @ W_img [3*S*S, D], L2-normalised
  text:  words -> crc32 ids (0 = pad) [B, L]; encode = mean of E[id] over non-pad tokens, L2-normalised
  audio: (wave, sr) -> first T samples, zero-padded [T]; encode = wave @ W_aud [T, D], L2-normalised
It counts encode calls per modality (`calls`) so cache tests can assert nothing was re-encoded.
"""
import io
import json
import os
import zlib
from collections import Counter

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY_OPEN_CLIP

# one OpenMP thread: on a shared 2-core machine, FAISS's thread barriers make small searches 10-20x slower
faiss.omp_set_num_threads(1)


class ImageTransform:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):  # PIL -> float [3, S, S] in [0, 1]
        a = np.asarray(img.convert("RGB").resize((self.size, self.size)), dtype=np.float32) / 255.0
        return torch.from_numpy(a).permute(2, 0, 1).contiguous()

    def __repr__(self):
        return f"ImageTransform(size={self.size})"


class AudioTransform:
    def __init__(self, length: int):
        self.length = length

    def __call__(self, wave, sr):  # -> float [T]
        out = np.zeros(self.length, dtype=np.float32)
        w = wave[: self.length]
        out[: len(w)] = w
        return torch.from_numpy(out)

    def __repr__(self):
        return f"AudioTransform(length={self.length})"


class FakeModel:
    def __init__(self, dim=16, seed=0, modalities=("image", "text", "audio"), image_size=8, vocab=997,
                 audio_len=64, name="fake"):
        g = torch.Generator().manual_seed(seed)
        self.W_img = torch.randn(3 * image_size * image_size, dim, generator=g)
        self.E_txt = torch.randn(vocab, dim, generator=g)
        self.W_aud = torch.randn(audio_len, dim, generator=g)
        self.vocab, self.seed, self.dim = vocab, seed, dim
        self.modalities = list(modalities)
        self.name = name
        self.image_transform = ImageTransform(image_size)
        self.audio_transform = AudioTransform(audio_len)
        self.calls = Counter()

    def fingerprint(self):
        return f"fake-{self.seed}-{self.dim}"

    def tokenize(self, texts, length=16):
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [1 + zlib.crc32(w.encode()) % (self.vocab - 1) for w in t.lower().split()][:length] or [1]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def encode_image(self, x):  # [B, 3, S, S] -> [B, D]
        self.calls["image"] += 1
        return F.normalize(x.flatten(1) @ self.W_img, dim=-1)

    def encode_text(self, tokens):  # [B, L] -> [B, D]
        self.calls["text"] += 1
        mask = (tokens > 0).float()[..., None]                     # [B, L, 1]
        e = (self.E_txt[tokens] * mask).sum(1) / mask.sum(1).clamp(min=1)
        return F.normalize(e, dim=-1)

    def encode_audio(self, x):  # [B, T] -> [B, D]
        self.calls["audio"] += 1
        return F.normalize(x @ self.W_aud, dim=-1)


@pytest.fixture
def fake_model():
    return FakeModel()


# ------------------------------------------------------------------ data writers
def png_bytes(rng, size=12, fmt="PNG"):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def wav_bytes(rng, n=80, sr=8000, fmt="WAV"):
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, (rng.standard_normal(n) * 0.1).astype(np.float32), sr, format=fmt)
    return buf.getvalue()


def write_tar(path, samples):
    """samples: list of (key, {ext: bytes|str}), written by align's one shard writer."""
    from align.wds.writer import write_shard

    write_shard(path, [dict(fields, __key__=key) for key, fields in samples])


def write_wds(root, samples, *, split="test", per_shard=4, classnames=None, templates=None, dataset_type=None):
    """CLIP_benchmark layout: ROOT/split/{i}.tar + nshards.txt (+ classnames, templates, dataset_type)."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    for i, chunk in enumerate(shards):
        write_tar(os.path.join(root, split, f"{i}.tar"), chunk)
    with open(os.path.join(root, split, "nshards.txt"), "w") as f:
        f.write(f"{len(shards)}\n")
    if classnames is not None:
        with open(os.path.join(root, "classnames.txt"), "w") as f:
            f.write("\n".join(classnames) + "\n")
    if templates is not None:
        with open(os.path.join(root, "zeroshot_classification_templates.txt"), "w") as f:
            f.write("\n".join(templates) + "\n")
    if dataset_type is not None:
        with open(os.path.join(root, "dataset_type.txt"), "w") as f:
            f.write(dataset_type + "\n")
    return str(root)


def classification_wds(root, n=24, n_classes=6, seed=0, image=True, audio=False, **kw):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        fields = {"cls": str(i % n_classes)}
        if image:
            fields["png"] = png_bytes(rng)
        if audio:
            fields["flac"] = wav_bytes(rng, fmt="FLAC")
        samples.append((f"s{i:07d}", fields))
    names = [f"class{c} thing{c * 7 % 11}" for c in range(n_classes)]
    return write_wds(root, samples, classnames=names,
                     templates=kw.pop("templates", ["a photo of a {c}.", "a picture of the {c}."]), **kw)


WORDS = "red green blue dog cat car tree sky sea road bird fish boat hill sun moon".split()
# with vocab=997 these 16 words get 16 distinct token ids, so distinct bags of words never tie


def retrieval_wds(root, n=20, seed=0, caps=(1, 3), audio=False, **kw):
    """Items with an image (and audio) and caps[0]..caps[1] distinct random captions each."""
    rng = np.random.default_rng(seed)
    samples, seen = [], set()
    for i in range(n):
        k = int(rng.integers(caps[0], caps[1] + 1))
        captions = []
        while len(captions) < k:  # distinct bags of words: no two captions embed identically (no score ties)
            words = rng.choice(WORDS, 4)
            if tuple(sorted(words)) not in seen:
                seen.add(tuple(sorted(words)))
                captions.append(" ".join(words))
        ext = "webp" if i % 2 else "png"
        fields = {ext: png_bytes(rng, fmt=ext.upper()), "txt": "\n".join(captions)}
        if audio:
            fields["wav"] = wav_bytes(rng)
        samples.append((f"s{i:07d}", fields))
    return write_wds(root, samples, dataset_type="retrieval", **kw)


# ------------------------------------------------------------------ open_clip models
OC_ARCH = "align-test-tiny"   # registered with open_clip.add_model_config, as a user adds a custom architecture


@pytest.fixture(scope="module")
def oc_arch(tmp_path_factory):
    import open_clip
    d = tmp_path_factory.mktemp("oc_cfg")
    with open(d / f"{OC_ARCH}.json", "w") as f:
        json.dump({"embed_dim": 16, **TINY_OPEN_CLIP}, f)
    if open_clip.get_model_config(OC_ARCH) is None:
        open_clip.add_model_config(str(d / f"{OC_ARCH}.json"))
    return OC_ARCH


@pytest.fixture(scope="module")
def oc_net(oc_arch):
    """A model open_clip created, with weights moved off their init (a wrong mapping shows)."""
    import open_clip
    torch.manual_seed(0)
    net = open_clip.create_model(oc_arch)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()
