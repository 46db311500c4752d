"""Launching a loss test's workers as 2 forked CPU processes over gloo, with a bounded wait."""

import functools
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


def _cases_worker(cases, run_case, rank, world, init_file, out_path):
    """Each case's loss and DDP-averaged gradients on this rank; rank 0 saves {case: {"losses", "grads"}}."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for case in cases:
        loss, grads = run_case(case, rank, world)
        for g in grads.values():                          # DDP: average over ranks
            dist.all_reduce(g)
            g /= world
        losses = [torch.zeros(()).double() for _ in range(world)]
        dist.all_gather(losses, loss)
        results[case] = {"losses": torch.stack(losses), "grads": grads}
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


def run_cases(cases, run_case, tmp):
    """run_case(case, rank, world) -> (loss, {param: grad}) for every case on 2 gloo processes (run_workers)."""
    return run_workers(functools.partial(_cases_worker, list(cases), run_case), tmp)
