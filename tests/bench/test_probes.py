"""Tests for align/bench/probes.py: linear probe, CCA baseline/retrieval, fusion probe.

Every metric is checked against a plain reference (manual sklearn fit, CLIP_benchmark's accuracy,
sklearn's CCA, a brute-force argsort) on small synthetic data built here.
"""
import numpy as np
import pytest
import torch

from align.bench import probes
from align.errors import AlignError, DataError


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clusters(n_per, seed, k=6, d=32, sigma=0.1, spread=1.0):
    """k Gaussian clusters around fixed centroids (same for every seed), L2-normalised. -> x [k*n_per, d], y."""
    cen = np.random.default_rng(1234).standard_normal((k, d))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    return _unit(spread * cen[y] + sigma * rng.standard_normal((len(y), d))), y


# ------------------------------------------------------------------ metrics / split
def _clip_benchmark_accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's zeroshot_classification.accuracy, copied because clip-benchmark 1.6.2's version calls
    float() on a 1-element array, which numpy 2.4 rejects."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum()) / n for k in topk]


def test_classification_metrics_match_clip_benchmark():
    from sklearn.metrics import balanced_accuracy_score

    accuracy = _clip_benchmark_accuracy

    rng = np.random.default_rng(0)
    scores, y = rng.standard_normal((200, 7)), rng.integers(0, 7, 200)
    got = probes.classification_metrics(scores, y, 7)
    acc1, acc5 = accuracy(torch.from_numpy(scores), torch.from_numpy(y), topk=(1, 5))
    assert got["acc1"] == pytest.approx(acc1) and got["acc5"] == pytest.approx(acc5)
    assert got["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(y, scores.argmax(1)))
    assert 0 < got["acc1"] < got["acc5"] < 1
    assert np.isnan(probes.classification_metrics(scores[:, :3], y % 3, 3)["acc5"])


def test_stratified_split_keeps_class_proportions():
    y = np.array([0] * 50 + [1] * 10 + [2] * 1 + [3] * 2)
    fit, val = probes.stratified_split(y, 0.2, seed=0)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(y)
    assert [int((y[val] == c).sum()) for c in range(4)] == [10, 2, 0, 1]  # singleton class stays in fit
    assert set(y[fit]) == {0, 1, 2, 3}
    fit2, val2 = probes.stratified_split(y, 0.2, seed=0)
    assert np.array_equal(val, val2)
    assert not np.array_equal(val, probes.stratified_split(y, 0.2, seed=1)[1])


# ------------------------------------------------------------------ linear probe
def test_linear_probe_separable_clusters_reach_one():
    xtr, ytr = _clusters(30, 0)
    xte, yte = _clusters(30, 1)
    r = probes.linear_probe(xtr, ytr + 10, xte, yte + 10, progress=False)  # non-0-based labels are fine
    assert r["acc1"] == 1.0 and r["acc5"] == 1.0 and r["mean_per_class_recall"] == 1.0
    assert r["best_C"] in probes.DEFAULT_CS and r["val_acc1"][str(r["best_C"])] == 1.0
    assert r["n_classes"] == 6 and r["converged"]


def test_linear_probe_breaks_val_accuracy_ties_by_val_loss():
    """On separable clusters every C reaches val acc1 = 1.0: the tie goes to the lowest val cross-entropy
    (a weakly regularised fit, confident and right), not to the first C of the sweep (the strongest
    regularisation, the least confident)."""
    xtr, ytr = _clusters(30, 0)
    xte, yte = _clusters(30, 1)
    r = probes.linear_probe(xtr, ytr, xte, yte, progress=False)
    acc = {float(c): a for c, a in r["val_acc1"].items()}
    loss = {float(c): v for c, v in r["val_loss"].items()}
    tied = [c for c in acc if acc[c] == max(acc.values())]
    assert len(tied) > 1 and min(tied) == min(probes.DEFAULT_CS)            # a tie that includes the first C
    want = min(tied, key=lambda c: loss[c])
    assert want != min(tied) and len({loss[c] for c in tied}) == len(tied)  # the loss decides, no second tie
    assert r["best_C"] == want


def test_linear_probe_matches_manual_sklearn_reference():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    # noisy overlapping clusters: val accuracy differs across C, so the selection actually matters
    xtr, ytr = _clusters(40, 2, sigma=1.0, spread=0.25, d=64)
    xte, yte = _clusters(40, 3, sigma=1.0, spread=0.25, d=64)
    Cs = (1e-3, 1e-1, 1.0, 10.0, 1e3)
    r = probes.linear_probe(xtr, ytr, xte, yte, Cs=Cs, val_frac=0.25, seed=5, progress=False)

    fit, val = probes.stratified_split(ytr, 0.25, seed=5)
    accs = {}
    for C in Cs:
        m = LogisticRegression(C=C, max_iter=1000).fit(xtr[fit], ytr[fit])
        accs[C] = (m.predict(xtr[val]) == ytr[val]).mean()
    assert r["val_acc1"] == {str(c): pytest.approx(a) for c, a in accs.items()}
    assert accs[r["best_C"]] == max(accs.values())
    assert len(set(accs.values())) > 1 and r["best_C"] not in (1e-3, 1e3)  # interior C wins on noisy data

    ref = LogisticRegression(C=r["best_C"], max_iter=1000).fit(xtr, ytr)
    pred, proba = ref.predict(xte), ref.predict_proba(xte)
    top5 = np.argsort(-proba, axis=1)[:, :5]
    assert r["acc1"] == pytest.approx((pred == yte).mean())
    assert r["acc5"] == pytest.approx((top5 == yte[:, None]).any(1).mean())
    assert r["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(yte, pred))
    assert 0.3 < r["acc1"] < 0.95


def test_linear_probe_rejects_bad_input():
    x, y = _clusters(5, 0, k=3, d=4)
    with pytest.raises(DataError, match="train_y: has 14 labels"):
        probes.linear_probe(x, y[:-1], x, y, progress=False)
    with pytest.raises(DataError, match="never seen in train_y: \\[7\\]"):
        probes.linear_probe(x, y, x, np.where(y == 2, 7, y), progress=False)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="test_x: row 3 has NaN"):
        probes.linear_probe(x, y, bad, y, progress=False)
    with pytest.raises(DataError, match="single class"):
        probes.linear_probe(x, np.zeros_like(y), x, np.zeros_like(y), progress=False)


# ------------------------------------------------------------------ CCA
def _latent_views(n, seed, rhos=(0.9, 0.6, 0.3), da=6, db=5):
    """Two views sharing latent z with known canonical correlations `rhos`, then mixed by fixed random
    invertible maps and shifted. -> x_a [n, da], x_b [n, db]."""
    rng, mix = np.random.default_rng(seed), np.random.default_rng(99)
    rho = np.asarray(rhos)
    z = rng.standard_normal((n, len(rho)))
    a = np.concatenate([z, rng.standard_normal((n, da - len(rho)))], 1)
    b = np.concatenate([rho * z + np.sqrt(1 - rho ** 2) * rng.standard_normal(z.shape),
                        rng.standard_normal((n, db - len(rho)))], 1)
    return a @ mix.standard_normal((da, da)) + 1.0, b @ mix.standard_normal((db, db)) - 2.0


def test_cca_recovers_analytic_correlations_and_decorrelates():
    xa, xb = _latent_views(20000, 0)
    xa_te, xb_te = _latent_views(5000, 1)
    p = probes.cca_baseline(xa, xb, xa_te, xb_te, n_components=3, reg=0.0)
    np.testing.assert_allclose(p.model.correlations, [0.9, 0.6, 0.3], atol=0.02)
    # train projections: identity auto-correlation, diagonal cross-correlation = canonical correlations
    c = np.corrcoef(np.concatenate([p.a_train, p.b_train], 1).T)  # [6, 6]
    np.testing.assert_allclose(c[:3, :3], np.eye(3), atol=1e-8)
    np.testing.assert_allclose(c[3:, 3:], np.eye(3), atol=1e-8)
    np.testing.assert_allclose(c[:3, 3:], np.diag(p.model.correlations), atol=1e-8)
    # held-out test projections generalise (sampling error only)
    ct = np.corrcoef(np.concatenate([p.a_test, p.b_test], 1).T)
    np.testing.assert_allclose(ct[:3, 3:], np.diag([0.9, 0.6, 0.3]), atol=0.04)
    assert p.a_test.shape == (5000, 3) and p.b_test.shape == (5000, 3)


def test_cca_first_component_matches_sklearn():
    from sklearn.cross_decomposition import CCA

    xa, xb = _latent_views(1500, 2)
    m = probes.fit_cca(xa, xb, n_components=2, reg=0.0)
    sk = CCA(n_components=1, max_iter=2000, tol=1e-10).fit(xa, xb)
    sa, sb = sk.transform(xa, xb)
    assert np.corrcoef(sa[:, 0], sb[:, 0])[0, 1] == pytest.approx(m.correlations[0], abs=1e-6)
    # same direction up to sign
    assert abs(np.corrcoef(sa[:, 0], m.transform_a(xa)[:, 0])[0, 1]) == pytest.approx(1.0, abs=1e-6)
    # ridge shrinks correlations monotonically and stays valid
    shrunk = probes.fit_cca(xa, xb, n_components=2, reg=0.1).correlations
    assert np.all(shrunk < m.correlations) and np.all(shrunk > 0)


def test_retrieval_ranks_match_stable_argsort_with_ties():
    rng = np.random.default_rng(0)
    # rows with four +-0.5 entries: unit norm and every dot product exact, so ties are exact
    def rows(n):
        x = np.zeros((n, 8))
        for i in range(n):
            x[i, rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return x

    q, g = rows(60), rows(60)
    sim = q @ g.T
    ref = np.array([int(np.flatnonzero(np.argsort(-sim[i], kind="stable") == i)[0]) for i in range(60)])
    assert len(np.unique(sim)) < 10  # there really are ties
    np.testing.assert_array_equal(probes.retrieval_ranks(q, g, chunk=7), ref)
    np.testing.assert_array_equal(probes.retrieval_ranks(q * 3.0, g, chunk=100), ref)  # cosine: scale-free


def test_cca_retrieval_recalls():
    xa, xb = _latent_views(3000, 3, rhos=(0.99, 0.98, 0.97, 0.95), da=8, db=6)
    xa_te, xb_te = _latent_views(300, 4, rhos=(0.99, 0.98, 0.97, 0.95), da=8, db=6)
    r = probes.cca_retrieval(xa, xb, xa_te, xb_te, n_components=4, name_a="image", name_b="audio")
    for d in ("audio_retrieval", "image_retrieval"):  # image->audio, audio->image
        assert 0 < r[f"{d}_recall@1"] <= r[f"{d}_recall@5"] <= r[f"{d}_recall@10"] <= 1
        assert r[f"{d}_recall@10"] > 0.5  # far above chance (10/300)
    # reference: brute force argsort by cosine in the CCA space
    p = probes.cca_baseline(xa, xb, xa_te, xb_te, 4)
    sim = _unit(p.a_test).astype(np.float64) @ _unit(p.b_test).T.astype(np.float64)
    ranks = np.array([int(np.flatnonzero(np.argsort(-s) == i)[0]) for i, s in enumerate(sim)])
    ranks_t = np.array([int(np.flatnonzero(np.argsort(-s) == i)[0]) for i, s in enumerate(sim.T)])
    assert r["audio_retrieval_recall@5"] == pytest.approx((ranks < 5).mean(), abs=1 / 300)
    assert r["image_retrieval_recall@1"] == pytest.approx((ranks_t < 1).mean(), abs=1 / 300)
    # unrelated views: chance level
    shuf = np.random.default_rng(0).permutation(300)
    r0 = probes.cca_retrieval(xa, xb, xa_te, xb_te[shuf], n_components=4)
    assert r0["b_retrieval_recall@10"] < 0.15


def test_cca_rejects_bad_input():
    xa, xb = _latent_views(50, 0)
    with pytest.raises(DataError, match="rows must be paired"):
        probes.fit_cca(xa, xb[:-1], 2)
    with pytest.raises(AlignError, match="n_components=9 must be in \\[1, 5\\]"):
        probes.fit_cca(xa, xb, 9)
    with pytest.raises(DataError, match="x_b_test has dim 4"):
        probes.cca_baseline(xa, xb, xa, xb[:, :4], 2)


# ------------------------------------------------------------------ fusion
def _two_modalities(n_per, seed, d=24, sigma=0.35):
    """8 classes; 'image' merges classes (4,5) and (6,7), 'text' merges (0,1) and (2,3): each modality alone is
    ambiguous for half the classes (~75% ceiling), both together separate all 8."""
    cen = np.random.default_rng(7).standard_normal((2, 6, d))
    proto_img, proto_txt = np.array([0, 1, 2, 3, 4, 4, 5, 5]), np.array([0, 0, 1, 1, 2, 3, 4, 5])
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(8), n_per)
    img = _unit(cen[0][proto_img[y]] + sigma * rng.standard_normal((len(y), d)))
    txt = _unit(cen[1][proto_txt[y]] + sigma * rng.standard_normal((len(y), d)))
    return {"image": img, "text": txt}, y


def test_fusion_beats_each_modality_alone():
    tr, ytr = _two_modalities(50, 0)
    te, yte = _two_modalities(25, 1)
    rows = probes.fusion_report(tr, ytr, te, yte, progress=False)
    by = {r["row"]: r for r in rows}
    assert list(by) == ["image", "text", "image+text (concat)", "image+text (weighted_sum)",
                        "image+text (attention)"]
    single = max(by["image"]["acc1"], by["text"]["acc1"])
    assert 0.6 < single < 0.85  # the ambiguity is real
    for meth in probes.FUSION_METHODS:
        assert by[f"image+text ({meth})"]["acc1"] > single + 0.1
        assert by[f"image+text ({meth})"]["acc1"] >= 0.95
    assert by["image"]["method"] == "single" and by["image"]["modalities"] == ["image"]
    w = by["image+text (weighted_sum)"]["modality_weights"]
    assert set(w) == {"image", "text"} and sum(w.values()) == pytest.approx(1.0)
    table = probes.format_fusion_table(rows)
    assert "image+text (attention)" in table and len(table.splitlines()) == 6


def test_fusion_probe_is_deterministic_and_leaves_global_rng_alone():
    tr, ytr = _two_modalities(20, 0)
    te, yte = _two_modalities(10, 1)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a = probes.fusion_probe(tr, ytr, te, yte, method="attention", epochs=60, seed=3, progress=False)
    b = probes.fusion_probe(tr, ytr, te, yte, method="attention", epochs=60, seed=3, progress=False)
    assert a == b
    assert torch.equal(state, torch.get_rng_state()) and torch.get_num_threads() == threads
    c = probes.fusion_probe(tr, ytr, te, yte, method="attention", epochs=60, seed=4, progress=False)
    assert c["modality_weights"] != a["modality_weights"]


def test_fusion_probe_rejects_bad_input():
    tr, ytr = _two_modalities(5, 0, d=8)
    with pytest.raises(DataError, match="test has \\['image'\\]"):
        probes.fusion_probe(tr, ytr, {"image": tr["image"]}, ytr, progress=False)
    uneven = {"image": tr["image"], "text": tr["text"][:, :4]}
    with pytest.raises(DataError, match="needs one shared embedding dim"):
        probes.fusion_probe(uneven, ytr, uneven, ytr, method="weighted_sum", progress=False)
    with pytest.raises(AlignError, match="unknown method 'sum'"):
        probes.fusion_probe(tr, ytr, tr, ytr, method="sum", progress=False)
    with pytest.raises(DataError, match="train\\['image'\\]/test\\['image'\\] have 39/40 rows but train_y/test_y "
                                        "have 40/40"):
        probes.fusion_probe({"image": tr["image"][:-1], "text": tr["text"]}, ytr, tr, ytr, progress=False)


# ------------------------------------------------------------------ plain references on small random data
def _ref_cca_retrieval(xa, xb, xa_te, xb_te, k, reg, ks=(1, 5, 10)):
    """CCA from the eigenproblem Caa^-1 Cab Cbb^-1 Cba w_a = rho^2 w_a (same ridge), unit-variance
    canonical variates, w_b = Cbb^-1 Cba w_a / rho; then cosine ranks by a stable argsort."""
    n = len(xa)
    ma, mb = xa.mean(0), xb.mean(0)
    a, b = xa - ma, xb - mb
    caa, cbb, cab = a.T @ a / (n - 1), b.T @ b / (n - 1), a.T @ b / (n - 1)
    caa = caa + reg * np.trace(caa) / len(caa) * np.eye(len(caa))
    cbb = cbb + reg * np.trace(cbb) / len(cbb) * np.eye(len(cbb))
    evals, evecs = np.linalg.eig(np.linalg.solve(caa, cab) @ np.linalg.solve(cbb, cab.T))
    order = np.argsort(-evals.real)[:k]
    rho = np.sqrt(evals.real[order])
    wa = evecs.real[:, order]
    wa = wa / np.sqrt(np.einsum("ik,ij,jk->k", wa, caa, wa))
    wb = np.linalg.solve(cbb, cab.T) @ wa / rho
    za, zb = (xa_te - ma) @ wa, (xb_te - mb) @ wb
    out = {"mean_canonical_corr": rho.mean()}
    for name, q, g in (("b", za, zb), ("a", zb, za)):
        sim = _unit(q).astype(np.float64) @ _unit(g).astype(np.float64).T
        ranks = np.array([int(np.flatnonzero(np.argsort(-s, kind="stable") == i)[0]) for i, s in enumerate(sim)])
        for kk in ks:
            out[f"{name}_retrieval_recall@{kk}"] = (ranks < kk).mean()
    return out


@pytest.mark.parametrize("seed,k,reg", [(0, 3, 1e-3), (1, 5, 0.05)])
def test_cca_retrieval_matches_a_plain_eigenproblem_reference(seed, k, reg):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((140, 4))                                  # shared latent, 100 train + 40 test
    xa = z @ rng.standard_normal((4, 7)) + 0.7 * rng.standard_normal((140, 7))
    xb = z @ rng.standard_normal((4, 6)) + 0.7 * rng.standard_normal((140, 6))
    got = probes.cca_retrieval(xa[:100], xb[:100], xa[100:], xb[100:], n_components=k, reg=reg)
    ref = _ref_cca_retrieval(xa[:100], xb[:100], xa[100:], xb[100:], k, reg)
    assert got["mean_canonical_corr"] == pytest.approx(ref.pop("mean_canonical_corr"), abs=1e-9)
    assert {key: got[key] for key in ref} == ref
    assert ref["b_retrieval_recall@1"] > 1 / 40                         # not a degenerate comparison


def _ref_fusion(train, ytr, test, yte, method, epochs, lr, wd, patience, seed, val_frac=0.2):
    """The fusion probe written out plainly: z-score with fit-split stats, a linear head over the concat
    (or a softmax-weighted sum) of the modalities, full-batch Adam, keep the lowest-val-loss weights."""
    import torch.nn.functional as F
    names = list(train)
    fit, val = probes.stratified_split(ytr, val_frac, seed)
    xs_tr, xs_te = [], []
    for m in names:
        xtr, xte = train[m].astype(np.float32), test[m].astype(np.float32)
        mu, sd = xtr[fit].mean(0), xtr[fit].std(0) + 1e-6
        xs_tr.append(torch.from_numpy((xtr - mu) / sd))
        xs_te.append(torch.from_numpy((xte - mu) / sd))
    k = len(np.unique(ytr))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if method == "concat":
            head = torch.nn.Linear(sum(x.shape[1] for x in xs_tr), k)
            params = {"head": head}
        else:
            logit_w = torch.nn.Parameter(torch.zeros(len(names)))
            head = torch.nn.Linear(xs_tr[0].shape[1], k)
            params = {"logit_w": logit_w, "head": head}

    def forward(xs):
        if method == "concat":
            return head(torch.cat(xs, 1))
        w = torch.softmax(logit_w, 0)
        return head(sum(w[i] * x for i, x in enumerate(xs)))

    plist = list(head.parameters()) + ([logit_w] if method != "concat" else [])
    opt = torch.optim.Adam(plist, lr=lr, weight_decay=wd)
    yfit, yval = torch.from_numpy(ytr[fit]), torch.from_numpy(ytr[val])
    best_loss, best_step, best = float("inf"), -1, None
    for step in range(epochs):
        opt.zero_grad()
        F.cross_entropy(forward([x[fit] for x in xs_tr]), yfit).backward()
        opt.step()
        with torch.no_grad():
            vloss = float(F.cross_entropy(forward([x[val] for x in xs_tr]), yval))
        if vloss < best_loss - 1e-6:
            best_loss, best_step, best = vloss, step, [p.detach().clone() for p in plist]
        elif step - best_step >= patience:
            break
    with torch.no_grad():
        for p, v in zip(plist, best):
            p.copy_(v)
        pred = forward(xs_te).argmax(1).numpy()
    return {"acc1": float((pred == yte).mean()), "best_step": best_step, "val_loss": best_loss}


@pytest.mark.parametrize("method", ["concat", "weighted_sum"])
def test_fusion_probe_matches_a_plain_reference(method):
    rng = np.random.default_rng(5)
    ytr, yte = rng.integers(0, 3, 60), rng.integers(0, 3, 30)
    cen = rng.standard_normal((2, 3, 6))
    train = {m: cen[i][ytr] + 1.5 * rng.standard_normal((60, 6)) for i, m in enumerate(("image", "audio"))}
    test = {m: cen[i][yte] + 1.5 * rng.standard_normal((30, 6)) for i, m in enumerate(("image", "audio"))}
    kw = dict(epochs=80, lr=0.05, weight_decay=1e-3, patience=10, seed=2)
    got = probes.fusion_probe(train, ytr, test, yte, method=method, progress=False, **kw)
    ref = _ref_fusion(train, ytr, test, yte, method, kw["epochs"], kw["lr"], kw["weight_decay"], kw["patience"],
                      kw["seed"])
    assert got["best_step"] == ref["best_step"]
    assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)
    assert got["acc1"] == ref["acc1"]
