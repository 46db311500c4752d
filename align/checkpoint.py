"""Checkpoints: safetensors and JSON only, written atomically, loaded safely.

A checkpoint is a directory `RUN/checkpoints/step-00000100/`:
    model.safetensors      model state dict
    optim.safetensors      optimizer tensors (flattened) ; optim.json: the rest
    rng.safetensors        torch CPU/CUDA generator states
    state.json             step, epoch, data position, python/numpy RNG, scheduler, scaler, counters
It is written under a temporary name and renamed, so a kill during the write
leaves the previous checkpoint as the newest complete one. Nothing here
unpickles: `load_weights` refuses a pickle that carries code.
"""
import json
import os
import random
import re
import shutil
from typing import Dict, List, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from align.errors import AlignError

CKPT_RE = re.compile(r"^step-(\d{8})$")


# -- user-facing weight loading --------------------------------------------------------------
def load_weights(path: str) -> Dict[str, torch.Tensor]:
    """Loads a state dict from safetensors, or from a torch file with weights_only=True."""
    if not os.path.exists(path):
        raise AlignError(f"no such checkpoint: {path}")
    if path.endswith(".safetensors"):
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError and friends: the file wants to run code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AlignError(f"refused to load {path}: it is not a plain tensor checkpoint (weights_only load failed: "
                         f"{first[:200]}); align loads only safetensors or weights-only torch files") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AlignError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


# -- optimizer flattening -------------------------------------------------------------------
def _flatten_optim(sd: dict):
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
                meta["state"][str(idx)][k] = "__tensor__"
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _unflatten_optim(tensors: dict, meta: dict) -> dict:
    state = {}
    for idx, st in meta["state"].items():
        state[int(idx)] = {k: (tensors[f"{idx}.{k}"] if v == "__tensor__" else v) for k, v in st.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


# -- RNG ------------------------------------------------------------------------------------
def rng_state() -> (dict, dict):
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    npst = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]}
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


# -- save / find / load ---------------------------------------------------------------------
def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(ckpt_dir: str, name: str, model_sd: dict, optimizer=None, state: Optional[dict] = None,
                    rank: int = 0) -> str:
    """Writes `ckpt_dir/name/` atomically; RNG files are per rank (rng-{rank}.*)."""
    final = os.path.join(ckpt_dir, name)
    tmp = os.path.join(ckpt_dir, f".{name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in model_sd.items()}, os.path.join(tmp, "model.safetensors"))
        if optimizer is not None:
            t, meta = _flatten_optim(optimizer.state_dict())
            save_file(t, os.path.join(tmp, "optim.safetensors"))
            _write_json(os.path.join(tmp, "optim.json"), meta)
        rt, rmeta = rng_state()
        save_file(rt, os.path.join(tmp, "rng-0.safetensors"))
        _write_json(os.path.join(tmp, "state.json"), dict(state or {}, rng=rmeta))
        old = None
        if os.path.exists(final):             # replacing e.g. "best": move the old aside first
            old = os.path.join(ckpt_dir, f".{name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)                # the atomic step
        if old:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_rank_state(final: str, rank: int, state: dict) -> None:
    """Non-zero ranks add their own RNG and data-stream state to a finished checkpoint (after a barrier)."""
    rt, rmeta = rng_state()
    save_file(rt, os.path.join(final, f".rng-{rank}.tmp"))
    os.replace(os.path.join(final, f".rng-{rank}.tmp"), os.path.join(final, f"rng-{rank}.safetensors"))
    _write_json(os.path.join(final, f"rank-{rank}.json"), dict(state, rng=rmeta))


def list_checkpoints(ckpt_dir: str) -> List[str]:
    """Complete step checkpoints, oldest first (temporary dirs are ignored)."""
    if not os.path.isdir(ckpt_dir):
        return []
    names = sorted(n for n in os.listdir(ckpt_dir) if CKPT_RE.match(n)
                   and os.path.isfile(os.path.join(ckpt_dir, n, "state.json")))
    return [os.path.join(ckpt_dir, n) for n in names]


def prune_checkpoints(ckpt_dir: str, keep_last: int) -> None:
    for path in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str, model=None, optimizer=None, rank: int = 0, restore_rng: bool = True) -> dict:
    """Restores what is given from checkpoint dir `path`; returns its state dict (step, epoch, ...)."""
    if not os.path.isfile(os.path.join(path, "state.json")):
        raise AlignError(f"{path}: not a complete align checkpoint (state.json missing)")
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    if rank > 0:                              # this rank's own data position and RNG
        rank_file = os.path.join(path, f"rank-{rank}.json")
        if not os.path.isfile(rank_file):
            raise AlignError(f"{path}: no state for rank {rank} (saved with fewer processes?)")
        with open(rank_file) as f:
            state.update(json.load(f))
    if model is not None:
        missing, unexpected = model.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=False)
        if missing or unexpected:
            raise AlignError(f"{path}: checkpoint does not fit the recipe's model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if optimizer is not None and os.path.isfile(os.path.join(path, "optim.json")):
        with open(os.path.join(path, "optim.json")) as f:
            meta = json.load(f)
        optimizer.load_state_dict(_unflatten_optim(load_file(os.path.join(path, "optim.safetensors")), meta))
    if restore_rng:
        set_rng_state(load_file(os.path.join(path, f"rng-{rank}.safetensors")), state["rng"])
    return state
