"""Throughput accounting: training FLOPs per sample and the device's peak, for MFU."""
import time
from typing import Optional

import torch


def estimate_flops_per_sample(model) -> Optional[float]:
    """Training FLOPs per sample: 3x the forward FLOPs (forward + backward) counted by torch."""
    was = model.training
    try:
        from torch.utils.flop_counter import FlopCounterMode
        batch = {m: t.dummy_input(2).to(next(model.parameters()).device) for m, t in model.towers.items()}
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(batch)
        return 3.0 * fc.get_total_flops() / 2
    except Exception:   # a tower whose dummy input this count cannot build: no MFU rather than no summary
        return None
    finally:
        model.train(was)


# Dense bf16/fp16 tensor-core peaks (no sparsity), FLOP/s, by CUDA device name.
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12,
             "RTX 4090": 165e12}


def peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """The device's peak: a table for GPUs; on CPU, a measured fp32 matmul rate (an honest stand-in)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, v in GPU_PEAKS.items():
            if key in name:
                return v if precision != "fp32" else v / 2
        return None
    threads = torch.get_num_threads()
    if threads not in _CPU_PEAKS:          # measured once a process per thread count (~0.25 s on 2 cores)
        n = 1024
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        t = time.perf_counter()
        reps = 5
        for _ in range(reps):
            a @ b
        _CPU_PEAKS[threads] = 2 * n ** 3 * reps / (time.perf_counter() - t)
    return _CPU_PEAKS[threads]


_CPU_PEAKS: dict = {}   # torch threads -> measured fp32 matmul FLOP/s
