"""Inference engines for encoding: `--engine torch | onnxruntime` of `align embed`, `align bench` and
`align data filter`.

    torch        the model's own encode_* methods (the default)
    onnxruntime  the image and audio encoders are exported to ONNX on their first batch and run by
                 onnxruntime's CPU provider; text stays in torch, where an open_clip text tower already skips
                 the padding after the batch's last end-of-text token (an exported graph would run all
                 context positions)

Why: on a 2-core CPU onnxruntime ran a ViT-B/32 image tower ~1.1x faster than eager PyTorch on the same
threads (median of 6 batches of 64), and the image tower is most of an embedding job (RESULTS "Embed
throughput, steady state and --engine onnxruntime"). A tiny tower gains nothing: the export costs seconds. The
embeddings are the same up to float rounding: each export is
checked against the torch encoder on the batch it was traced on (max abs difference <= PARITY_ATOL). The
weights' fingerprint stays the model's (an index embedded by either engine is searched by the same model);
the `engine` attribute keys the embedding cache and `align embed`'s manifest apart, so a run never mixes the
two engines' vectors.

Each encoder is exported once per input shape ([C, H, W] or [n_mels, frames]: the batch axis is dynamic) into
a temporary folder that lives as long as the wrapper, through the TorchScript exporter (`dynamo=False`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from align.errors import AlignError, ConfigError
from align.registry import Registry
from align.towers.onnx_trace import export_torchscript, onnx_tracing

ENGINES: Registry = Registry("engine")       # name -> wrap(model, device, precision) -> model
PARITY_ATOL = 1e-4                           # on L2-normalised outputs, as `align export --format onnx` checks
MEDIA_ENCODERS = {"image": "encode_image", "audio": "encode_audio"}


class _Encoder(nn.Module):
    """x -> model.encode_<modality>(x): the one method the exporter traces."""

    def __init__(self, model, modality: str):
        super().__init__()
        if isinstance(model, nn.Module):
            self.model = model                   # its weights become the graph's named initializers
        self.fn = getattr(model, MEDIA_ENCODERS[modality])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _export(model, modality: str, x: torch.Tensor, path: str) -> None:
    """Trace model.encode_<modality> on x [B, ...] into path (dynamic batch axis; align.towers.onnx_trace)."""
    # the tracer refuses weights that require grad unless they are the traced module's own parameters
    # (a wrapper that is not an nn.Module): no grad for the export, restored after
    params = list(model.parameters()) if callable(getattr(model, "parameters", None)) else []
    grad = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        with onnx_tracing(), torch.no_grad():
            export_torchscript(_Encoder(model, modality).eval(), x, path)
    except Exception as e:  # noqa: BLE001  any tracing/export failure is one line naming the way out
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise AlignError(f"--engine onnxruntime: cannot export the {modality} encoder of "
                         f"{getattr(model, 'name', '?')!r} to ONNX ({msg}); use --engine torch") from None
    finally:
        for p, g in zip(params, grad):
            p.requires_grad_(g)


class OnnxRuntimeModel:
    """A benchmark model whose image/audio encoders run in onnxruntime; everything else is the wrapped model's.

    Same interface as the model (modalities, tokenize, encode_text, transforms, name, fingerprint(),
    eval/train); encode_image / encode_audio differ, and `engine` names the runtime (embedding caches and
    `align embed` outputs record it, so the two engines' vectors are never mixed)."""

    engine = "onnxruntime"

    def __init__(self, model, threads: int = 0):
        import onnxruntime  # noqa: F401  fail here, with the install line, rather than on the first batch
        self._model = model
        self._threads = threads or torch.get_num_threads()
        self._sessions: Dict[Tuple[str, Tuple[int, ...]], object] = {}
        self._dir = tempfile.mkdtemp(prefix="align-onnx-")
        weakref.finalize(self, shutil.rmtree, self._dir, True)   # the exports go with the wrapper
        self.parity: Dict[str, float] = {}                       # "image 3x224x224" -> max abs diff at export

    def __getattr__(self, name):                   # everything not defined here is the wrapped model's
        try:
            model = self.__dict__["_model"]
        except KeyError:                           # not yet initialised (copy, pickle)
            raise AttributeError(name) from None
        return getattr(model, name)

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._run("image", x, normalize)

    def encode_audio(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._run("audio", x, normalize)

    def _session(self, modality: str, x: torch.Tensor):
        key = (modality, tuple(x.shape[1:]))
        sess = self._sessions.get(key)
        if sess is not None:
            return sess
        import onnxruntime as ort
        path = os.path.join(self._dir, f"{modality}-{'x'.join(map(str, key[1]))}.onnx")
        _export(self._model, modality, x[:2], path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        # parity on the real batch it will encode (up to 4 rows), against the torch encoder
        probe = x[:4]
        with torch.no_grad():
            ref = torch.nn.functional.normalize(getattr(self._model, MEDIA_ENCODERS[modality])(probe).float(), dim=-1)
        got = torch.nn.functional.normalize(torch.from_numpy(sess.run(None, {"input": probe.numpy()})[0]), dim=-1)
        diff = float((got - ref).abs().max())
        if not diff <= PARITY_ATOL:
            raise AlignError(f"--engine onnxruntime: the exported {modality} encoder differs from torch by "
                             f"{diff:.3g} (> {PARITY_ATOL}); use --engine torch")
        self.parity[f"{modality} {'x'.join(map(str, key[1]))}"] = diff
        self._sessions[key] = sess
        return sess

    def _run(self, modality: str, x: torch.Tensor, normalize: bool) -> torch.Tensor:
        if modality not in self._model.modalities:
            return getattr(self._model, MEDIA_ENCODERS[modality])(x, normalize=normalize)  # its own error
        x = x.detach().to("cpu", torch.float32).contiguous()
        z = self._session(modality, x).run(None, {"input": x.numpy()})[0]     # [B, E] float32
        z = torch.from_numpy(np.ascontiguousarray(z))
        return torch.nn.functional.normalize(z, dim=-1) if normalize else z


@ENGINES.register("torch")
def torch_engine(model, device: str = "cpu", precision: str = "fp32"):
    return model


@ENGINES.register("onnxruntime")
def onnxruntime_engine(model, device: str = "cpu", precision: str = "fp32"):
    params = model.parameters() if callable(getattr(model, "parameters", None)) else ()
    device = device if torch.device(device).type != "cpu" else str(next((p.device for p in params), "cpu"))
    if torch.device(device).type != "cpu":
        raise ConfigError(f"--engine onnxruntime runs on the CPU (its CPU provider); this run's device is "
                          f"{device}: use --engine torch on a GPU, or --device cpu")
    if precision != "fp32":
        raise ConfigError(f"--engine onnxruntime encodes in fp32; drop --precision {precision} or use --engine torch")
    try:
        return OnnxRuntimeModel(model)
    except ImportError:
        raise ConfigError("--engine onnxruntime needs onnxruntime: pip install 'align-clip[export]'") from None


def with_engine(model, engine: str = "torch", device: str = "cpu", precision: str = "fp32"):
    """The model wrapped for `engine` (a name in ENGINES); --engine torch returns it unchanged."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: use one of {', '.join(ENGINES.names())}")
    if getattr(model, "engine", "torch") == engine:
        return model                               # already wrapped (a model passed on with its engine)
    return ENGINES.get(engine)(model, device=device, precision=precision)
