"""Peak memory of the contrastive loss (forward + backward) vs batch size, and the
largest batch that fits a memory budget: open_clip's ClipLoss vs align's ChunkedClipLoss.

    python benchmarks/loss_memory.py [--dim 512] [--budget-gb 8] [--device auto|cpu|cuda]
                                     [--chunk-size 1024] [--max-verify-seconds 300]

What is measured. "Loss memory" = peak memory while running loss(a, b, s) and
.backward() minus the memory in use just before, with the two float32 [N, D]
embeddings (the encoders' outputs, leaves that require grad) already
allocated. It therefore includes the logits, softmax buffers, saved tensors
and the [N, D] gradients of the embeddings.

  CPU: each measurement runs in a fresh subprocess. After a small warm-up call
  (lazy thread-pool / kernel set-up must not count) it resets the kernel's
  peak-RSS counter (`echo 5 > /proc/self/clear_refs` resets VmHWM), notes
  VmRSS, runs forward+backward and reads VmHWM: peak = VmHWM - VmRSS. The
  child runs with MALLOC_MMAP_THRESHOLD_=65536 so glibc serves every
  tensor-sized block with mmap and returns it on free: RSS then follows live
  tensor memory instead of heap blocks kept from earlier allocations. If
  clear_refs is not writable it falls back to getrusage ru_maxrss deltas.
  CUDA: torch.cuda.max_memory_allocated() - memory_allocated() in-process.

Finding the max batch. Each loss is measured at a few sizes; a quadratic
(open_clip: [N, N] logits) or linear (chunked: [chunk, N] + [N, D] buffers)
model is fitted and solved for the budget; the predicted max is then checked by
a real measurement (stepping down if it does not fit) whenever its estimated
run time is under --max-verify-seconds; when it is not (the chunked loss on
CPU: its compute grows as N^2*D), one held-out size twice the largest fitted
one is measured and compared with the model instead. The table says which
rows were measured and whether each max was verified. The last line is `max_batch_ratio=X`
(align max / open_clip max).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

IMPLS = ("open_clip", "align_chunked")


# ---------------------------------------------------------------- one measurement

def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_hwm():
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; returns that RSS in KB, None if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status_kb("VmRSS")
    except OSError:
        return None


def _make_loss(impl: str, chunk: int):
    if impl == "open_clip":
        from open_clip.loss import ClipLoss
        return ClipLoss()
    from align.losses import ChunkedClipLoss
    return ChunkedClipLoss(chunk)


def _inputs(n: int, dim: int, device: str):
    import torch
    # in-place normalisation: no [N, D] temporaries left behind in the heap before the baseline
    a = torch.randn(n, dim, device=device)
    a.div_(a.norm(dim=1, keepdim=True))
    b = torch.randn(n, dim, device=device)
    b.div_(b.norm(dim=1, keepdim=True))
    s = torch.tensor(100.0, device=device, requires_grad=True)
    return a.requires_grad_(), b.requires_grad_(), s


def _fwd_bwd(loss_fn, a, b, s):
    loss = loss_fn(a, b, s)
    loss.backward()
    return loss.item()


def measure(impl: str, n: int, dim: int, chunk: int, device: str) -> dict:
    """Peak loss memory in bytes for one (impl, N): call in a fresh process on CPU."""
    import torch
    torch.manual_seed(0)
    loss_fn = _make_loss(impl, chunk)
    _fwd_bwd(loss_fn, *_inputs(64, dim, device))  # warm-up
    a, b, s = _inputs(n, dim, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        try:
            _fwd_bwd(loss_fn, a, b, s)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        except torch.OutOfMemoryError:
            peak = float("inf")
        out = {"peak": peak, "seconds": time.perf_counter() - t0, "method": "cuda max_memory_allocated"}
        del a, b, s
        torch.cuda.empty_cache()
        return out
    base = reset_hwm()
    method = "VmHWM-VmRSS" if base is not None else "ru_maxrss delta"
    if base is None:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    _fwd_bwd(loss_fn, a, b, s)
    seconds = time.perf_counter() - t0
    top = status_kb("VmHWM") if method == "VmHWM-VmRSS" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak": (top - base) * 1024, "seconds": seconds, "method": method}


class CpuChild:
    """A subprocess that imports torch once and measures one N per request (stdin -> JSON line).

    Re-using it is safe because the peak counter is reset before each measurement and,
    with MALLOC_MMAP_THRESHOLD_, every freed tensor goes back to the kernel."""

    def __init__(self, impl, dim, chunk, threads):
        self.cmd = [sys.executable, os.path.abspath(__file__), "--_child", impl, str(dim), str(chunk)]
        self.env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
        self.proc = None

    def measure(self, n) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        try:
            self.proc.stdin.write(f"{n}\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:  # the child died (e.g. killed by the OOM killer): it did not fit
            self.proc.wait()
            return {"peak": float("inf"), "seconds": float("nan"),
                    "method": f"child exited with {self.proc.returncode}"}
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def child_loop(impl, dim, chunk):
    """Runs in the subprocess: one measurement per N read from stdin."""
    import gc
    for line in sys.stdin:
        print(json.dumps(measure(impl, int(line), dim, chunk, "cpu")), flush=True)
        gc.collect()


# ---------------------------------------------------------------- search

class Finder:
    """Measures one impl at a few sizes, fits, solves for the budget, verifies."""

    def __init__(self, impl, args, device, rows):
        self.impl, self.args, self.device, self.rows = impl, args, device, rows
        self.points = []  # (n, peak bytes, seconds)
        self.child = None

    def run(self, n, how):
        a = self.args
        if self.device == "cuda":
            r = measure(self.impl, n, a.dim, a.chunk_size, "cuda")
        else:
            if self.child is None:
                self.child = CpuChild(self.impl, a.dim, a.chunk_size, a.threads)
            r = self.child.measure(n)
        self.rows.append((self.impl, n, r["peak"], r["seconds"], how))
        print(f"  {self.impl:<14} N={n:>8}  peak={_gb(r['peak']):>8} GB  {r['seconds']:7.1f} s  [{how}; "
              f"{r['method']}]", flush=True)
        if r["peak"] != float("inf"):
            self.points.append((n, r["peak"], r["seconds"]))
        return r

    def fit(self, degree):
        import numpy as np
        ns = np.array([p[0] for p in self.points], dtype=float)
        ys = np.array([p[1] for p in self.points], dtype=float)
        coef = np.polyfit(ns, ys, degree)          # highest power first
        roots = np.roots(coef - np.eye(1, degree + 1, degree)[0] * self.args.budget_gb * 1e9)
        good = [r.real for r in roots if abs(r.imag) < 1e-6 and r.real > 0]
        return int(min(good)) if good else None, coef

    def time_at(self, n):
        # compute is ~N^2 D for both losses: scale the largest measured run
        n0, _, t0 = max(self.points)
        return t0 * (n / n0) ** 2

    def verify(self, n, step):
        """Measure at n; step down until it fits. Returns (max n, verified?)."""
        budget = self.args.budget_gb * 1e9
        for _ in range(4):
            n = max(step, n // step * step)
            est = self.time_at(n)
            if est > self.args.max_verify_seconds:
                print(f"  {self.impl:<14} N={n:>8}  not verified: ~{est:.0f} s of compute > "
                      f"--max-verify-seconds {self.args.max_verify_seconds:g}", flush=True)
                return n, False
            if self.device == "cpu" and _available() < 1.3 * budget:
                print(f"  {self.impl:<14} N={n:>8}  not verified: only {_gb(_available())} GB RAM free",
                      flush=True)
                return n, False
            if self.run(n, "verify")["peak"] <= budget:
                return n, True
            n = int(n * 0.97)
        return n, False


def _gb(x):
    return "inf" if x == float("inf") else f"{x / 1e9:.3f}"


def _available():
    import psutil
    return psutil.virtual_memory().available


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512, help="embedding dimension (e.g. 512, 768)")
    p.add_argument("--budget-gb", type=float, default=8.0, help="loss memory budget in GB (1e9 bytes)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--chunk-size", type=int, default=1024, help="ChunkedClipLoss chunk_size")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per measurement")
    p.add_argument("--max-verify-seconds", type=float, default=300.0,
                   help="skip a verification run whose estimated compute time is longer")
    p.add_argument("--_child", nargs=3, metavar=("IMPL", "DIM", "CHUNK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        impl, dim, chunk = args._child
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        child_loop(impl, int(dim), int(chunk))
        return
    import numpy as np
    import torch
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.time()
    print(f"loss memory: dim={args.dim} budget={args.budget_gb:g} GB device={device} "
          f"chunk_size={args.chunk_size} torch={torch.__version__}", flush=True)
    rows, result = [], {}
    # sizes to fit on: small enough to run in seconds on 2 CPU cores
    plan = {"open_clip": ([1024, 2048, 4096, 6144], 2, 256),
            "align_chunked": ([2 * args.chunk_size, 4 * args.chunk_size, 8 * args.chunk_size], 1, 1024)}
    if device == "cuda":  # the GPU is fast: fit on larger sizes
        plan = {"open_clip": ([4096, 8192, 16384, 24576], 2, 256),
                "align_chunked": ([16384, 32768, 65536, 131072], 1, 1024)}
    for impl in IMPLS:
        sizes, degree, step = plan[impl]
        f = Finder(impl, args, device, rows)
        for n in sizes:
            f.run(n, "fit")
        n_pred, coef = f.fit(degree)
        terms = " + ".join(f"{c:.4g}*N^{degree - i}" for i, c in enumerate(coef))
        print(f"  {impl:<14} model: peak_bytes = {terms}  ->  predicted max N = {n_pred}", flush=True)
        n_max, ok = f.verify(n_pred, step)
        if not ok and degree == 1:
            # cannot afford the max itself: test the extrapolation on one held-out, larger size
            n_chk = 2 * sizes[-1]
            if f.time_at(n_chk) <= args.max_verify_seconds:
                r = f.run(n_chk, "held-out check")
                model = float(np.polyval(coef, n_chk))
                print(f"  {impl:<14} held-out N={n_chk}: measured {_gb(r['peak'])} GB, model {_gb(model)} GB "
                      f"({100 * (r['peak'] - model) / model:+.1f}%)", flush=True)
        if f.child is not None:
            f.child.close()
        result[impl] = (n_max, ok, n_pred)

    print()
    print(f"{'loss':<14} {'N':>8} {'peak GB':>9} {'seconds':>8}  measured as")
    for impl, n, peak, sec, how in rows:
        print(f"{impl:<14} {n:>8} {_gb(peak):>9} {sec:>8.1f}  {how}")
    print()
    for impl in IMPLS:
        n_max, ok, n_pred = result[impl]
        state = "verified by measurement" if ok else "model prediction, NOT verified by measurement"
        print(f"max batch within {args.budget_gb:g} GB, {impl:<14}: {n_max:>8}  ({state}; model said {n_pred})")
    ratio = result["align_chunked"][0] / result["open_clip"][0]
    print(f"wall time {time.time() - t_start:.0f} s")
    print(f"max_batch_ratio={ratio:.1f}")


if __name__ == "__main__":
    main()
