"""FAISS index factory, batched search and approximate-recall measurement vs numpy references."""
import numpy as np
import pytest

import align.bench.index as bench_index
from align.bench.index import (INDEXES, build_index, default_nlist, default_pq_m, describe_index, exact_topk,
                               exact_topk_chunks,
                               list_major_search, recall_against_exact, search)
from align.errors import ConfigError, DataError


def _norm(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n, d, n_centers, seed, spread=0.3):
    """Unit vectors around random centres (ANN indexes are meant for structured data, not uniform noise)."""
    rng = np.random.default_rng(seed)
    centers = _norm(rng.standard_normal((n_centers, d)))
    x = centers[rng.integers(0, n_centers, n)] + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    return _norm(x)


def _ref_topk(gallery, queries, k):  # plain numpy: full argsort of -scores
    return np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k]


def test_registry_names():
    assert INDEXES.names() == ["flat", "flat_faiss", "hnsw", "ivf", "ivfpq"]
    with pytest.raises(ConfigError, match="unknown index type 'annoy'"):
        build_index("annoy", np.ones((4, 2), np.float32))


def test_flat_search_equals_numpy_argsort_and_batching_is_invisible():
    rng = np.random.default_rng(0)
    g, q = _norm(rng.standard_normal((300, 24))), _norm(rng.standard_normal((70, 24)))
    idx = build_index("flat", g)
    scores, ids = search(idx, q, 7, batch_size=16)  # 5 batches, last one partial
    ref = _ref_topk(g, q, 7)
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ g.T, ref, 1), atol=1e-5)
    np.testing.assert_array_equal(search(idx, q, 7, batch_size=1000)[1], ids)
    np.testing.assert_array_equal(exact_topk(g, q, 7), ref)
    assert recall_against_exact(idx, g, q, 7) == 1.0


def test_flat_is_the_exact_index_and_agrees_with_faiss_flat():
    """`flat` (bf16 scoring + float64 re-rank) and the previous FAISS IndexFlatIP give the same top-k."""
    g = _clustered(3000, 48, 30, seed=8)
    q = _clustered(400, 48, 30, seed=9)
    new, old = build_index("flat", g, batch_size=100), build_index("flat_faiss", g)
    ids_new, ids_old = search(new, q, 10)[1], search(old, q, 10)[1]
    np.testing.assert_array_equal(ids_new, ids_old)
    np.testing.assert_array_equal(ids_new, _ref_topk(g, q, 10))
    info = describe_index(new)
    assert info["exact"] and info["scoring"] == "bf16" and info["ntotal"] == 3000 and info["mean_candidates"] >= 10
    assert describe_index(old) == {"ntotal": 3000, "dim": 48}
    with pytest.raises(ConfigError, match="index flat: bad parameters"):
        build_index("flat", g, nprobe=3)


def test_k_larger_than_gallery_is_clipped():
    g = _norm(np.random.default_rng(1).standard_normal((3, 8)))
    scores, ids = search(build_index("flat", g), g, 10)
    assert ids.shape == (3, 3) and sorted(ids[0]) == [0, 1, 2]


@pytest.mark.parametrize("name,params,min_recall", [
    ("hnsw", {}, 0.95),
    ("ivf", {"nprobe": 8}, 0.9),
    ("ivfpq", {"nprobe": 8, "pq_m": 16}, 0.5),
])
def test_approximate_indexes_recall_vs_exact(name, params, min_recall):
    g = _clustered(4000, 32, 40, seed=2)
    q = _clustered(200, 32, 40, seed=2)  # same centres (same seed), different points
    q = _norm(q + 0.05 * np.random.default_rng(3).standard_normal(q.shape).astype(np.float32))
    idx = build_index(name, g, **params)
    assert idx.ntotal == len(g) and idx.is_trained
    r = recall_against_exact(idx, g, q, 10)
    # the measurement itself, against a numpy reference
    ref, approx = _ref_topk(g, q, 10), search(idx, q, 10)[1]
    assert r == pytest.approx(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, ref)]))
    assert min_recall <= r <= 1.0
    info = describe_index(idx)
    assert info["ntotal"] == 4000 and info["dim"] == 32
    if name != "hnsw":
        assert info["nprobe"] == 8 and info["nlist"] == default_nlist(4000)
    if name == "ivfpq":
        assert info["pq_m"] == 16 and info["pq_nbits"] == 6  # log2(4000 // 39) -> 6 bits


def test_ivf_with_one_probe_is_measurably_approximate():
    g = _norm(np.random.default_rng(4).standard_normal((2000, 16)))  # unstructured: IVF with nprobe=1 misses
    q = _norm(np.random.default_rng(5).standard_normal((100, 16)))
    idx = build_index("ivf", g, nlist=32, nprobe=1)
    assert recall_against_exact(idx, g, q, 10) < 0.9


def test_defaults_and_bad_params():
    assert default_nlist(100_000) == 1265 and default_nlist(100) == 2 and default_nlist(5) == 1
    assert default_pq_m(512) == 64 and default_pq_m(24) == 3
    g = _norm(np.random.default_rng(0).standard_normal((500, 24)))
    with pytest.raises(ConfigError, match="index ivf: bad parameters"):
        build_index("ivf", g, n_list=4)
    with pytest.raises(ConfigError, match="pq_m=5 must divide"):
        build_index("ivfpq", g, pq_m=5)
    with pytest.raises(DataError, match="non-empty"):
        build_index("flat", np.zeros((0, 4), np.float32))


def test_lists_or_centroids_more_than_the_gallery_rows_are_one_line():
    """Before: FAISS's C++ assertion as a RuntimeError traceback ('Error in void faiss::Clustering::train_encoded
    ... Number of training points (100) should be at least as large as number of clusters (256)'): a suite's
    index_params on a 100-class zero-shot, or ivfpq's defaults on a one-item gallery."""
    g = _norm(np.random.default_rng(0).standard_normal((100, 16)))
    with pytest.raises(ConfigError, match=r"^index ivfpq: pq_nbits=8 \(256 centroids per sub-quantizer\) needs at "
                                          r"least 256 rows to train on, the gallery gives 100; lower pq_nbits"):
        build_index("ivfpq", g, pq_nbits=8)
    with pytest.raises(ConfigError, match=r"^index ivf: nlist=200 \(200 lists\) needs at least 200 rows"):
        build_index("ivf", g, nlist=200)
    with pytest.raises(ConfigError, match=r"^index ivfpq: pq_nbits=1 .* the gallery gives 1; .*index flat"):
        build_index("ivfpq", g[:1])
    assert build_index("ivfpq", g, pq_nbits=6).ntotal == 100 and build_index("ivf", g, nlist=100).ntotal == 100


def test_list_major_ivf_search_gives_faiss_results(monkeypatch):
    g = _clustered(6000, 32, 50, seed=6)
    q = _norm(_clustered(3000, 32, 50, seed=6) + 0.1 * np.random.default_rng(7).standard_normal((3000, 32)))
    idx = build_index("ivf", g, nlist=40, nprobe=3)
    ref_s, ref_i = idx.search(q, 10)
    got_s, got_i = list_major_search(idx, q, 10)
    assert np.mean(got_i == ref_i) >= 0.999                    # same probes, same exact float32 scores
    np.testing.assert_allclose(got_s, ref_s, atol=1e-5)
    # k beyond what one probed list holds: -1 / -inf padding where FAISS pads too
    idx.nprobe = 1
    ref_s, ref_i = idx.search(q[:200], 400)
    got_s, got_i = list_major_search(idx, q[:200], 400)
    np.testing.assert_array_equal(got_i == -1, ref_i == -1)
    assert (got_i == -1).any() and np.isneginf(got_s[got_i == -1]).all()
    np.testing.assert_array_equal(np.sort(got_i, 1), np.sort(ref_i, 1))
    # search() takes the list-major path for IVF-Flat batches with >= 8 (query, list) pairs per list
    idx.nprobe = 3
    calls = []
    real = bench_index.list_major_search
    monkeypatch.setattr(bench_index, "list_major_search", lambda *a: calls.append(len(a[1])) or real(*a))
    s, i = search(idx, q, 10, batch_size=1000)                 # 1000 * 3 >= 8 * 40
    assert calls == [1000, 1000, 1000] and np.mean(i == idx.search(q, 10)[1]) >= 0.999
    calls.clear()
    search(idx, q[:50], 10)                                    # 50 * 3 < 8 * 40: FAISS's own search
    search(build_index("ivfpq", g, nlist=40, pq_m=8), q, 10)   # not IVF-Flat
    assert calls == []


def _planted(n=200, d=8, q=30, copies=40, seed=0):
    """Unit gallery [n, D] whose rows 0..copies-1 are exact copies of `copies` other rows, queries [q, D]."""
    rng = np.random.default_rng(seed)
    g = _norm(rng.standard_normal((n, d)))
    g[:copies] = g[rng.choice(np.arange(copies, n), copies, replace=False)]     # tied duplicates
    return g, _norm(rng.standard_normal((q, d)))


def _plain_tie_recall(got, g, q, k, tol=1e-6):
    """Reference: per query, the returned distinct ids whose float64 score >= the k-th best score - tol, / k."""
    s = q.astype(np.float64) @ g.astype(np.float64).T                             # [Q, N]
    total = 0
    for i, row in enumerate(got[:, :k]):
        kth = np.sort(s[i])[::-1][k - 1]
        total += sum(1 for j in set(row.tolist()) - {-1} if s[i, j] >= kth - tol)
    return total / (len(got) * k)


@pytest.mark.parametrize("seed", range(5))
def test_tie_aware_recall_against_a_plain_reference(seed):
    """A returned duplicate of an exact top-k row (same score) is a hit, not a miss: random ids, the exact ids,
    ids with their tied twins swapped in, repeats and -1s all score what the plain per-query count says."""
    from align.bench.index import topk_recall
    g, q = _planted(seed=seed)
    rng = np.random.default_rng(seed)
    exact = exact_topk(g, q, 10)
    twin = {}
    for i in range(40):
        twin[int(np.flatnonzero((g == g[i]).all(1) & (np.arange(len(g)) != i))[0])] = i
    twin.update({v: k for k, v in twin.items()})
    swapped = np.array([[twin[j] if j in twin and twin[j] not in r else j for j in r] for r in exact.tolist()])
    rand = np.stack([rng.choice(len(g), 10, replace=False) for _ in q])
    rand[::4, -2:] = -1
    rand[1::4, 1] = rand[1::4, 0]                                                   # an id returned twice
    for got in (exact, swapped, rand, np.concatenate([exact[:, :5], rand[:, :5]], 1)):
        for k in (1, 5, 10):
            ref = _plain_tie_recall(got, g, q, k)
            assert abs(topk_recall(got, exact, k, queries=q, rows=g.__getitem__) - ref) < 1e-12
    assert (swapped != exact).any()                                                 # ties were really planted
    assert topk_recall(swapped, exact, 10, queries=q, rows=g.__getitem__) == 1.0
    assert topk_recall(swapped, exact, 10) < 1.0                                    # the plain id count misses them


def test_an_exact_index_has_recall_one_on_a_corpus_with_duplicates():
    """FAISS's flat index breaks ties its own way; against exact_topk it is still exact: recall 1.0."""
    g, q = _planted(n=400, d=8, q=60, copies=150, seed=1)
    assert recall_against_exact(build_index("flat_faiss", g), g, q, 10) == 1.0
    assert recall_against_exact(build_index("hnsw", g, ef_search=256), g, q, 10) == 1.0


def test_topk_recall_against_a_plain_count():
    from align.bench.index import topk_recall
    rng = np.random.default_rng(3)
    exact = np.stack([rng.permutation(50)[:12] for _ in range(40)])            # [Q, 12] distinct ids
    got = np.stack([rng.permutation(50)[:12] for _ in range(40)])
    got[::5, -3:] = -1                                                           # fewer than k found
    for k in (1, 5, 10):
        plain = sum(len(set(g[:k].tolist()) & set(e[:k].tolist()) - {-1}) for g, e in zip(got, exact)) / (40 * k)
        assert abs(topk_recall(got, exact, k) - plain) < 1e-12
    assert topk_recall(exact, exact, 10) == 1.0


def test_exact_topk_over_chunks_equals_exact_topk():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((1000, 24)).astype(np.float32)
    q = rng.standard_normal((40, 24)).astype(np.float32)
    cuts = [0, 1, 300, 301, 650, 1000]                  # uneven chunks, two of a single row
    chunks = [(a, g[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    for k in (1, 10, 50):
        np.testing.assert_array_equal(exact_topk_chunks(iter(chunks), q, k), exact_topk(g, q, k))
    assert exact_topk_chunks(iter(chunks[:2]), q, 10).shape == (40, 10)     # two chunks, 301 rows
    # exact copies in other chunks score the same: ties go to the lower id, whichever chunk found them
    g[700] = g[10]
    g[999] = g[10]
    assert exact_topk_chunks(iter(chunks), g[10:11], 3)[0].tolist() == [10, 700, 999]
    assert exact_topk_chunks(iter(chunks[::-1]), g[10:11], 3)[0].tolist() == [10, 700, 999]


def test_benchmarks_search_where_they_encode_when_the_index_can():
    from align.bench.index import index_params_on

    assert index_params_on("flat", None, "cuda:1") == {"device": "cuda:1"}
    assert index_params_on("flat", {"device": "cpu", "extra": 4}, "cuda") == {"device": "cpu", "extra": 4}
    assert index_params_on("ivf", {"nprobe": 4}, "cuda") == {"nprobe": 4}      # FAISS CPU index: no device
    assert index_params_on("flat", {"extra": 4}, None) == {"extra": 4}


def test_zeroshot_and_retrieval_hand_their_device_to_the_flat_index(tmp_path, monkeypatch):
    import align.bench.retrieval as rt
    import align.bench.zeroshot as zs
    from align.bench.datasets import open_dataset
    from tests.bench.conftest import FakeModel, classification_wds, retrieval_wds

    seen = []

    def spy(real):
        def build(name, gallery, **params):
            seen.append((name, params.get("device")))
            return real(name, gallery, **params)
        return build

    monkeypatch.setattr(zs, "build_index", spy(zs.build_index))
    monkeypatch.setattr(rt, "build_index", spy(rt.build_index))
    cls = open_dataset(classification_wds(tmp_path / "c", n=12, n_classes=3), "wds")
    res = zs.zeroshot_classification(FakeModel(dim=8), cls, device="cpu", progress=False)
    assert res["index"]["params"]["device"] == "cpu"
    rt.retrieval(FakeModel(dim=8), open_dataset(retrieval_wds(tmp_path / "r", n=10), "wds"), device="cpu",
                 progress=False)
    zs.zeroshot_classification(FakeModel(dim=8), cls, progress=False, index="hnsw")
    assert seen == [("flat", "cpu"), ("flat", "cpu"), ("flat", "cpu"), ("hnsw", None)]


def test_a_gallery_too_big_for_the_encoding_gpu_is_searched_on_the_cpu_with_a_warning(monkeypatch, caplog):
    """The device a benchmark hands the exact index is its encoding device, not the user's choice: a gallery that
    cannot fit in that GPU's free memory (stubbed here: no GPU) stays on the CPU; a device named in the index's
    params is kept (ExactIndex then refuses it in one line)."""
    import logging

    import torch
    from align.bench import exact
    from align.bench.index import index_params_on

    n, d = 2_000_000, 512
    free = {"bytes": exact.gpu_bytes(n, d, "bf16") - 1}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (free["bytes"], 80 << 30))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with caplog.at_level(logging.WARNING, logger="align.bench"):
        assert index_params_on("flat", {"extra": 4}, "cuda:0", gallery=(n, d)) == {"extra": 4}
    assert "2,000,000 x 512" in caplog.text and "searching on the CPU instead" in caplog.text
    assert index_params_on("flat", {"device": "cuda:0"}, "cuda:0", gallery=(n, d)) == {"device": "cuda:0"}
    assert index_params_on("flat", {"scoring": "fp32"}, "cuda:0", gallery=(n // 4, d)) == \
        {"scoring": "fp32", "device": "cuda:0"}
    free["bytes"] += 1
    assert index_params_on("flat", None, "cuda:0", gallery=(n, d)) == {"device": "cuda:0"}
    assert index_params_on("flat", None, "gpu0", gallery=(n, d)) == {"device": "gpu0"}   # refused by the index


def test_retrieval_hands_the_index_its_largest_gallery(tmp_path, monkeypatch):
    import align.bench.retrieval as rt
    from align.bench.datasets import open_dataset
    from tests.bench.conftest import FakeModel, retrieval_wds

    seen = []
    real = rt.index_params_on
    monkeypatch.setattr(rt, "index_params_on", lambda *a, **k: seen.append(a[3:] + tuple(k.values())) or real(*a, **k))
    rt.retrieval(FakeModel(dim=8), open_dataset(retrieval_wds(tmp_path / "r", n=10, caps=(3, 3)), "wds"),
                 device="cpu", progress=False)
    assert seen == [((30, 8),)]                     # 10 images, 30 captions: image->text's gallery is the larger
    seen.clear()
    rt.retrieval(FakeModel(dim=8), open_dataset(retrieval_wds(tmp_path / "r1", n=10, caps=(1, 1)), "wds"),
                 device="cpu", progress=False, both_directions=False, query_modality="image",
                 gallery_modality="text")
    assert seen == [((10, 8),)]


def empty_probe_ivf(d=8, n=6):
    """A real IVF-Flat of 2 lists (centroids e0, -e0) whose items all sit in list 0, and a query nearest -e0: with
    nprobe=1 FAISS finds nothing for it (ids -1, scores -3.4e38); -> (index, gallery [n, D], query [1, D])."""
    import faiss
    e0 = np.eye(d, dtype=np.float32)[:1]
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(np.concatenate([e0, -e0]))
    ivf = faiss.IndexIVFFlat(quantizer, d, 2, faiss.METRIC_INNER_PRODUCT)
    g = _norm(e0 + 0.1 * np.random.default_rng(0).standard_normal((n, d)).astype(np.float32))
    ivf.add(g)
    ivf.nprobe = 1
    return ivf, g, -e0


def test_search_pads_a_short_answer_with_minus_one_and_minus_inf_and_answers_an_empty_gallery():
    """FAISS pads what an approximate index did not find with id -1 and score -3.4e38 (a number a caller could sort
    or print as a score): search gives -inf there, as list-major and re-ranked searches do. A gallery of 0 rows
    (FAISS asserts k > 0) gives [Q, 0]; one row with k=10 gives that row."""
    import faiss
    ivf, g, q = empty_probe_ivf()
    scores, ids = search(ivf, np.concatenate([q, g[:1]]), 10)
    assert ids.shape == (2, 6) and (ids[0] == -1).all() and np.isneginf(scores[0]).all()
    assert sorted(ids[1]) == list(range(6)) and np.isfinite(scores[1]).all()
    hnsw = build_index("hnsw", _norm(np.random.default_rng(2).standard_normal((200, 8))))
    s, i = search(hnsw, _norm(np.random.default_rng(3).standard_normal((5, 8))), 1000)
    assert (i == -1).any() and np.isneginf(s[i == -1]).all() and (s[i >= 0] >= -1.0001).all()
    for empty in (faiss.IndexFlatIP(8), ivf.__class__(faiss.IndexFlatIP(8), 8, 1, faiss.METRIC_INNER_PRODUCT)):
        s, i = search(empty, q, 10)
        assert s.shape == i.shape == (1, 0)
    s, i = search(build_index("flat_faiss", g[:1]), g, 10)
    assert i.shape == (6, 1) and (i == 0).all() and np.isfinite(s).all()
