"""Retrieval recall@k vs a plain numpy (argsort) reference; paired, multi-caption and emergent retrieval."""
import os

import numpy as np
import pytest

from align.bench.datasets import open_dataset
from align.bench.embed import embed_dataset
from align.bench.retrieval import emergent_retrieval, recall_at_ks, retrieval
from align.errors import ConfigError, DataError
from tests.bench.conftest import FakeModel, classification_wds, png_bytes, retrieval_wds, write_wds


def _ref_recall(q, q_groups, g, g_groups, k):
    """Fraction of queries with a same-group gallery row among the k highest inner products (full argsort)."""
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :k]
    return np.mean([np.any(g_groups[order[i]] == q_groups[i]) for i in range(len(q))])


def _norm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_matches_reference_with_several_captions_per_item():
    rng = np.random.default_rng(0)
    n_items = 50
    img = _norm(rng.standard_normal((n_items, 16)))
    cap_item = np.repeat(np.arange(n_items), rng.integers(1, 6, n_items))        # 1-5 captions per item
    txt = _norm(img[cap_item] + 1.2 * rng.standard_normal((len(cap_item), 16)))  # noisy copies: recall in (0, 1)
    from align.bench.index import build_index, search

    for q, qg, g, gg in ((txt, cap_item, img, np.arange(n_items)), (img, np.arange(n_items), txt, cap_item)):
        ids = search(build_index("flat", g), q, 10)[1]
        got = recall_at_ks(ids, qg, gg, (1, 5, 10))
        for k in (1, 5, 10):
            assert got[k] == pytest.approx(_ref_recall(q, qg, g, gg, k), abs=1e-12)
        assert 0 < got[1] < got[10] < 1


def test_missing_results_never_count_as_hits():
    ids = np.array([[2, -1, -1], [-1, -1, -1]])
    got = recall_at_ks(ids, np.array([0, 0]), np.array([0, 1, 0]), (1, 3))
    assert got == {1: 0.5, 3: 0.5}


def test_text_image_pipeline_matches_reference_and_names_keys_like_clip_benchmark(tmp_path):
    root = retrieval_wds(tmp_path / "r", n=30, caps=(1, 4))
    model = FakeModel(dim=12, seed=2)
    ds = open_dataset(root, "wds")
    res = retrieval(model, ds, progress=False)
    t, i = embed_dataset(model, ds, "text", progress=False), embed_dataset(model, ds, "image", progress=False)
    for k in (1, 5, 10):
        assert res["metrics"][f"image_retrieval_recall@{k}"] == pytest.approx(
            _ref_recall(t.vectors, t.ids, i.vectors, i.ids, k))
        assert res["metrics"][f"text_retrieval_recall@{k}"] == pytest.approx(
            _ref_recall(i.vectors, i.ids, t.vectors, t.ids, k))
    assert res["task"] == "zeroshot_retrieval"
    assert res["n"]["text->image"] == {"queries": len(t.ids), "gallery": 30}
    assert list(res["seconds"]) == ["encode_text", "encode_image", "index text->image", "search text->image",
                                    "index image->text", "search image->text"]


def test_seconds_time_the_search_of_each_direction_apart_from_encoding(tmp_path, monkeypatch):
    import time

    import align.bench.retrieval as rt

    real = rt.search

    def slow_search(index, queries, k, **kw):     # 1 s for the image queries (12-d, 16 rows) only
        if len(queries) == 16:
            time.sleep(1.0)
        return real(index, queries, k, **kw)

    monkeypatch.setattr(rt, "search", slow_search)
    ds = open_dataset(retrieval_wds(tmp_path / "r", n=16, caps=(2, 2)), "wds")
    sec = retrieval(FakeModel(dim=12), ds, progress=False)["seconds"]
    assert sec["search image->text"] >= 1.0
    assert max(sec["search text->image"], sec["encode_text"], sec["encode_image"], sec["index image->text"]) < 1.0


def test_audio_pairs_use_the_retrieved_modality_in_key_names(tmp_path):
    root = retrieval_wds(tmp_path / "r", n=16, audio=True)
    ds = open_dataset(root, "wds")
    m = retrieval(FakeModel(), ds, query_modality="text", gallery_modality="audio", progress=False)["metrics"]
    assert set(m) == {f"{x}_retrieval_recall@{k}" for x in ("audio", "text") for k in (1, 5, 10)}
    m = retrieval(FakeModel(), ds, query_modality="audio", gallery_modality="image", both_directions=False,
                  ks=(1, 3), progress=False)["metrics"]
    assert set(m) == {"image_retrieval_recall@1", "image_retrieval_recall@3"}
    with pytest.raises(ConfigError, match="two different modalities"):
        retrieval(FakeModel(), ds, query_modality="image", gallery_modality="image", progress=False)


def test_items_missing_a_modality_or_failing_to_decode_are_left_out_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(f"s{i}", {"png": png_bytes(rng), "txt": f"red dog {i}\nblue cat {i}"}) for i in range(6)]
    samples[2] = ("s2", {"png": b"not a png", "txt": "broken image"})
    samples[4] = ("s4", {"txt": "no image at all"})
    root = write_wds(tmp_path / "r", samples, dataset_type="retrieval")
    res = retrieval(FakeModel(), open_dataset(root, "wds"), progress=False)
    assert res["skipped"]["image"] == 1 and "s2" in res["errors"][0]
    assert res["n"]["paired_items"] == 4
    assert res["n"]["text->image"] == {"queries": 8, "gallery": 4}


def test_ivf_reports_recall_against_exact(tmp_path):
    root = retrieval_wds(tmp_path / "r", n=40)
    res = retrieval(FakeModel(), open_dataset(root, "wds"), index="ivf", index_params={"nlist": 2, "nprobe": 2},
                    progress=False)
    exact = retrieval(FakeModel(), open_dataset(root, "wds"), progress=False)
    assert res["index"]["text->image"]["recall_vs_exact@10"] == 1.0  # every list probed: exact
    assert res["metrics"] == pytest.approx(exact["metrics"])


def _audio_folder(root, classes, per_class, seed):
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(os.path.join(root, c))
        for j in range(per_class):
            sf.write(os.path.join(root, c, f"{j}.wav"), rng.standard_normal(80).astype(np.float32) * 0.1, 8000)
    return str(root)


def test_emergent_retrieval_across_datasets_matches_by_class_name(tmp_path):
    # images: wds with classes "class0 thing0".. ; audio folder uses the same names (different case), plus one extra
    img_root = classification_wds(tmp_path / "img", n=24, n_classes=4)
    img = open_dataset(img_root, "wds")
    aud_root = _audio_folder(tmp_path / "aud", [n.upper() for n in img.classnames] + ["zzz extra"], 3, seed=1)
    aud = open_dataset(aud_root, "audiofolder")
    model = FakeModel()
    res = emergent_retrieval(model, aud, gallery_dataset=img, query_modality="audio", gallery_modality="image",
                             progress=False)
    assert res["task"] == "emergent_retrieval" and res["n"]["classes_shared"] == 4
    assert res["n"]["queries_without_class_match"] == {"audio": 3, "image": 0}
    # reference: audio query hits when a top-k image has the same class name
    a, i = embed_dataset(model, aud, "audio", progress=False), embed_dataset(model, img, "image", progress=False)
    a_cls = np.array([aud.classnames[l].lower() for l in aud.labels[a.ids]])
    i_cls = np.array([img.classnames[l].lower() for l in img.labels[i.ids]])
    keep = np.isin(a_cls, i_cls)
    for k in (1, 5):
        assert res["metrics"][f"image_retrieval_recall@{k}"] == pytest.approx(
            _ref_recall(a.vectors[keep], a_cls[keep], i.vectors, i_cls, k))
        assert res["metrics"][f"audio_retrieval_recall@{k}"] == pytest.approx(
            _ref_recall(i.vectors, i_cls, a.vectors, a_cls, k))


def test_emergent_retrieval_within_one_dataset_uses_labels(tmp_path):
    root = classification_wds(tmp_path / "d", n=18, n_classes=3, audio=True)
    res = emergent_retrieval(FakeModel(), open_dataset(root, "wds"), progress=False, ks=(1,))
    assert set(res["metrics"]) == {"image_retrieval_recall@1", "audio_retrieval_recall@1"}


def test_emergent_retrieval_with_no_shared_class_is_a_data_error(tmp_path):
    img = open_dataset(classification_wds(tmp_path / "img", n=8, n_classes=2), "wds")
    aud = open_dataset(_audio_folder(tmp_path / "aud", ["other"], 2, 0), "audiofolder")
    with pytest.raises(DataError, match="no class is shared"):
        emergent_retrieval(FakeModel(), aud, gallery_dataset=img, progress=False)
