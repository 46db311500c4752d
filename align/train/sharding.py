"""Sharded data parallelism with torch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

    model = shard_model(model, ShardingConfig(...))   # in every process, after init_process_group

`train.sharding: fsdp` shards every transformer block of every tower as its own unit
(its parameters are all-gathered just before the block runs and freed after, when
`reshard_after_forward`), then the root model, which holds what is left: patch and
token embeddings, projections, norms and the temperature. Parameters become DTensors
sharded on dim 0 across the ranks. The same code runs over NCCL on GPUs and over gloo
on CPU processes (its all_gather_into_tensor / reduce_scatter_tensor are what FSDP2
uses; gloo has both in torch 2.14), which is how it is tested here.

Which modules are blocks is an explicit registry of classes, not a guess from names.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from align.errors import AlignError

# Block classes, each sharded as its own FSDP unit: (module, class name). Resolved lazily so
# that a missing optional package (timm, transformers) only removes its entries.
BLOCK_CLASSES: Tuple[Tuple[str, str], ...] = (
    ("open_clip.transformer", "ResidualAttentionBlock"),
    ("open_clip.transformer", "CustomResidualAttentionBlock"),
    ("timm.models.vision_transformer", "Block"),
    ("transformers.models.bert.modeling_bert", "BertLayer"),
    ("transformers.models.roberta.modeling_roberta", "RobertaLayer"),
    ("transformers.models.xlm_roberta.modeling_xlm_roberta", "XLMRobertaLayer"),
    ("transformers.models.distilbert.modeling_distilbert", "TransformerBlock"),
    ("transformers.models.clip.modeling_clip", "CLIPEncoderLayer"),
    ("transformers.models.wav2vec2.modeling_wav2vec2", "Wav2Vec2EncoderLayer"),
    ("transformers.models.wav2vec2.modeling_wav2vec2", "Wav2Vec2EncoderLayerStableLayerNorm"),
    ("transformers.models.whisper.modeling_whisper", "WhisperEncoderLayer"),
    ("transformers.models.hubert.modeling_hubert", "HubertEncoderLayer"),
    ("transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer", "ASTLayer"),
)


# AlignModel's 0-dim parameters, stored as [1] while sharded; full-weight state dicts use the 0-dim shape.
SCALARS = ("logit_scale", "logit_bias")


def unshard_shapes(sd: dict) -> dict:
    """A full state dict gathered from a sharded model or checkpoint -> the plain AlignModel's shapes."""
    return {k: (v.reshape(()) if k in SCALARS and v.numel() == 1 else v) for k, v in sd.items()}


def block_classes() -> tuple:
    import importlib
    import sys

    out = []
    for mod, name in BLOCK_CLASSES:
        # Only packages already imported by the towers: a block class of a library the model does not use
        # cannot be in it, and importing e.g. all of transformers here would cost seconds.
        if mod.split(".")[0] not in sys.modules:
            continue
        try:
            out.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            continue
    return tuple(out)


def blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every registered block class in `model`, outermost first, none nested in another."""
    classes = block_classes()
    found: List[Tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if classes and isinstance(mod, classes) and not any(name.startswith(p + ".") for p, _ in found):
            found.append((name, mod))
    return found


def mp_policy(param_dtype: str, reduce_dtype: str):
    """FSDP2 mixed precision: parameters all-gathered (and the forward run) in param_dtype, gradients
    reduce-scattered in reduce_dtype; the sharded master weights and the optimizer stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return MixedPrecisionPolicy(param_dtype=dt[param_dtype], reduce_dtype=dt[reduce_dtype])


def shard_model(model: nn.Module, *, reshard_after_forward: bool = True, param_dtype: str = "fp32",
                reduce_dtype: str = "fp32", device_type: str = "cpu") -> nn.Module:
    """Applies fully_shard to each block, then to the root, in place; returns the model (same object)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_available():
        raise AlignError("train.sharding=fsdp needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        # One process (e.g. resuming a sharded run on one machine): a group of one, in memory.
        dist.init_process_group("gloo" if device_type == "cpu" else "nccl", store=dist.HashStore(), rank=0,
                                world_size=1)
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    kw = dict(mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy(param_dtype, reduce_dtype))
    for name, p in list(model.named_parameters()):
        # FSDP2 shards on dim 0 and refuses 0-dim parameters (logit_scale, logit_bias): make them [1].
        # `[1].exp()` broadcasts like the scalar; checkpoints map the shape back (SCALARS).
        if p.ndim == 0:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr,
                    nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))
    for _, block in blocks(model):
        fully_shard(block, **kw)
    # The root: embeddings, projections, norms and the temperature.
    fully_shard(model, **kw)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value on every rank (a DTensor is gathered; a plain tensor is returned as is)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def unsharded_copy(model: nn.Module, model_cfg, is_main: bool) -> nn.Module:
    """Collective: a plain (unsharded) copy of a sharded AlignModel on the main process, for evaluation
    there (a sharded model's forward needs every rank). Other ranks get `model` back."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from align.model import build_model
    from align.towers import drop_pretrained

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return model
    import copy
    cfg = copy.deepcopy(model_cfg)
    for m, t in cfg.towers.items():
        drop_pretrained(t, m)            # the weights come from the sharded model, not from a download
    plain = build_model(cfg)
    plain.load_state_dict(unshard_shapes(sd))
    plain.config = getattr(model, "config", {})
    return plain
