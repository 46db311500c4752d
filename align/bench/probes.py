"""Embedding probes for benchmarks: linear probe, CCA baseline, fusion probe.

All functions take precomputed embeddings (numpy float arrays [N, D],
usually L2-normalised) and integer labels [N]; none of them touch a model.

* `linear_probe`: scikit-learn logistic regression (lbfgs, multinomial) on
  frozen embeddings, C picked on a stratified validation split of train,
  then refit on all of train. Metrics follow CLIP_benchmark (acc1, acc5,
  mean_per_class_recall = balanced accuracy).
* `fit_cca` / `cca_baseline` / `cca_retrieval`: classic closed-form CCA
  (regularised whitening + SVD of the whitened cross-covariance) as an
  unsupervised reference row for retrieval tables.
* `fusion_probe` / `fusion_report`: a small torch classifier over several
  modalities' embeddings combined (concat, weighted_sum, attention), and a
  report that compares each modality alone with the fusion.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from align.progress import progress as tqdm   # plain lines off a terminal

from align.errors import AlignError, DataError

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 3, 7))
FUSION_METHODS = ("concat", "weighted_sum", "attention")


# ---------------------------------------------------------------- helpers
@contextmanager
def _blas_threads(n: Optional[int]):
    """Cap BLAS/OpenMP threads (numpy, scikit-learn) for the block; None leaves them as they are. The probes'
    ops are small and iterative: on a busy 2-core machine (load ~8) a 7-C lbfgs sweep took 51 s with 2
    spin-waiting BLAS threads and 2 s with 1."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n)):
        yield


def _as_matrix(x, name: str) -> np.ndarray:
    """Check `x` is a non-empty, finite 2-D float array [N, D]; returns it as a numpy array (no copy)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{name}: expected a non-empty 2-D array [N, D], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{name}: expected float embeddings, got dtype {x.dtype}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"{name}: row {int(np.flatnonzero(bad)[0])} has NaN/inf ({int(bad.sum())} bad rows)")
    return x


def _as_labels(y, n: Optional[int], name: str) -> np.ndarray:
    """Check `y` is a 1-D integer array [N] (N == n unless n is None)."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: expected a 1-D integer label array, got shape {y.shape} dtype {y.dtype}")
    if n is not None and len(y) != n:
        raise DataError(f"{name}: has {len(y)} labels but the embeddings have {n} rows")
    return y


def _encode_labels(train_y: np.ndarray, test_y: np.ndarray, where: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map arbitrary integer labels to 0..K-1 using the train classes; test classes must be seen in train."""
    classes = np.unique(train_y)
    if len(classes) < 2:
        raise DataError(f"{where}: train_y has a single class ({classes.tolist()}); need at least 2")
    unseen = np.setdiff1d(np.unique(test_y), classes)
    if len(unseen):
        raise DataError(f"{where}: test_y has classes never seen in train_y: {unseen[:10].tolist()}")
    return classes, np.searchsorted(classes, train_y), np.searchsorted(classes, test_y)


def stratified_split(y: np.ndarray, val_frac: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Split indices per class: round(val_frac * n_c) of each class go to val (at least 1 when n_c >= 2,
    none when n_c == 1 so every class stays trainable). Returns (fit_idx, val_idx), both sorted."""
    if not 0.0 < val_frac < 1.0:
        raise AlignError(f"val_frac must be in (0, 1), got {val_frac}")
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, int(round(val_frac * len(idx)))))
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def classification_metrics(scores: np.ndarray, y: np.ndarray, n_classes: int) -> Dict[str, float]:
    """CLIP_benchmark metrics from scores [N, K] (column k = class k) and labels y [N] in 0..K-1.
    acc5 is NaN when there are fewer than 5 classes, as in CLIP_benchmark."""
    from sklearn.metrics import balanced_accuracy_score

    pred = scores.argmax(axis=1)
    acc5 = float("nan")
    if n_classes >= 5:
        top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]  # [N, 5]
        acc5 = float((top5 == y[:, None]).any(axis=1).mean())
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected on small test sets, not a user problem
        warnings.simplefilter("ignore", UserWarning)
        mpcr = float(balanced_accuracy_score(y, pred))
    return {"acc1": float((pred == y).mean()), "acc5": acc5, "mean_per_class_recall": mpcr}


# ------------------------------------------------------------ linear probe
def _fit_logreg(x, y, C: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter)  # multinomial for K > 2 (sklearn >= 1.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return clf, converged


def linear_probe(train_x, train_y, test_x, test_y, *, val_frac: float = 0.2, Cs: Sequence[float] = DEFAULT_CS,
                 seed: int = 0, max_iter: int = 1000, num_threads: Optional[int] = 1, progress: bool = True) -> dict:
    """Logistic-regression probe on frozen embeddings; C chosen on a stratified val split, refit on all train.
    `num_threads` caps BLAS threads during the fits (None: leave as is)."""
    with _blas_threads(num_threads):
        return _linear_probe(train_x, train_y, test_x, test_y, val_frac=val_frac, Cs=Cs, seed=seed,
                             max_iter=max_iter, progress=progress)


def _linear_probe(train_x, train_y, test_x, test_y, *, val_frac, Cs, seed, max_iter, progress) -> dict:
    train_x = _as_matrix(train_x, "linear_probe: train_x")
    test_x = _as_matrix(test_x, "linear_probe: test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"linear_probe: train_x has dim {train_x.shape[1]} but test_x has dim {test_x.shape[1]}")
    train_y = _as_labels(train_y, len(train_x), "linear_probe: train_y")
    test_y = _as_labels(test_y, len(test_x), "linear_probe: test_y")
    Cs = [float(c) for c in Cs]
    if not Cs or any(not (c > 0 and math.isfinite(c)) for c in Cs):
        raise AlignError(f"linear_probe: Cs must be a non-empty list of positive numbers, got {Cs}")
    classes, ytr, yte = _encode_labels(train_y, test_y, "linear_probe")
    k = len(classes)

    fit_idx, val_idx = stratified_split(ytr, val_frac, seed)
    val_acc: Dict[float, float] = {}
    val_loss: Dict[float, float] = {}
    if len(Cs) == 1 or len(val_idx) == 0:
        best_C = Cs[0]
    else:
        for C in tqdm(Cs, desc="linear probe: C sweep", unit="C value", disable=not progress, leave=False):
            clf, _ = _fit_logreg(train_x[fit_idx], ytr[fit_idx], C, max_iter)
            p = clf.predict_proba(train_x[val_idx])  # [N_val, K]: every class keeps >= 1 sample in the fit split
            val_acc[C] = float((p.argmax(1) == ytr[val_idx]).mean())
            val_loss[C] = float(-np.log(np.maximum(p[np.arange(len(p)), ytr[val_idx]], 1e-15)).mean())
        # highest val acc1; ties (common on easy data) go to the lowest val cross-entropy, then the smaller C
        best_C = min(Cs, key=lambda c: (-val_acc[c], val_loss[c], c))

    clf, converged = _fit_logreg(train_x, ytr, best_C, max_iter)
    # predict_proba columns follow clf.classes_ (0..K-1 here); softmax keeps the logit ranking for top-k
    proba = np.zeros((len(test_x), k))
    proba[:, clf.classes_] = clf.predict_proba(test_x)
    out = classification_metrics(proba, yte, k)
    out.update(best_C=best_C, val_acc1={str(c): a for c, a in val_acc.items()},
               val_loss={str(c): v for c, v in val_loss.items()}, converged=converged,
               n_train=int(len(train_x)), n_test=int(len(test_x)), n_classes=int(k))
    return out


# --------------------------------------------------------------------- CCA
def _inv_sqrt_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root of a positive-definite matrix via eigh."""
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, np.finfo(c.dtype).tiny))) @ v.T


@dataclass
class CCAModel:
    """Fitted CCA: z_a = (x_a - mean_a) @ w_a, z_b = (x_b - mean_b) @ w_b, each [N, k]."""
    mean_a: np.ndarray         # [Da]
    mean_b: np.ndarray         # [Db]
    w_a: np.ndarray            # [Da, k]
    w_b: np.ndarray            # [Db, k]
    correlations: np.ndarray   # [k] canonical correlations on train, descending

    def transform_a(self, x) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean_a) @ self.w_a

    def transform_b(self, x) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean_b) @ self.w_b


def fit_cca(x_a, x_b, n_components: int, reg: float = 1e-3) -> CCAModel:
    """Closed-form CCA on paired rows of x_a [N, Da] and x_b [N, Db].

    Each view's covariance gets ridge `reg * trace(C)/D * I` (relative to its mean variance, so the same reg
    works for L2-normalised and raw features); the whitened cross-covariance Caa^-1/2 Cab Cbb^-1/2 is
    decomposed by SVD, whose singular values are the canonical correlations."""
    x_a = _as_matrix(x_a, "cca: x_a_train").astype(np.float64)
    x_b = _as_matrix(x_b, "cca: x_b_train").astype(np.float64)
    n = len(x_a)
    if len(x_b) != n:
        raise DataError(f"cca: x_a_train has {n} rows but x_b_train has {len(x_b)}; rows must be paired")
    k_max = min(x_a.shape[1], x_b.shape[1], n - 1)
    if not 1 <= int(n_components) <= k_max:
        raise AlignError(f"cca: n_components={n_components} must be in [1, {k_max}] "
                         f"(min of dims {x_a.shape[1]}, {x_b.shape[1]} and N-1={n - 1})")
    if reg < 0:
        raise AlignError(f"cca: reg must be >= 0, got {reg}")
    k = int(n_components)
    mean_a, mean_b = x_a.mean(0), x_b.mean(0)
    a, b = x_a - mean_a, x_b - mean_b

    def cov(u, v):
        return u.T @ v / (n - 1)

    caa, cbb, cab = cov(a, a), cov(b, b), cov(a, b)
    caa += reg * np.trace(caa) / len(caa) * np.eye(len(caa))
    cbb += reg * np.trace(cbb) / len(cbb) * np.eye(len(cbb))
    ia, ib = _inv_sqrt_psd(caa), _inv_sqrt_psd(cbb)          # [Da, Da], [Db, Db]
    u, s, vt = np.linalg.svd(ia @ cab @ ib, full_matrices=False)
    u, v = u[:, :k], vt[:k].T
    # SVD signs are arbitrary: make the largest-|.| entry of each u column positive (v follows to keep corr > 0)
    sign = np.sign(u[np.abs(u).argmax(0), np.arange(k)])
    sign[sign == 0] = 1.0
    return CCAModel(mean_a=mean_a, mean_b=mean_b, w_a=ia @ (u * sign), w_b=ib @ (v * sign),
                    correlations=np.clip(s[:k], 0.0, 1.0))


@dataclass
class CCAProjections:
    """Both views of train and test projected into the shared k-dim CCA space, plus the fitted model."""
    a_train: np.ndarray   # [N_train, k]
    b_train: np.ndarray   # [N_train, k]
    a_test: np.ndarray    # [N_test, k]
    b_test: np.ndarray    # [N_test, k]
    model: CCAModel


def cca_baseline(x_a_train, x_b_train, x_a_test, x_b_test, n_components: int, reg: float = 1e-3) -> CCAProjections:
    """Fit CCA on paired train embeddings of two modalities and project train and test into the CCA space."""
    model = fit_cca(x_a_train, x_b_train, n_components, reg)
    x_a_test = _as_matrix(x_a_test, "cca: x_a_test")
    x_b_test = _as_matrix(x_b_test, "cca: x_b_test")
    for name, x, d in (("x_a_test", x_a_test, len(model.mean_a)), ("x_b_test", x_b_test, len(model.mean_b))):
        if x.shape[1] != d:
            raise DataError(f"cca: {name} has dim {x.shape[1]} but the train view has dim {d}")
    return CCAProjections(a_train=model.transform_a(x_a_train), b_train=model.transform_b(x_b_train),
                          a_test=model.transform_a(x_a_test), b_test=model.transform_b(x_b_test), model=model)


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """0-based rank of gallery[i] for query i by cosine similarity: its position in a stable argsort of -sim,
    computed exactly as #(sim > sim_ii) + #(sim == sim_ii at an earlier index). queries, gallery: [N, k]."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    n = len(q)
    ranks = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        sim = q[s:s + chunk] @ g.T                                # [c, N]
        rows = np.arange(sim.shape[0])
        own = sim[rows, s + rows][:, None]                        # [c, 1]
        earlier = np.arange(n)[None, :] < (s + rows)[:, None]     # [c, N]
        ranks[s:s + chunk] = (sim > own).sum(1) + ((sim == own) & earlier).sum(1)
    return ranks


def cca_retrieval(x_a_train, x_b_train, x_a_test, x_b_test, *, n_components: int, reg: float = 1e-3,
                  ks: Sequence[int] = (1, 5, 10), name_a: str = "a", name_b: str = "b") -> dict:
    """CCA reference row for retrieval tables: fit on paired train, recall@k on paired test (row i of a <-> row i
    of b) in both directions. Keys name the RETRIEVED modality, as align.bench.retrieval and CLIP_benchmark do:
    '{name_b}_retrieval_recall@{k}' = queries from a, gallery b; '{name_a}_retrieval_recall@{k}' = the reverse."""
    proj = cca_baseline(x_a_train, x_b_train, x_a_test, x_b_test, n_components, reg)
    if len(proj.a_test) != len(proj.b_test):
        raise DataError(f"cca_retrieval: x_a_test has {len(proj.a_test)} rows but x_b_test has "
                        f"{len(proj.b_test)}; rows must be paired")
    out = {"method": "cca", "n_components": int(n_components), "reg": float(reg),
           "mean_canonical_corr": float(proj.model.correlations.mean()),
           "n_train": int(len(proj.a_train)), "n_test": int(len(proj.a_test))}
    if name_a == name_b:
        raise AlignError(f"cca_retrieval: name_a and name_b must differ, both are {name_a!r}")
    for gallery, q, g in ((name_b, proj.a_test, proj.b_test), (name_a, proj.b_test, proj.a_test)):
        ranks = retrieval_ranks(q, g)  # [N_test] 0-based rank of each query's own pair
        for k in ks:
            out[f"{gallery}_retrieval_recall@{k}"] = float((ranks < k).mean())
    return out


# ------------------------------------------------------------ fusion probe
def _check_modalities(train: Mapping, test: Mapping, n_train: int, n_test: int) -> List[str]:
    if not isinstance(train, Mapping) or not train:
        raise DataError("fusion_probe: train must be a non-empty dict {modality: embeddings [N, D]}")
    names = list(train)
    if set(test) != set(names):
        raise DataError(f"fusion_probe: train has modalities {sorted(names)} but test has {sorted(test)}")
    for m in names:
        xtr = _as_matrix(train[m], f"fusion_probe: train[{m!r}]")
        xte = _as_matrix(test[m], f"fusion_probe: test[{m!r}]")
        if len(xtr) != n_train or len(xte) != n_test:
            raise DataError(f"fusion_probe: train[{m!r}]/test[{m!r}] have {len(xtr)}/{len(xte)} rows "
                            f"but train_y/test_y have {n_train}/{n_test}")
        if xtr.shape[1] != xte.shape[1]:
            raise DataError(f"fusion_probe: train[{m!r}] has dim {xtr.shape[1]} but test[{m!r}] has {xte.shape[1]}")
    return names


def _build_fusion(method: str, dims: List[int], n_classes: int, hidden: int):
    import torch
    from torch import nn

    def head(d):  # linear, or a one-hidden-layer MLP when hidden > 0
        return nn.Linear(d, n_classes) if hidden <= 0 else nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, n_classes))

    class Fusion(nn.Module):
        """xs: list of M tensors [B, D_m] -> logits [B, K]; `weights` holds the last modality weights [B, M]."""

        def __init__(self):
            super().__init__()
            self.method = method
            if method == "concat":
                self.head = head(sum(dims))
            else:
                d = dims[0]
                if method == "weighted_sum":
                    self.logit_w = nn.Parameter(torch.zeros(len(dims)))  # softmax -> uniform at init
                else:  # attention: learned query over modality tokens (+ modality embeddings)
                    self.query = nn.Parameter(torch.randn(d) / math.sqrt(d))
                    self.mod_emb = nn.Parameter(torch.zeros(len(dims), d))
                    self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d)
                self.head = head(d)
            self.weights = None

        def forward(self, xs):
            if self.method == "concat":
                return self.head(torch.cat(xs, dim=1))
            tok = torch.stack(xs, dim=1)                                     # [B, M, D]
            if self.method == "weighted_sum":
                w = torch.softmax(self.logit_w, 0).expand(tok.shape[0], -1)  # [B, M]
                fused = (w[:, :, None] * tok).sum(1)                         # [B, D]
            else:
                tok = tok + self.mod_emb
                att = self.k_proj(tok) @ self.query / math.sqrt(tok.shape[-1])  # [B, M]
                w = torch.softmax(att, dim=1)
                fused = (w[:, :, None] * self.v_proj(tok)).sum(1)            # [B, D]
            self.weights = w.detach()
            return self.head(fused)

    return Fusion()


def fusion_probe(train: Dict[str, np.ndarray], train_y, test: Dict[str, np.ndarray], test_y, *,
                 method: str = "concat", epochs: int = 300, lr: float = 1e-2, weight_decay: float = 1e-4,
                 hidden: int = 0, val_frac: float = 0.2, patience: int = 30, seed: int = 0,
                 num_threads: Optional[int] = 1, progress: bool = True) -> dict:
    """Train a small classifier over several modalities' embeddings combined by `method`; report test metrics.

    Full-batch Adam for up to `epochs` steps on the fit part of a stratified train/val split; the weights with
    the lowest val loss are kept (stop after `patience` steps without improvement). Each modality is z-scored
    with fit-split statistics first (removes the modality gap of aligned spaces; unit-scale logits).
    `num_threads` sets torch's intra-op threads during training (restored after; None keeps them): these ops
    are tiny, and on a busy shared CPU multi-threaded spin-waits made them 10-20x slower than one thread."""
    import torch

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        with _blas_threads(num_threads):
            return _fusion_probe(train, train_y, test, test_y, method=method, epochs=epochs, lr=lr,
                                 weight_decay=weight_decay, hidden=hidden, val_frac=val_frac,
                                 patience=patience, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(old_threads)


def _fusion_probe(train, train_y, test, test_y, *, method, epochs, lr, weight_decay, hidden, val_frac, patience,
                  seed, progress) -> dict:
    import torch
    import torch.nn.functional as F

    if method not in FUSION_METHODS:
        raise AlignError(f"fusion_probe: unknown method {method!r}; valid: {', '.join(FUSION_METHODS)}")
    if int(epochs) < 1 or int(patience) < 1:
        raise AlignError(f"fusion_probe: epochs and patience must be >= 1, got epochs={epochs} patience={patience}")
    train_y = _as_labels(train_y, None, "fusion_probe: train_y")
    test_y = _as_labels(test_y, None, "fusion_probe: test_y")
    names = _check_modalities(train, test, len(train_y), len(test_y))
    dims = [np.asarray(train[m]).shape[1] for m in names]
    if method != "concat" and len(set(dims)) > 1:
        raise DataError(f"fusion_probe: method {method!r} needs one shared embedding dim, got "
                        f"{dict(zip(names, dims))}; use method='concat' for unaligned dims")
    classes, ytr, yte = _encode_labels(train_y, test_y, "fusion_probe")
    k = len(classes)
    fit_idx, val_idx = stratified_split(ytr, val_frac, seed)
    if len(val_idx) == 0:
        raise DataError("fusion_probe: no class in train_y has 2+ samples, so no validation split is possible")

    def prep(m):  # z-score with fit-split stats; float32 tensors [N, D_m]
        xtr, xte = np.asarray(train[m], dtype=np.float32), np.asarray(test[m], dtype=np.float32)
        mu, sd = xtr[fit_idx].mean(0), xtr[fit_idx].std(0) + 1e-6
        return torch.from_numpy((xtr - mu) / sd), torch.from_numpy((xte - mu) / sd)

    xs_tr, xs_te = zip(*(prep(m) for m in names))
    fit_i, val_i = torch.from_numpy(fit_idx), torch.from_numpy(val_idx)
    x_fit, x_val = [x[fit_i] for x in xs_tr], [x[val_i] for x in xs_tr]
    y_fit, y_val = torch.from_numpy(ytr[fit_idx]), torch.from_numpy(ytr[val_idx])

    # fork_rng: seed init locally without changing the caller's global torch RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_fusion(method, dims, k, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best = (float("inf"), -1, None)  # (val loss, step, state)
    for step in tqdm(range(epochs), desc=f"fusion probe ({method})", unit="epoch", disable=not progress,
                     leave=False):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x_fit), y_fit).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            vloss = float(F.cross_entropy(model(x_val), y_val))
        if vloss < best[0] - 1e-6:
            best = (vloss, step, {n: t.clone() for n, t in model.state_dict().items()})
        elif step - best[1] >= patience:
            break
    model.load_state_dict(best[2])
    model.eval()
    with torch.no_grad():
        logits = model(list(xs_te)).numpy()
        mod_w = model.weights.mean(0).tolist() if model.weights is not None else None
    out = classification_metrics(logits, yte, k)
    out.update(method=method, modalities=names, best_step=int(best[1]), steps_run=int(step + 1),
               val_loss=float(best[0]), n_train=int(len(ytr)), n_test=int(len(yte)), n_classes=int(k))
    if mod_w is not None:  # mean softmax weight per modality on test: which modality the fusion leans on
        out["modality_weights"] = dict(zip(names, mod_w))
    return out


def fusion_report(train: Dict[str, np.ndarray], train_y, test: Dict[str, np.ndarray], test_y, *,
                  methods: Sequence[str] = FUSION_METHODS, progress: bool = True, **kwargs) -> List[dict]:
    """One row per single modality (same classifier on that modality alone) and per fusion method.
    Rows: {'row', 'modalities', 'method', 'acc1', 'acc5', 'mean_per_class_recall', ...}; kwargs go to fusion_probe."""
    if not isinstance(train, Mapping) or not train or not isinstance(test, Mapping) or set(test) != set(train):
        raise DataError(f"fusion_report: train and test must be dicts with the same modalities, got "
                        f"{sorted(train) if isinstance(train, Mapping) else type(train).__name__} and "
                        f"{sorted(test) if isinstance(test, Mapping) else type(test).__name__}")
    jobs = [(m, {m: train[m]}, {m: test[m]}, "concat") for m in train]
    jobs += [("+".join(train) + f" ({meth})", train, test, meth) for meth in methods]
    rows = []
    for label, tr, te, meth in tqdm(jobs, desc="fusion report", unit="probe", disable=not progress):
        r = fusion_probe(tr, train_y, te, test_y, method=meth, progress=False, **kwargs)
        r["row"] = label
        r["method"] = "single" if len(tr) == 1 else meth
        rows.append(r)
    return rows


def format_fusion_table(rows: List[dict]) -> str:
    """Plain-text table of fusion_report rows (acc1 / acc5 / mean per-class recall)."""
    def f(v):
        return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}"

    width = max(len(r["row"]) for r in rows)
    lines = [f"{'row':<{width}}  {'acc1':>6}  {'acc5':>6}  {'mpcr':>6}"]
    lines += [f"{r['row']:<{width}}  {f(r['acc1']):>6}  {f(r['acc5']):>6}  {f(r['mean_per_class_recall']):>6}"
              for r in rows]
    return "\n".join(lines)
