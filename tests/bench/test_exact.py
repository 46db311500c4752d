"""ExactIndex (bf16 scoring + float64 re-rank) against a plain numpy reference: full argsort of the similarity."""
import logging

import numpy as np
import pytest
import torch

from align.bench import exact
from align.bench.exact import ExactIndex, exact_topk_reference
from align.errors import AlignError, ConfigError, DataError


def ref_topk(g, q, k):
    """Plain reference: float64 similarity, stable argsort of -scores (ties -> lower gallery row)."""
    s = q.astype(np.float64) @ g.astype(np.float64).T
    return np.argsort(-s, axis=1, kind="stable")[:, :min(k, len(g))]


def search(g, q, k, **kw):
    idx = ExactIndex(g.shape[1], **kw)
    idx.add(g)
    return idx, *idx.search(q, k)


def _norm(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("scoring", ["bf16", "fp32", "fp64"])
@pytest.mark.parametrize("n,d,k,seed", [(3000, 64, 10, 0), (777, 33, 1, 1), (2000, 128, 50, 2)])
def test_random_inputs_equal_the_reference(scoring, n, d, k, seed):
    rng = np.random.default_rng(seed)
    # clustered unit vectors plus rows of other norms: the bound must hold for any norm
    centres = _norm(rng.standard_normal((20, d)))
    g = _norm(centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, d)) / np.sqrt(d))
    g[::7] *= rng.uniform(0.1, 5.0, (len(g[::7]), 1)).astype(np.float32)
    q = _norm(centres[rng.integers(0, 20, 300)] + 0.3 * rng.standard_normal((300, d)) / np.sqrt(d))
    q[::5] *= 3.0
    idx, scores, ids = search(g, q, k, scoring=scoring, batch_size=128, extra=4)
    ref = ref_topk(g, q, k)
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(q.astype(np.float64) @ g.T.astype(np.float64), ref, 1),
                               rtol=1e-6, atol=1e-6)
    assert idx.describe()["scoring"] == scoring and idx.stats["queries"] == 300


def test_adversarial_near_ties_below_the_bf16_error():
    """Groups of near-copies whose scores differ by ~1e-5..1e-7: bf16 scores cannot order them, the result must."""
    rng = np.random.default_rng(3)
    d = 96
    base = _norm(rng.standard_normal((40, d)))
    copies = []
    for b in base:                                  # 40 groups x 30 near-copies (differences far below 2^-8)
        eps = rng.choice([1e-7, 1e-6, 1e-5], size=(30, 1))
        copies.append(b[None] + eps * rng.standard_normal((30, d)))
    g = np.concatenate(copies + [rng.standard_normal((500, d)) * 0.01]).astype(np.float32)
    perm = rng.permutation(len(g))
    g = g[perm]
    q = (base[rng.integers(0, 40, 200)] + 1e-3 * rng.standard_normal((200, d))).astype(np.float32)
    s_hat = (torch.from_numpy(q).bfloat16().float() @ torch.from_numpy(g).bfloat16().float().T).numpy()
    top = np.sort(s_hat, axis=1)[:, ::-1]
    assert (top[:, 9] == top[:, 10]).mean() > 0.5      # the low-precision scores really are tied
    wide = {}
    for extra in (0, 3, 64):                           # extra=0/3: most rows take the "wide" path
        idx, _, ids = search(g, q, 10, extra=extra, batch_size=64)
        np.testing.assert_array_equal(ids, ref_topk(g, q, 10))
        wide[extra] = idx.stats["wide_rows"]
    assert wide[0] > 20 and wide[64] < wide[0]


def test_exact_ties_go_to_the_lower_gallery_row():
    """Dyadic inputs (multiples of 1/8): every score is exact in any precision, so ties are real ties."""
    rng = np.random.default_rng(4)
    g = rng.integers(-4, 5, (400, 16)).astype(np.float32) / 8
    g[200:300] = g[100:200]                                    # exact duplicates
    q = rng.integers(-4, 5, (150, 16)).astype(np.float32) / 8
    q[:50] = g[100:150]                                        # a query equal to a duplicated row
    for scoring in ("bf16", "fp32"):
        _, scores, ids = search(g, q, 12, scoring=scoring, extra=2, batch_size=40)
        ref = ref_topk(g, q, 12)
        np.testing.assert_array_equal(ids, ref)
        s = q.astype(np.float64) @ g.T.astype(np.float64)
        assert (np.diff(np.take_along_axis(s, ref, 1), axis=1) == 0).any()   # the test has ties inside the top k
    assert exact_topk_reference(g, q, 12).tolist() == ref.tolist()


def test_the_rounding_bound_holds_and_is_what_the_search_uses():
    rng = np.random.default_rng(5)
    g = (rng.standard_normal((2000, 200)) * rng.uniform(0.1, 3, (2000, 1))).astype(np.float32)
    q = (rng.standard_normal((64, 200)) * rng.uniform(0.1, 3, (64, 1))).astype(np.float32)
    idx = ExactIndex(200)
    idx.add(g)
    idx._prepare()
    qt = torch.from_numpy(q)
    qh = qt.bfloat16()
    s_hat = idx._scores(qh).double()                            # [64, 2000] what the search ranks by
    s = qt.double() @ torch.from_numpy(g).double().T
    a = idx._margin(qt, qh)[:, None]
    u = exact.UNIT_ROUNDOFF["bf16"]
    assert ((s_hat - s).abs() <= a + u * s.abs() * 1.01 + a * u).all()
    assert ((s_hat - s).abs() > 0.1 * a).any()                  # the bound is not vacuous: errors reach its scale


@pytest.mark.parametrize("broken,used", [({"bf16"}, "fp32"), ({"bf16", "fp32"}, "fp64")])
def test_broken_kernel_falls_back_to_the_next_precision(monkeypatch, caplog, broken, used):
    real = ExactIndex._bound_holds
    monkeypatch.setattr(ExactIndex, "_bound_holds", lambda self: self.scoring not in broken and real(self))
    rng = np.random.default_rng(6)
    g, q = _norm(rng.standard_normal((500, 32))), _norm(rng.standard_normal((40, 32)))
    with caplog.at_level(logging.WARNING, logger="align.bench"):
        idx, _, ids = search(g, q, 5)
    assert idx.scoring == used and caplog.text.count("breaks the rounding bound") == len(broken)
    np.testing.assert_array_equal(ids, ref_topk(g, q, 5))
    monkeypatch.setattr(ExactIndex, "_bound_holds", lambda self: False)
    with pytest.raises(AlignError, match="even float64 scores break the rounding bound"):
        search(g, q, 5)


def test_small_galleries_k_clipping_and_incremental_add():
    rng = np.random.default_rng(7)
    g, q = _norm(rng.standard_normal((5, 8))), _norm(rng.standard_normal((9, 8)))
    idx, scores, ids = search(g, q, 10)
    assert ids.shape == (9, 5) and (ids == ref_topk(g, q, 10)).all()
    more = _norm(rng.standard_normal((40, 8)))
    idx.add(more)                                              # add after a search: the next search sees all 45
    g2 = np.concatenate([g, more])
    assert idx.ntotal == 45
    np.testing.assert_array_equal(idx.search(q, 10)[1], ref_topk(g2, q, 10))
    empty = idx.search(np.zeros((0, 8), np.float32), 3)
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3)
    nothing = ExactIndex(8)                                    # no gallery: k clips to 0 (was an IndexError)
    s0, i0 = nothing.search(q, 3)
    assert s0.shape == i0.shape == (9, 0) and (s0.dtype, i0.dtype) == (np.float32, np.int64)
    with pytest.raises(DataError, match=r"queries must be \[n, 8\]"):
        nothing.search(np.zeros((2, 7), np.float32), 3)
    nothing.add(g)                                             # then a gallery: searched as any other
    np.testing.assert_array_equal(nothing.search(q, 3)[1], ref_topk(g, q, 3))


def test_bad_inputs_are_one_line_errors():
    g = np.ones((10, 4), np.float32)
    g[3, 1] = np.nan
    idx = ExactIndex(4)
    idx.add(g)
    with pytest.raises(DataError, match="gallery row 3 contains NaN or inf"):
        idx.search(np.ones((2, 4), np.float32), 1)
    idx = ExactIndex(4)
    idx.add(np.ones((10, 4), np.float32))
    q = np.ones((5, 4), np.float32)
    q[4, 0] = np.inf
    with pytest.raises(DataError, match="query row 4 contains NaN or inf"):
        idx.search(q, 1)
    with pytest.raises(DataError, match=r"queries must be \[n, 4\]"):
        idx.search(np.ones((2, 3), np.float32), 1)
    with pytest.raises(ConfigError, match="scoring must be one of"):
        ExactIndex(4, scoring="int4")


def test_score_block_is_capped_by_memory(monkeypatch):
    monkeypatch.setattr(exact, "SCORE_BLOCK_BYTES", 1000 * 2 * 7)   # 7 queries per [B, 1000] bf16 block
    rng = np.random.default_rng(8)
    g, q = _norm(rng.standard_normal((1000, 24))), _norm(rng.standard_normal((30, 24)))
    idx, _, ids = search(g, q, 5)
    assert idx._buf.shape == (7, 1000)
    np.testing.assert_array_equal(ids, ref_topk(g, q, 5))


def test_an_item_at_the_bound_is_found():
    """A true top-1 item whose bf16 score sits between the thresholds with one and with two error margins.

    q = (1 + eps, 1, 1) rounds to (1, 1, 1) in bf16: its rounding error r = (eps, 0, 0) is the whole margin
    a ~ 1.01 |r| max|g| (the gallery is exact in bf16). Item A = (1, -1, alpha) has exact score eps + alpha
    but bf16 score alpha (underestimated by eps); item B = (-1, 1, 0) has exact score -eps, bf16 score 0
    (overestimated by eps). A is the true best, yet its bf16 score is ~1.2 a below B's: only a threshold two
    margins below B's score (`_down(_lo(s_k) - 2a)`, the module docstring's thr) keeps A as a candidate.
    F = (-1, 1, gamma) fills the spare candidate slot so the narrow/wide decision is tested too."""
    eps = 2.0 ** -9 + 2.0 ** -11                                        # 1 + eps rounds to 1 in bf16
    q = np.array([[1 + eps, 1, 1]], np.float32)

    def bf(x):
        return float(torch.tensor(x).to(torch.bfloat16).float())

    alpha, gamma = bf(-0.0042), bf(-0.0039)
    b, a_item, f = [-1, 1, 0], [1, -1, alpha], [-1, 1, gamma]
    g = np.array([b, a_item, f], np.float32)
    assert np.array_equal(torch.from_numpy(g).bfloat16().float().numpy(), g)   # no gallery rounding
    s = q.astype(np.float64) @ g.astype(np.float64).T
    assert s[0, 1] > s[0, 0] > s[0, 2]                                   # A is the true best, then B
    for extra in (0, 1):                     # 0: every row is wide; 1: F takes the spare slot (A is 3rd by bf16)
        idx = ExactIndex(3, scoring="bf16", extra=extra)
        idx.add(g)
        _, ids = idx.search(q, 1)
        if idx.scoring != "bf16":
            pytest.skip("this machine's bf16 GEMM broke the bound; the index fell back to float32")
        a = float(idx._margin(torch.from_numpy(q), torch.from_numpy(q).bfloat16())[0])
        assert 0 - alpha > a and 0 - alpha < 2 * a                      # A's bf16 score: between the thresholds
        assert ids.tolist() == [[1]], f"extra={extra}: found {ids.tolist()}, the true best is item 1"


def test_a_device_this_machine_lacks_is_one_line():
    with pytest.raises(ConfigError, match="'gpu0' is not a torch device"):
        ExactIndex(4, device="gpu0")
    with pytest.raises(ConfigError, match="'meta': cpu or cuda"):
        ExactIndex(4, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device; use device cpu"):
            ExactIndex(4, device="cuda")
    assert ExactIndex(4, device="cpu").describe()["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh checks the same "
                                                           "on a GPU machine against the CPU index)")
@pytest.mark.parametrize("scoring", ["bf16", "fp32"])
def test_cuda_search_equals_the_reference_and_restores_the_matmul_flags(scoring):
    m = torch.backends.cuda.matmul
    saved = (m.allow_tf32, m.allow_bf16_reduced_precision_reduction)
    m.allow_tf32, m.allow_bf16_reduced_precision_reduction = True, True       # what the check turns off
    try:
        rng = np.random.default_rng(3)
        g, q = _norm(rng.standard_normal((5000, 64))), _norm(rng.standard_normal((400, 64)))
        idx, scores, ids = search(g, q, 10, scoring=scoring, batch_size=128, device="cuda")
        np.testing.assert_array_equal(ids, ref_topk(g, q, 10))
        assert idx.describe()["scoring"] == scoring and idx.describe()["device"] == "cuda"
        assert (m.allow_tf32, m.allow_bf16_reduced_precision_reduction) == (True, True)
    finally:
        m.allow_tf32, m.allow_bf16_reduced_precision_reduction = saved


def test_a_gallery_too_big_for_the_gpu_is_refused_in_one_line_before_it_moves(monkeypatch):
    """check_fits against a stubbed free-memory figure (no GPU here): the bytes it counts, the line it says."""
    n, d = 1_000_000, 512
    need = exact.gpu_bytes(n, d, "bf16")
    assert need == n * d * (4 + 2) + exact.SCORE_BLOCK_BYTES + exact.RERANK_ELEMS * 12 + 128 * 4096 * 8
    assert exact.gpu_bytes(n, d, "fp64") - exact.gpu_bytes(n, d, "bf16") == n * d * 6
    seen = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (seen.append(dev) or (need - 1, 80 << 30)))
    dev = torch.device("cuda:0")
    with pytest.raises(ConfigError) as e:
        exact.check_fits(dev, n, d, "bf16")
    line = str(e.value)
    assert "\n" not in line and "1,000,000 x 512" in line and "cuda:0" in line and "--device cpu" in line
    assert f"{need / 2 ** 30:.1f} GiB" in line and f"{(need - 1) / 2 ** 30:.1f} GiB free" in line
    assert seen == [dev]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (need, 80 << 30))
    exact.check_fits(dev, n, d, "bf16")                                 # exactly enough: no error
    exact.check_fits(torch.device("cpu"), 10 ** 12, d, "bf16")          # the CPU is never asked


@pytest.mark.parametrize("where", ["build", "search"])
def test_a_cuda_out_of_memory_error_becomes_one_line_and_the_index_stays_usable(monkeypatch, where):
    rng = np.random.default_rng(5)
    g, q = _norm(rng.standard_normal((300, 16))), _norm(rng.standard_normal((20, 16)))
    idx = ExactIndex(16)
    idx.add(g)

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if where == "build":
        monkeypatch.setattr(ExactIndex, "_bound_holds", oom)
    else:
        idx.search(q, 3)
        monkeypatch.setattr(ExactIndex, "_search_block", oom)
    with pytest.raises(ConfigError, match=r"^exact search on cpu: the gallery of 300 x 16 needs ~.* GiB .*"
                                          r"not enough free memory; search on the CPU") as e:
        idx.search(q, 3)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert idx.ntotal == 300                                            # the gallery was not lost with the error
    np.testing.assert_array_equal(idx.search(q, 3)[1], ref_topk(g, q, 3))
