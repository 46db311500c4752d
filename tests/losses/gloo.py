"""Launching a loss test's workers as 2 forked CPU processes over gloo, with a bounded wait."""

import os
import time

import pytest
import torch
import torch.multiprocessing as mp


def run_workers(worker, tmp, nprocs: int = 2, timeout_s: float = 120.0):
    """Runs worker(rank, nprocs, init_file, out_path) in `nprocs` forked processes and returns what rank 0
    saved to out_path (torch.save, read weights-only). Fails the test when they do not finish in time."""
    out = tmp / "results.pt"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # fork: the children reuse the already-imported torch (spawn re-imports it: ~10 s on a busy box)
    ctx = mp.start_processes(worker, args=(nprocs, str(tmp / "init"), str(out)), nprocs=nprocs, join=False,
                             start_method="fork")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout_s:.0f} s")
    return torch.load(out, weights_only=True)
