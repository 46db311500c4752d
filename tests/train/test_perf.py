"""align.train.perf: the CPU's peak is measured once a process per thread count, the GPU's read from a table."""
import pytest
import torch

from align.train import perf


def test_the_cpu_peak_is_measured_once_per_thread_count(monkeypatch):
    monkeypatch.setattr(perf, "_CPU_PEAKS", {})
    products = []
    real = perf.torch.randn

    def counted(*a, **k):
        products.append(a)
        return real(*a, **k)

    monkeypatch.setattr(perf.torch, "randn", counted)
    first = perf.peak_flops(torch.device("cpu"), "fp32")
    assert first > 0 and len(products) == 2                 # measured: two operands
    assert perf.peak_flops(torch.device("cpu"), "fp32") == first and len(products) == 2   # kept
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        assert perf.peak_flops(torch.device("cpu"), "fp32") > 0 and len(products) == 4   # another count: measured
    finally:
        torch.set_num_threads(threads)
    assert set(perf._CPU_PEAKS) == {threads, 1 if threads != 1 else 2}


@pytest.mark.parametrize("name, precision, peak", [("NVIDIA H100 80GB HBM3", "bf16", 989e12),
                                                    ("NVIDIA H100 80GB HBM3", "fp32", 989e12 / 2),
                                                    ("NVIDIA A10G", "bf16", 125e12), ("Some GPU", "bf16", None)])
def test_a_gpu_peak_comes_from_the_table(monkeypatch, name, precision, peak):
    monkeypatch.setattr(perf.torch.cuda, "get_device_name", lambda device: name)
    assert perf.peak_flops(torch.device("cuda", 0), precision) == peak
