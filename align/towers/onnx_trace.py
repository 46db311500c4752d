"""Tracing an encoder to ONNX with a dynamic batch axis: the recipe `align export --format onnx`
(align.export.onnx_format) and `--engine onnxruntime` (align.bench.engine) share.

    with onnx_tracing():                      # MHA fast path off, the exporters' warnings hushed; restored after
        export_torchscript(module, x, path)   # "input" [B, ...] -> "embedding" [B, E], opset 17, B dynamic
"""
import contextlib
import warnings

import torch

OPSET = 17
INPUT, OUTPUT = "input", "embedding"


@contextlib.contextmanager
def onnx_tracing():
    """nn.MultiheadAttention's inference fast path (eval, no grad or frozen weights) emits
    aten::_native_multi_head_attention, which has no ONNX symbolic: off while tracing. The legacy exporter
    warns that it is deprecated and that advanced indexing with negative indices would be wrong (open_clip's
    text pooling indexes with argmax, never negative): hushed."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_torchscript(module: torch.nn.Module, x: torch.Tensor, path: str) -> None:
    """The TorchScript (legacy) exporter on module(x): one input, one output, the batch axis dynamic.
    On the test towers it takes ~1 s where the torch.export-based exporter takes 5-7 s."""
    torch.onnx.export(module, (x,), path, dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                      dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET)
