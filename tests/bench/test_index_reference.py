"""The IVF list-major search and the re-ranked (refined) search against plain per-query loops: the lists a query
probes, every item in them scored in float64, the top k; ties, k beyond the probed items, duplicated rows."""
import numpy as np
import pytest

from align.bench.index import Refined, build_index, list_major_search, refine_search, search


def _norm(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _plain_ivf(index, gallery, queries, k):
    """Per query: the nprobe lists whose centroids score highest, every gallery row assigned (best centroid) to one
    of them scored in float64, sorted -> (scores [Q, k] float64, -inf padded; ids [Q, k], -1 padded)."""
    import faiss
    ivf = faiss.extract_index_ivf(index)
    cent = ivf.quantizer.reconstruct_n(0, ivf.nlist).astype(np.float64)          # [L, D]
    g64, q64 = gallery.astype(np.float64), queries.astype(np.float64)
    assigned = np.argmax(g64 @ cent.T, axis=1)                                    # [N] each row's list
    scores = np.full((len(q64), k), -np.inf)
    ids = np.full((len(q64), k), -1, np.int64)
    for i, q in enumerate(q64):
        probes = np.argsort(-(cent @ q), kind="stable")[:ivf.nprobe]
        cand = [j for j in range(len(g64)) if assigned[j] in probes]
        ranked = sorted(((-float(g64[j] @ q), j) for j in cand))[:k]
        for r, (s, j) in enumerate(ranked):
            scores[i, r], ids[i, r] = -s, j
    return scores, ids


def _same_up_to_ties(got_s, got_i, ref_s, ref_i, gallery, queries, tol=1e-5):
    """Same scores, and ids that differ only where their float64 scores tie (within tol); -1 exactly where."""
    np.testing.assert_array_equal(got_i == -1, ref_i == -1)
    ok = ref_i >= 0
    np.testing.assert_allclose(got_s[ok], ref_s[ok], atol=tol)
    assert (got_s[~ok] <= -3.4e38).all()               # -inf (align's paths) or FAISS's own pad, -FLT_MAX
    for i, (g, r) in enumerate(zip(got_i, ref_i)):
        assert len(set(g[g >= 0].tolist())) == int((g >= 0).sum())                 # no id twice
        for a, b in zip(g[g >= 0], r[r >= 0]):
            if a != b:
                sa, sb = (float(gallery[x].astype(np.float64) @ queries[i].astype(np.float64)) for x in (a, b))
                assert abs(sa - sb) < tol, (i, a, b, sa, sb)


@pytest.mark.parametrize("nprobe,k", [(3, 10), (1, 60), (8, 1)])
def test_list_major_search_equals_a_plain_per_query_loop(nprobe, k):
    rng = np.random.default_rng(nprobe)
    g = _norm(rng.standard_normal((800, 16)))
    g[700:] = g[:100]                                   # duplicated rows: tied scores (same list)
    q = _norm(rng.standard_normal((120, 16)))
    q[:5] = g[:5]                                       # queries that are gallery rows (and their twins)
    index = build_index("ivf", g, nlist=20, nprobe=nprobe)
    got_s, got_i = list_major_search(index, q, k)
    ref_s, ref_i = _plain_ivf(index, g, q, k)
    _same_up_to_ties(got_s, got_i, ref_s, ref_i, g, q)
    assert np.isneginf(got_s[got_i == -1]).all()
    if k == 60 and nprobe == 1:
        assert (ref_i == -1).any()                      # k beyond the items of one probed list: padded
    s2, i2 = search(index, q, k, list_major=False)      # and FAISS's own search meets the same reference
    _same_up_to_ties(s2, i2, ref_s[:, :i2.shape[1]], ref_i[:, :i2.shape[1]], g, q)


def _plain_refine(index, store, queries, k, factor):
    """The index's own k + (F-1)*min(k, 10) candidates (clipped to the gallery), each re-scored in float64 from the
    store by a loop, best first -> (scores [Q, k] -inf padded, ids [Q, k] -1 padded)."""
    kk = min(k + (factor - 1) * min(k, 10), index.ntotal)
    _, cand = index.search(np.ascontiguousarray(queries, dtype=np.float32), kk)
    scores = np.full((len(queries), k), -np.inf)
    ids = np.full((len(queries), k), -1, np.int64)
    for i, row in enumerate(cand):
        ranked = sorted((-float(np.asarray(store[j], np.float64) @ queries[i].astype(np.float64)), j)
                        for j in row if j >= 0)[:k]
        for r, (s, j) in enumerate(ranked):
            scores[i, r], ids[i, r] = -s, j
    return scores, ids


@pytest.mark.parametrize("kind,k,factor", [("ivfpq", 10, 4), ("ivfpq", 25, 2), ("hnsw", 5, 3), ("ivf", 300, 2),
                                           ("ivf", 1, 16)])
def test_refined_search_equals_a_plain_rescoring_of_the_candidates(kind, k, factor):
    """Also: a float16 store (scores exact up to its rounding), k beyond the gallery (-1 padded), candidates an
    IVF with one probe cannot fill (-1 among them), duplicated rows (ties)."""
    rng = np.random.default_rng(k)
    g = _norm(rng.standard_normal((250, 16)))
    g[200:] = g[:50]
    q = _norm(rng.standard_normal((40, 16)))
    params = {"ivfpq": dict(nlist=4, pq_m=4, pq_nbits=4), "hnsw": {}, "ivf": dict(nlist=8, nprobe=1)}[kind]
    index = build_index(kind, g, **params)
    store = g.astype(np.float16)
    got_s, got_i = Refined(index, store, factor).search(q, k)
    ref_s, ref_i = _plain_refine(index, store, q, k, factor)
    assert got_s.shape == got_i.shape == (len(q), k)
    _same_up_to_ties(got_s, got_i, ref_s, ref_i, store.astype(np.float32), q, tol=1e-6)
    assert np.isneginf(got_s[got_i == -1]).all()
    if k == 300:
        assert (got_i[:, 250:] == -1).all() and (got_i[:, :10] >= 0).all()
    s32, i32 = refine_search(index, g, q, k, factor)                          # a float32 store
    r32 = _plain_refine(index, g, q, k, factor)
    _same_up_to_ties(s32, i32, *r32, g, q, tol=1e-6)
