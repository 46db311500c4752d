"""Exact inner-product top-k: fast low-precision scoring, then an exact re-rank of a provably complete candidate set.

`ExactIndex` (index type "flat") returns exactly the top-k of the inner products of the
float32 inputs, computed in float64, ties broken by the lower gallery row: the same ids as
`np.argsort(-(Q64 @ G64.T), kind="stable")[:, :k]`. It gets there ~2-3x faster than a
float32 GEMM on CPUs with bf16 dot-product instructions (AVX512-BF16, AMX):

 1. score every (query, item) pair as s^ = bf16(q) . bf16(g) with float32 accumulation
    (oneDNN; output rounded to bf16), one block of queries at a time  [B, N];
 2. take the top k+c of each row (c = `extra` spare candidates, adapted as it runs);
 3. re-score those candidates exactly (float64) and sort by (-score, id).

Why step 3 sees every true top-k item. Per query, every pair obeys |v - s| <= a and
|s^ - v| <= u|v|, where s is the exact score, v the float32 accumulation and s^ its bf16
rounding (u = 2^-8, the bf16 unit roundoff), with
    a = |q - bf16(q)| * max_g|g| + |bf16(q)| * max_g|g - bf16(g)| + gamma_D * |bf16(q)| * max_g|bf16(g)|
(the two input roundings by Cauchy-Schwarz; gamma_D = D*2^-24/(1-D*2^-24) bounds float32
summation in any order; bf16 x bf16 products are exact in float32). The k items with the
largest s^ all have s >= L = lo(s^_k) - a, so the true k-th score is >= L; every true top-k
item (ties included) therefore has s^ >= thr = f(L - a), with lo(y) = the least v whose
rounding can be y and f(x) = x - u|x|. If the (k+c)-th largest s^ is below thr, the k+c
candidates contain every item with s^ >= thr; otherwise that row takes all items with
s^ >= thr from the score block (no fallback search, never a miss). The bound is checked
against float64 on a sample of the gallery when the index is built; a kernel that breaks it
(e.g. a BLAS that accumulates in bf16) switches the index to float32 scoring with its own
bound (a = gamma_D |q| max|g|, u = 0), then to float64, with a warning.

`device` ("cpu" by default; "cuda", "cuda:1") holds the gallery there and runs all three steps
there: `align bench --device cuda` searches on the GPU as well as encoding there. On CUDA the
scoring GEMM runs with TF32 and cuBLAS's reduced-precision bf16 reductions turned off (both
would break the bound; the check above would catch them and fall back to slower scoring). A gallery
that does not fit in the GPU's free memory is refused in one line before anything moves (and a CUDA
out-of-memory error later in the build or a search becomes the same line), not a CUDA traceback.
"""
from __future__ import annotations

import contextlib
import logging
from typing import List, Optional, Tuple

import numpy as np
import torch

from align.errors import AlignError, ConfigError, DataError

log = logging.getLogger("align.bench")

U32 = 2.0 ** -24                 # float32 unit roundoff
UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "fp32": 0.0, "fp64": 0.0}   # rounding of the score itself (bf16 GEMM output)
ACCUM_ROUNDOFF = {"bf16": U32, "fp32": U32, "fp64": 2.0 ** -53}  # the GEMM's accumulation
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
FALLBACK = ("bf16", "fp32", "fp64")   # a scoring whose bound fails on this machine hands over to the next
SLACK = 1.01                     # margin on top of the bound (float64 rounding of the bound itself, norms)
RERANK_ELEMS = 1 << 23           # gathered candidate floats per re-rank chunk ([rows, C, D] <= 8M: 64 MB f64)
SCORE_BLOCK_BYTES = 256 << 20    # the [B, N] score block: B shrinks for big galleries (1M items: 128 queries)


def _gamma(d: int, unit: float = U32) -> float:
    return d * unit / (1 - d * unit)


def _lo(y: torch.Tensor, u: float) -> torch.Tensor:
    """Smallest v with v + u|v| >= y (the least exact value that can round to y)."""
    return torch.where(y >= 0, y / (1 + u), y / (1 - u))


def _down(x: torch.Tensor, u: float) -> torch.Tensor:
    """Smallest value x can round to: x - u|x|."""
    return x - u * x.abs()


def check_device(device, what: str = "index flat: device", types=("cpu", "cuda")) -> torch.device:
    """A torch device this machine has, or one line saying why not; `what` is how the user named it (also
    `align bench --device`, align.bench.cli), `types` the device types allowed (None: any)."""
    try:
        dev = torch.device(device or "cpu")
    except RuntimeError as e:
        raise ConfigError(f"{what} {device!r} is not a torch device: {e}") from None
    if types and dev.type not in types:
        raise ConfigError(f"{what} {device!r}: {' or '.join(types)}[:N]")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what} {device}: this machine has no CUDA device; use {what.split()[-1]} cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{what} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


@contextlib.contextmanager
def _exact_cuda_matmul(dev: torch.device):
    """TF32 and reduced-precision bf16 reductions off for the block (CUDA only; restored after)."""
    if dev.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    saved = (m.allow_tf32, m.allow_bf16_reduced_precision_reduction)
    m.allow_tf32, m.allow_bf16_reduced_precision_reduction = False, False
    try:
        yield
    finally:
        m.allow_tf32, m.allow_bf16_reduced_precision_reduction = saved


def gpu_bytes(n: int, d: int, scoring: str) -> int:
    """GPU memory the index needs for an [n, d] gallery: float32 rows + the scoring copy + the score block,
    the re-rank buffers (float32 + float64 gathers) and the bound check's float64 [rows, cols] block."""
    gallery = n * d * (4 + DTYPES.get(scoring, torch.float64).itemsize)    # (an unknown scoring: refused later)
    return gallery + SCORE_BLOCK_BYTES + RERANK_ELEMS * 12 + 128 * 4096 * 8


def _gb(b: float) -> str:
    return f"{b / 2 ** 30:.1f} GiB"


def _too_big(dev: torch.device, n: int, d: int, need: int, free: Optional[int]) -> ConfigError:
    has = f"{_gb(free)} free" if free is not None else "not enough free memory"
    return ConfigError(f"exact search on {dev}: the gallery of {n:,} x {d} needs ~{_gb(need)} of GPU memory and "
                       f"{dev} has {has}; search on the CPU (--device cpu / index flat device: cpu) or use a "
                       f"compressed index (index ivfpq)")


def check_fits(dev: torch.device, n: int, d: int, scoring: str) -> None:
    """One line (ConfigError) when an [n, d] gallery cannot be held and scored in `dev`'s free memory."""
    if dev.type != "cuda":
        return
    free, _total = torch.cuda.mem_get_info(dev)
    need = gpu_bytes(n, d, scoring)
    if need > free:
        raise _too_big(dev, n, d, need, free)


def _check_finite(x: torch.Tensor, what: str, offset: int = 0) -> None:
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        row = int(torch.nonzero(bad)[0, 0]) + offset
        raise DataError(f"exact search: {what} row {row} contains NaN or inf")


class ExactIndex:
    """Exact top-k by inner product with a FAISS-like interface (add / search / ntotal / d / is_trained).

    scoring: "bf16" (fast; default), "fp32" or "fp64" (that GEMM, with the same exact re-rank).
    batch_size: queries scored per block (the block is [batch_size, N] bf16, at most SCORE_BLOCK_BYTES).
    extra: spare candidates per query beyond k (16); doubled when more than 1/64 of a block's rows need more.
    device: where the gallery is held and scored ("cpu", "cuda", "cuda:N"); results come back as numpy.
    """

    is_trained = True

    def __init__(self, d: int, scoring: str = "bf16", batch_size: int = 1024, extra: int = 16,
                 check_bound: bool = True, device=None):
        if scoring not in UNIT_ROUNDOFF:
            raise ConfigError(f"index flat: scoring must be one of {sorted(UNIT_ROUNDOFF)}, got {scoring!r}")
        if int(batch_size) < 1 or int(extra) < 0:
            raise ConfigError(f"index flat: batch_size must be >= 1 and extra >= 0 (got {batch_size}, {extra})")
        self.d, self.scoring, self.batch_size, self.extra = int(d), scoring, int(batch_size), int(extra)
        self.check_bound = bool(check_bound)
        self.device = check_device(device)
        self._parts: List[np.ndarray] = []
        self._g: Optional[torch.Tensor] = None
        self._rb = None                   # re-rank gather buffers (float32, float64)
        self.stats = {"queries": 0, "candidates": 0, "wide_rows": 0}

    @property
    def ntotal(self) -> int:
        return sum(len(p) for p in self._parts) if self._g is None else len(self._g)

    def add(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise DataError(f"exact search: gallery rows must be [n, {self.d}], got {x.shape}")
        if self._g is not None:
            self._parts, self._g = [self._g.cpu().numpy()], None
        self._parts.append(x)

    # -- preparation --------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self._g is not None:
            return
        host = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]     # [N, D] float32
        check_fits(self.device, len(host), self.d, self.scoring)
        try:
            with self._oom_as_one_line(len(host)):
                self._choose_scoring(torch.from_numpy(host).to(self.device))
        except ConfigError:
            self._g = self._gh = self._buf = self._rb = None     # nothing half-built kept on the GPU
            raise
        self._parts = []

    @contextlib.contextmanager
    def _oom_as_one_line(self, n: int):
        """A CUDA out-of-memory error (another process took the memory, a fallback to wider scoring) as one line."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
            raise _too_big(self.device, n, self.d, gpu_bytes(n, self.d, self.scoring), free) from None

    def _choose_scoring(self, g: torch.Tensor) -> None:
        _check_finite(g, "gallery")
        self._g = g                                                        # [N, D] float32
        for scoring in FALLBACK[FALLBACK.index(self.scoring):]:
            self._set_scoring(scoring)
            if not self.check_bound or self._bound_holds():
                return
            # e.g. a BLAS that accumulates bf16 in bf16, or torch's float32 matmul precision set to bf16/tf32
            log.warning("exact search: this machine's %s GEMM breaks the rounding bound; trying the next precision",
                        scoring)
        raise AlignError("exact search: even float64 scores break the rounding bound; this torch build's matmul "
                         "is not usable for exact search (use index flat_faiss)")

    def _set_scoring(self, scoring: str) -> None:
        g = self._g
        self.scoring = scoring
        gh = g.to(DTYPES[scoring])                                         # [N, D] scoring copy
        ghf = gh.float()
        self._gh = gh
        self._g_max = float(torch.linalg.vector_norm(g.double(), dim=1).max())
        self._gh_max = float(torch.linalg.vector_norm(ghf.double(), dim=1).max())
        self._r_max = float(torch.linalg.vector_norm((g - ghf).double(), dim=1).max())   # 0 unless bf16
        self._buf = None

    def _margin(self, q: torch.Tensor, qh: torch.Tensor) -> torch.Tensor:
        """a per query [B] float64 (see the module docstring)."""
        qhf = qh.float()
        nq = torch.linalg.vector_norm(qhf.double(), dim=1)
        rq = torch.linalg.vector_norm((q - qhf).double(), dim=1)
        a = rq * self._g_max + nq * self._r_max + _gamma(self.d, ACCUM_ROUNDOFF[self.scoring]) * nq * self._gh_max
        # denormals flushed to zero by bf16 dot instructions: each lost product is < 2^-126 * max|element|
        tiny = self.d * 2.0 ** -126 * (1.0 + float(qhf.abs().max()) + self._gh_max)
        return SLACK * a + tiny

    def _scores(self, qh: torch.Tensor) -> torch.Tensor:
        """Low-precision score block [B, N] (bf16 or float32) into a reused buffer."""
        b, n = len(qh), len(self._gh)
        if self._buf is None or self._buf.shape[0] < b:
            self._buf = torch.empty((b, n), dtype=self._gh.dtype, device=self.device)
        with _exact_cuda_matmul(self.device):
            return torch.mm(qh, self._gh.T, out=self._buf[:b])

    def _bound_holds(self, rows: int = 64, cols: int = 4096) -> bool:
        """The bound against float64 on gallery rows used as queries (and their negations)."""
        g = self._g
        q = torch.cat([g[:rows], -g[:rows]])
        qh = q.to(self._gh.dtype)
        s_hat = self._scores(qh)[:, :cols].double()                       # [2*rows, cols]
        with _exact_cuda_matmul(self.device):
            s = q.double() @ g[:cols].double().T
        a = self._margin(q, qh)[:, None]
        u = UNIT_ROUNDOFF[self.scoring] * SLACK
        lo, hi = _down(s - a, u), (s + a) + u * (s + a).abs()
        ok = bool(((s_hat >= lo) & (s_hat <= hi)).all())
        self._buf = None
        return ok

    # -- search -----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k] float32, ids [Q, k] int64) best first; k is clipped to the gallery size."""
        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        if q_all.ndim != 2 or q_all.shape[1] != self.d:
            raise DataError(f"exact search: queries must be [n, {self.d}], got {tuple(q_all.shape)}")
        if self.ntotal == 0:           # an empty gallery: k clips to 0 (it was an IndexError from _prepare)
            return np.empty((len(q_all), 0), dtype=np.float32), np.empty((len(q_all), 0), dtype=np.int64)
        self._prepare()
        n = len(self._g)
        k = int(min(k, n))
        scores = np.empty((len(q_all), k), dtype=np.float32)
        ids = np.empty((len(q_all), k), dtype=np.int64)
        if k <= 0 or len(q_all) == 0:
            return scores, ids
        step = max(1, min(self.batch_size, SCORE_BLOCK_BYTES // (n * self._gh.element_size())))
        for s in range(0, len(q_all), step):
            q = q_all[s:s + step].to(self.device)
            _check_finite(q, "query", s)
            with self._oom_as_one_line(n):
                sc, ix = self._search_block(q, k)
            scores[s:s + len(q)], ids[s:s + len(q)] = sc.float().cpu().numpy(), ix.cpu().numpy()
        return scores, ids

    def _search_block(self, q: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        n = len(self._g)
        c = min(n, k + self.extra)
        self.stats["queries"] += len(q)
        if c == n:                                  # every item is a candidate: no need to score twice
            cand = torch.arange(n, device=self.device).expand(len(q), n)
            self.stats["candidates"] += len(q) * n
            return self._rerank(q, cand, k)
        qh = q.to(self._gh.dtype)
        s_hat = self._scores(qh)                                           # [B, N]
        vals, cand = torch.topk(s_hat, c, dim=1)                           # [B, c] best first
        u = UNIT_ROUNDOFF[self.scoring] * SLACK
        a = self._margin(q, qh)                                            # [B]
        thr = _down(_lo(vals[:, k - 1].double(), u) - 2 * a, u)            # [B] every true top-k item is >= thr
        wide = vals[:, c - 1].double() >= thr                              # [B] rows whose c candidates may miss one
        out_s = torch.empty((len(q), k), dtype=torch.float64, device=self.device)
        out_i = torch.empty((len(q), k), dtype=torch.int64, device=self.device)
        narrow = torch.nonzero(~wide).flatten()
        if len(narrow):
            out_s[narrow], out_i[narrow] = self._rerank(q[narrow], cand[narrow], k)
            self.stats["candidates"] += len(narrow) * c
        for r in torch.nonzero(wide).flatten().tolist():                   # all items above the threshold
            cr = torch.nonzero(s_hat[r].double() >= thr[r]).flatten()[None]  # [1, m], m > c
            out_s[r], out_i[r] = (t[0] for t in self._rerank(q[r:r + 1], cr, k))
            self.stats["candidates"] += cr.shape[1]
        self.stats["wide_rows"] += int(wide.sum())
        if int(wide.sum()) * 64 > len(q):            # too many wide rows: more spare candidates next block
            self.extra = min(n, max(1, 2 * self.extra))
        return out_s, out_i

    def _rerank(self, q: torch.Tensor, cand: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact float64 scores of candidate ids cand [B, C]; top k by (-score, id) -> ([B, k] f64, [B, k])."""
        b, c = cand.shape
        step = max(1, RERANK_ELEMS // max(1, c * self.d))
        rows = min(b, step) * c
        if self._rb is None or self._rb[0].shape[0] < rows:       # reused gather buffers (no page faults per block)
            self._rb = (torch.empty((rows, self.d), device=self.device),
                        torch.empty((rows, self.d), dtype=torch.float64, device=self.device))
        out_s = torch.empty((b, k), dtype=torch.float64, device=self.device)
        out_i = torch.empty((b, k), dtype=torch.int64, device=self.device)
        q64 = q.double()
        for s in range(0, b, step):
            ids = torch.sort(cand[s:s + step], dim=1).values              # [b', C] ascending ids: ties -> lower id
            m = ids.numel()
            g32 = torch.index_select(self._g, 0, ids.flatten(), out=self._rb[0][:m])
            g64 = self._rb[1][:m].copy_(g32).view(len(ids), c, self.d)     # [b', C, D] float64
            with _exact_cuda_matmul(self.device):
                sc = torch.matmul(q64[s:s + step, None, :], g64.transpose(1, 2))[:, 0, :]   # [b', C] exact scores
            order = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, :k]
            out_s[s:s + step] = torch.gather(sc, 1, order)
            out_i[s:s + step] = torch.gather(ids, 1, order)
        return out_s, out_i

    def describe(self) -> dict:
        q = max(1, self.stats["queries"])
        return {"ntotal": int(self.ntotal), "dim": self.d, "exact": True, "scoring": self.scoring,
                "device": str(self.device),
                "rerank": "float64", "extra": self.extra,
                "mean_candidates": round(self.stats["candidates"] / q, 2), "wide_rows": self.stats["wide_rows"]}


def exact_topk_reference(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The definition ExactIndex meets, in plain numpy (memory [Q, N]: for tests and small inputs)."""
    s = np.asarray(queries, np.float64) @ np.asarray(gallery, np.float64).T
    return np.argsort(-s, axis=1, kind="stable")[:, :int(min(k, len(gallery)))]


__all__ = ["ExactIndex", "check_fits", "exact_topk_reference", "gpu_bytes"]
