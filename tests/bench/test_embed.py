"""Batched encoding: skip-and-count, the on-disk cache and its keys (model weights, data files, transforms)."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from align.bench.datasets import open_dataset
from align.bench.embed import MissingModalityError, embed_dataset, embed_texts, model_fingerprint
from align.bench.zeroshot import zeroshot_classification
from align.errors import ConfigError, DataError
from tests.bench.conftest import FakeModel, classification_wds, png_bytes, write_wds


def test_vectors_ids_and_batching(tmp_path, fake_model):
    ds = open_dataset(classification_wds(tmp_path / "d", n=13), "wds")
    a = embed_dataset(fake_model, ds, "image", batch_size=4, progress=False)
    b = embed_dataset(fake_model, ds, "image", batch_size=13, progress=False)
    assert a.vectors.shape == (13, 16) and a.vectors.dtype == np.float32
    np.testing.assert_array_equal(a.ids, np.arange(13))
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1, atol=1e-5)
    assert fake_model.calls["image"] == 4 + 1


def test_second_run_encodes_nothing(tmp_path):
    root = classification_wds(tmp_path / "d", n=10)
    cache = str(tmp_path / "cache")
    m1 = FakeModel()
    r1 = zeroshot_classification(m1, open_dataset(root, "wds"), cache_dir=cache, progress=False)
    assert m1.calls["image"] > 0 and m1.calls["text"] > 0
    m2 = FakeModel()  # same weights, fresh call counter
    r2 = zeroshot_classification(m2, open_dataset(root, "wds"), cache_dir=cache, progress=False)
    assert sum(m2.calls.values()) == 0
    assert r1["metrics"] == r2["metrics"]
    ds = open_dataset(root, "wds")
    from align.bench.embed import dataset_fingerprint

    d = os.path.join(cache, m1.fingerprint(), dataset_fingerprint(m1, ds))
    assert sorted(os.listdir(d)) == ["image.ids.npy", "image.json", "image.npy"]
    meta = json.load(open(os.path.join(d, "image.json")))
    assert meta["n"] == 10 and meta["dim"] == 16 and meta["modality"] == "image"


@pytest.mark.parametrize("damage", ["zeros", "bit"])
def test_a_cache_entry_whose_bytes_changed_on_disk_is_encoded_again(tmp_path, capsys, damage):
    """Same size, same header, other values (a block zero-filled after a crash, one flipped bit): before, the
    cached vectors were used as they were and the metrics silently changed. Now the entry's checksum differs: a
    warning, the set is encoded again (the same numbers as the first run), and the rewritten entry is used."""
    from align.bench.embed import dataset_fingerprint
    root = classification_wds(tmp_path / "d", n=10)
    cache = str(tmp_path / "cache")
    first = embed_dataset(FakeModel(), open_dataset(root, "wds"), "image", cache_dir=cache, progress=False)
    m = FakeModel()
    vec_p = os.path.join(cache, m.fingerprint(), dataset_fingerprint(m, open_dataset(root, "wds")), "image.npy")
    raw = bytearray(open(vec_p, "rb").read())
    if damage == "zeros":
        raw[-256:] = bytes(256)
    else:
        raw[-5] ^= 0x10
    open(vec_p, "wb").write(bytes(raw))
    capsys.readouterr()
    again = embed_dataset(m, open_dataset(root, "wds"), "image", cache_dir=cache, progress=False)
    assert m.calls["image"] > 0 and not again.cached
    assert "the cached embeddings changed on disk since they were written" in capsys.readouterr().err
    np.testing.assert_array_equal(again.vectors, first.vectors)
    third = FakeModel()
    assert embed_dataset(third, open_dataset(root, "wds"), "image", cache_dir=cache, progress=False).cached
    assert third.calls["image"] == 0


def test_cache_key_follows_weights_files_and_transforms(tmp_path):
    root = classification_wds(tmp_path / "d", n=6)
    cache = str(tmp_path / "cache")
    embed_dataset(FakeModel(), open_dataset(root, "wds"), "image", cache_dir=cache, progress=False)

    other_weights = FakeModel(seed=9)
    embed_dataset(other_weights, open_dataset(root, "wds"), "image", cache_dir=cache, progress=False)
    assert other_weights.calls["image"] > 0

    other_transform = FakeModel()
    other_transform.image_transform.size = 4
    other_transform.W_img = other_transform.W_img[: 3 * 16]
    embed_dataset(other_transform, open_dataset(root, "wds"), "image", cache_dir=cache, progress=False)
    assert other_transform.calls["image"] > 0

    shard = os.path.join(root, "test", "0.tar")
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # data files changed -> re-encode
    same = FakeModel()
    embed_dataset(same, open_dataset(root, "wds"), "image", cache_dir=cache, progress=False)
    assert same.calls["image"] > 0


def test_prompt_cache(tmp_path, fake_model):
    a = embed_texts(fake_model, ["a dog", "a cat"], cache_dir=str(tmp_path), progress=False)
    m2 = FakeModel()
    b = embed_texts(m2, ["a dog", "a cat"], cache_dir=str(tmp_path), progress=False)
    assert m2.calls["text"] == 0 and np.array_equal(a, b)
    embed_texts(m2, ["a dog", "a bird"], cache_dir=str(tmp_path), progress=False)
    assert m2.calls["text"] == 1


def test_prompts_are_encoded_once_per_model_and_precision_only_inside_same_weights_prompts():
    from align.bench.embed import same_weights_prompts
    a, b = FakeModel(seed=0), FakeModel(seed=1)
    prompts = [f"a photo of a {c}." for c in ("dog", "cat", "car")]
    embed_texts(a, prompts, progress=False)
    embed_texts(a, prompts, progress=False)
    assert a.calls["text"] == 2                                  # no block: weights may have changed (training)
    with same_weights_prompts():
        first = embed_texts(a, prompts, progress=False)
        again = embed_texts(a, prompts, progress=False)
        assert a.calls["text"] == 3 and np.array_equal(first, again)
        embed_texts(a, prompts[:2], progress=False)              # other prompts
        embed_texts(a, prompts, progress=False, precision="bf16")  # other precision
        embed_texts(b, prompts, progress=False)                  # another model
        assert (a.calls["text"], b.calls["text"]) == (5, 1)
    embed_texts(a, prompts, progress=False)
    assert a.calls["text"] == 6                                  # the block's memory is gone with it


def test_broken_samples_are_skipped_and_counted(tmp_path, fake_model, capsys):
    rng = np.random.default_rng(0)
    samples = [(f"s{i}", {"png": png_bytes(rng), "cls": "0"}) for i in range(5)]
    samples[1] = ("s1", {"png": b"\x89PNG garbage", "cls": "0"})
    samples[3] = ("s3", {"cls": "0"})  # no image
    ds = open_dataset(write_wds(tmp_path / "d", samples, classnames=["x"]), "wds")
    assert len(ds) == 4 and "1 samples with no image, audio or txt skipped (first: 0.tar:s3)" in ds.problems[0]
    e = embed_dataset(fake_model, ds, "image", cache_dir=str(tmp_path / "c"), progress=True)
    assert e.skipped == 1 and e.missing == 0 and list(e.ids) == [0, 2, 3]
    assert "s1" in e.errors[0] and "cannot decode image" in e.errors[0]
    assert "skipped 1 image samples" in capsys.readouterr().out
    again = embed_dataset(FakeModel(), ds, "image", cache_dir=str(tmp_path / "c"), progress=False)
    assert again.cached and again.skipped == 1 and again.errors == e.errors


class _NanModel(FakeModel):
    """Image row 2 of every batch and the embedding of any prompt with 'class1' are NaN (an fp16 overflow)."""

    def encode_image(self, x):
        out = super().encode_image(x)
        if len(out) > 2:
            out[2] = float("nan")
        return out

    def encode_text(self, tokens):
        out = super().encode_text(tokens)
        out[(tokens == self.tokenize(["class1"])[0, 0]).any(1)] = float("inf")
        return out


def test_a_nan_embedding_is_one_line_naming_the_sample_and_is_never_cached(tmp_path):
    """Before: FAISS's flat index ranked NaN image rows as numbers (acc1 came out) and index flat named
    'query row 1' of the labelled subset, no sample; a NaN prompt was 'gallery row 1' of the class vectors."""
    ds = open_dataset(classification_wds(tmp_path / "d", n=6, n_classes=3), "wds")
    cache = tmp_path / "c"
    for index in ("flat_faiss", "flat"):
        with pytest.raises(DataError, match=r"image embedding of sample '0\.tar:s0000002' is NaN or inf "
                                            r"\(1 of 6 rows\)$"):
            zeroshot_classification(_NanModel(), ds, index=index, cache_dir=str(cache), progress=False)
    assert not list(cache.rglob("image.npy"))
    with pytest.raises(DataError, match="text embedding of prompt 'a photo of a class1 thing7.' is NaN or inf"):
        embed_texts(_NanModel(), ["a photo of a class0", "a photo of a class1 thing7."], progress=False)
    with pytest.raises(DataError, match="fp32"):
        embed_dataset(_NanModel(), ds, "image", precision="bf16", progress=False)


def test_nothing_decodable_is_a_data_error(tmp_path, fake_model):
    ds = open_dataset(write_wds(tmp_path / "d", [("a", {"png": b"junk", "cls": "0"})]), "wds")
    with pytest.raises(DataError, match="no image could be encoded.*cannot decode image"):
        embed_dataset(fake_model, ds, "image", progress=False)


def test_missing_and_unknown_modalities(tmp_path):
    ds = open_dataset(classification_wds(tmp_path / "d", n=4), "wds")
    with pytest.raises(MissingModalityError, match="cannot encode 'audio'.*image, text"):
        embed_dataset(FakeModel(modalities=("image", "text")), ds, "audio", progress=False)
    with pytest.raises(ConfigError, match="unknown modality 'video'"):
        embed_dataset(FakeModel(), ds, "video", progress=False)


def test_state_dict_fingerprint_for_modules_without_fingerprint():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    with torch.no_grad():
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.bias[0] += 1e-3
    c = nn.Linear(3, 2)
    c.load_state_dict(b.state_dict())
    assert model_fingerprint(c) != model_fingerprint(a)
    with pytest.raises(Exception, match="neither fingerprint"):
        model_fingerprint(object())


class _AutocastProbe(FakeModel):
    """FakeModel that records whether it ran under autocast, and in which dtype its matmul came out."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def encode_image(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu"), (x.flatten(1) @ self.W_img).dtype))
        return super().encode_image(x)


def test_precision_autocasts_encoding_and_keys_the_cache(tmp_path):
    from align.bench.embed import check_precision
    ds = open_dataset(classification_wds(tmp_path / "d", n=9), "wds")
    cache = str(tmp_path / "cache")
    m = _AutocastProbe()
    a = embed_dataset(m, ds, "image", cache_dir=cache, progress=False)
    assert m.seen[-1] == (False, torch.float32)
    b = embed_dataset(m, ds, "image", cache_dir=cache, progress=False, precision="bf16")
    t = embed_texts(m, ["a cat", "a dog"], cache_dir=cache, progress=False, precision="bf16")
    assert m.seen[-1] == (True, torch.bfloat16) and not b.cached
    assert b.vectors.dtype == np.float32 and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b.vectors, axis=1), 1, atol=1e-5)   # re-normalised in float32
    assert 0 < np.abs(a.vectors - b.vectors).max() < 0.05                         # bf16 numbers, close to fp32
    assert sorted(os.listdir(cache)) == [m.fingerprint(), f"{m.fingerprint()}-bf16"]
    c = embed_dataset(m, ds, "image", cache_dir=cache, progress=False, precision="bf16")
    assert c.cached and np.array_equal(c.vectors, b.vectors)
    check_precision("bf16", "cpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        check_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="precision 'int8' is not one of"):
        embed_dataset(m, ds, "image", precision="int8", progress=False)


def test_worker_processes_give_the_same_embeddings_and_skip_counts(tmp_path, fake_model):
    rng = np.random.default_rng(0)
    samples = [(f"s{i:03d}", {"png": png_bytes(rng) if i != 5 else b"not a png", "cls": "0"}) for i in range(11)]
    ds = open_dataset(write_wds(tmp_path / "d", samples, per_shard=3), "wds")
    a = embed_dataset(fake_model, ds, "image", batch_size=4, num_workers=0, progress=False)
    b = embed_dataset(fake_model, ds, "image", batch_size=4, num_workers=2, progress=False)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.skipped == b.skipped == 1 and 5 not in b.ids


def test_a_transform_of_varying_shape_is_one_line_and_a_batch_crosses_from_a_worker_as_one_tensor(tmp_path):
    from align.bench.embed import _collate
    from align.errors import AlignError
    ds = open_dataset(classification_wds(tmp_path / "d", n=6), "wds")
    m = FakeModel()
    sizes = iter([8, 8, 4, 8, 8, 8] * 4)
    base = m.image_transform
    m.image_transform = lambda img: base(img)[..., :next(sizes)]           # one image comes out narrower
    for workers in (0, 2):
        with pytest.raises(AlignError, match=r"different shapes .* it must return a fixed shape"):
            embed_dataset(m, ds, "image", batch_size=6, num_workers=workers, progress=False)
    ids, x, errors = _collate([(0, torch.zeros(3, 2), None), (1, None, "bad"), (2, torch.ones(3, 2), None)])
    assert ids == [0, 2] and errors == ["bad"] and isinstance(x, torch.Tensor) and x.shape == (2, 3, 2)


def test_an_encoder_out_of_device_memory_is_one_line_naming_the_batch(tmp_path, fake_model, monkeypatch):
    ds = open_dataset(classification_wds(tmp_path / "d", n=13), "wds")

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
    monkeypatch.setattr(fake_model, "encode_image", oom)
    with pytest.raises(ConfigError, match=r"^out of memory on cpu encoding a batch of 4 image items; lower "
                                          r"--batch-size \(eval.batch_size in a recipe\)$"):
        embed_dataset(fake_model, ds, "image", batch_size=4, progress=False)


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("bs", [0, -1])
def test_a_batch_size_below_one_is_one_line(tmp_path, modality, bs):
    """0 was a ZeroDivisionError (image) and -1 an empty loader or range; both are refused by name."""
    from tests.bench.conftest import retrieval_wds
    ds = open_dataset(retrieval_wds(tmp_path / "ret", n=4), "wds")
    with pytest.raises(ConfigError, match=f"--batch-size must be >= 1, got {bs}"):
        embed_dataset(FakeModel(), ds, modality, batch_size=bs, progress=False)


def test_a_full_disk_while_caching_is_one_warning_and_the_benchmark_goes_on(tmp_path, capsys, monkeypatch):
    """ENOSPC while an entry was cached: an OSError traceback ended the benchmark, and the half-written
    image.npy.tmpPID stayed in the cache. Now: one warning line, the same results, nothing half-kept."""
    import errno

    import align.bench.embed as E
    root = classification_wds(tmp_path / "d", n=10)
    want = zeroshot_classification(FakeModel(), open_dataset(root, "wds"), progress=False)["metrics"]
    real = np.save

    def save(f, a, *args, **kw):
        f.write(b"\0" * 50)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(E.np, "save", save)
    cache = str(tmp_path / "cache")
    capsys.readouterr()
    got = zeroshot_classification(FakeModel(), open_dataset(root, "wds"), cache_dir=cache, progress=False)
    assert got["metrics"] == want
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"align: warning: {cache}/") and \
        f"No space left on device; embeddings are not cached in {cache} " in err[0], err
    assert [f for _, _, fs in os.walk(cache) for f in fs] == []
    monkeypatch.setattr(E.np, "save", real)                   # space again: the next run caches
    zeroshot_classification(FakeModel(), open_dataset(root, "wds"), cache_dir=cache, progress=False)
    assert sum(f.endswith(".json") for _, _, fs in os.walk(cache) for f in fs) == 2


def test_an_item_whose_caption_holds_a_lone_surrogate_is_skipped_counted_and_named(tmp_path, fake_model):
    """A caption no tokenizer reads (JSON's "\\ud800" in a table's caption; an HF tokenizer raised a TypeError,
    this model's str.encode a UnicodeEncodeError) skips its item's captions: the others are encoded, retrieval scores
    the rest, and the sample and position are named."""
    from align.bench.retrieval import retrieval
    from tests.bench.conftest import retrieval_wds
    ds = open_dataset(retrieval_wds(tmp_path / "d", n=6), "wds")
    ds.items[2].captions = ["red dog", "a blue \ud800 cat"]
    e = embed_dataset(fake_model, ds, "text", progress=False)
    assert e.skipped == 1 and 2 not in e.ids and sorted(set(e.ids.tolist())) == [0, 1, 3, 4, 5]
    assert e.errors == [f"sample {ds.items[2].key!r}: caption 2 of 2: lone surrogate at position 7"]
    res = retrieval(fake_model, ds, progress=False)
    assert res["n"]["paired_items"] == 5 and res["skipped"]["text"] == 1


def test_a_real_models_scores_and_rows_do_not_depend_on_the_batch_size_or_the_workers(tmp_path):
    """An image+text+audio model (open_clip towers, an audio CNN with BatchNorm): zero-shot and retrieval on 19
    items (clips of 19 lengths, 1-3 captions each, one broken image) give the same figures, the same rows in the same
    order and the same vectors (to float32 rounding) at batch 1, 7 and 256, with 0 or 2 decode workers."""
    from align.bench import BENCHMARKS
    from align.train.evaluate import flatten
    from tests.bench.conftest import wav_bytes
    from tests.export.conftest import TINY_AUDIO_CNN, make_run
    _, model = make_run(tmp_path, towers={"audio": TINY_AUDIO_CNN})
    model.eval()
    rng = np.random.default_rng(0)
    samples = [(f"k{i:03d}", {"png": png_bytes(rng, size=12 + i % 5) if i != 5 else b"broken", "cls": str(i % 4),
                              "flac": wav_bytes(rng, n=60 + 37 * i, fmt="FLAC"),
                              "txt": "\n".join(f"caption {i} {j}" for j in range(1 + i % 3))}) for i in range(19)]
    ds = open_dataset(write_wds(tmp_path / "d", samples, per_shard=5, classnames=list("abcd"),
                                templates=["x {c}.", "y {c}"]), "wds")
    entries = [{"task": "zeroshot", "modality": "image"}, {"task": "zeroshot", "modality": "audio"},
               {"task": "retrieval", "query": "text", "gallery": "image"},
               {"task": "retrieval", "query": "text", "gallery": "audio"}]
    runs = {}
    for workers, batch in ((0, 1), (2, 7), (0, 256)):
        kw = dict(batch_size=batch, device=None, num_workers=workers, progress=False,
                  cache_dir=str(tmp_path / f"cache-{workers}-{batch}"))        # each layout encodes once
        emb = {m: embed_dataset(model, ds, m, **kw) for m in ("image", "audio", "text")}
        results = [dict(BENCHMARKS.get(e["task"])(model, dict(e), dataset=ds, pretrained=None, **kw),
                        eval_key=f"{e.get('modality') or e['query'] + '-' + e['gallery']}/{e['task']}")
                   for e in entries]
        runs[(workers, batch)] = (flatten(results), emb)
    (ref, ref_emb), *others = runs.values()
    assert len(ref) == 16 and ref_emb["image"].skipped == 1 and len(ref_emb["text"].ids) == 37
    for flat, emb in others:
        assert flat == ref
        for m, e in emb.items():
            np.testing.assert_array_equal(e.ids, ref_emb[m].ids)
            np.testing.assert_allclose(e.vectors, ref_emb[m].vectors, rtol=0, atol=1e-6)
