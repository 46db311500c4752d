"""Checkpoints: safetensors and JSON only, written atomically, loaded safely.

A checkpoint is a directory `RUN/checkpoints/step-00000100/`:
    model.safetensors      model state dict
    ema.safetensors        train.ema: the weight average (align.train.ema), the model align.load reads
    optim.safetensors      optimizer tensors (flattened) ; optim.json: the rest
    rng.safetensors        torch CPU/CUDA generator states
    state.json             step, epoch, data position, python/numpy RNG, scheduler, scaler, counters
    rng-R.safetensors, rank-R.json   rank R's RNG and data position (R > 0)
With `train.sharding: fsdp` the model and optimizer (and train.ema's average, under "ema.") are a
torch.distributed.checkpoint (DCP) directory `dcp/` instead: every rank writes its own shards of
them, and DCP reshards them when a run resumes at another world size.

Every rank writes into `.step-N.tmp/`; after a barrier rank 0 writes state.json last and
renames the directory, so a kill during the write (on any rank) leaves the previous
checkpoint as the newest complete one. Nothing here unpickles code: `load_weights`
refuses a pickle that carries code, and DCP's metadata file is read with an unpickler
that admits only DCP's own metadata classes.
"""
import io
import json
import logging
import os
import pickle
import random
import shutil
from typing import Callable, Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from align.errors import AlignError
from align.open_clip_files import load_error
from align.train import hooks
from align.train.manifest import write_manifest
from align.train.rundir import (DCP_DIR, DCP_METADATA, EMA, MODEL, OPTIM, OPTIM_META, RANK_FILE_RE, STATE,
                                is_checkpoint_dir, is_dcp_store, is_sharded_checkpoint, list_checkpoints, old_name,
                                STEP_RE, partial_writes, rank_file, read_state, rng_file, tmp_name, weights_path)
from align.train.storage import newest_step_checkpoint
from align.writes import StorageError, is_storage_error

# Names other modules import from here (the file layout itself is align.train.rundir's).
__all__ = ["is_checkpoint_dir", "weights_path", "list_checkpoints", "load_weights", "load_dcp_tensors",
           "load_dcp_weights", "load_sharded_ema", "save_checkpoint", "load_checkpoint", "prune_checkpoints",
           "data_states", "check_state_fits", "load_model_state"]

log = logging.getLogger("align.train")


# -- DCP: metadata read without running code, full weights gathered in one process ------------
class _MetadataUnpickler(pickle.Unpickler):
    """DCP writes `.metadata` with pickle; admit only its metadata classes, torch dtypes/sizes, containers."""

    SAFE_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "slice", "bytes", "bytearray", "object", "int",
                     "float", "str", "bool", "complex"}

    def find_class(self, module, name):
        import importlib

        ok = ((module == "torch.distributed.checkpoint.metadata"          # its dataclasses and enums only
               and isinstance(getattr(importlib.import_module(module), name, None), type))
              or (module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo")
              or (module == "builtins" and name in self.SAFE_BUILTINS)
              or (module == "collections" and name == "OrderedDict")
              or (module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)))
              or (module == "torch.serialization" and name == "_get_layout")        # a layout by its name
              or (module == "pathlib" and name in ("Path", "PosixPath", "PurePosixPath", "WindowsPath")))
        if not ok:
            raise pickle.UnpicklingError(f"DCP metadata wants {module}.{name}, which align does not load")
        return super().find_class(module, name)


def _safe_reader(path: str):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")
            name = DCP_METADATA if rank is None else f"__{rank}{DCP_METADATA}"
            try:
                with open(os.path.join(path, name), "rb") as f:
                    meta = _MetadataUnpickler(io.BytesIO(f.read())).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
                raise AlignError(f"{path}: refused to read the DCP metadata ({e or type(e).__name__})") from None
            except OSError as e:
                raise AlignError(f"{os.path.join(path, name)}: cannot read the DCP metadata ({e.strerror or e}); "
                                 f"not a complete DCP checkpoint") from None
            if getattr(meta, "storage_meta", None) is None:
                meta.storage_meta = StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    return SafeReader(path)


def _check_dcp_files(store: str, meta) -> None:
    """One AlignError line naming the first shard file of DCP store `store` that its metadata reads past the end
    of (a file cut short or missing): DCP itself would fail with a traceback per rank, naming no file."""
    need: Dict[str, int] = {}
    for info in (getattr(meta, "storage_data", None) or {}).values():
        rel = getattr(info, "relative_path", None)
        if rel is not None:
            need[rel] = max(need.get(rel, 0), int(info.offset) + int(info.length))
    for rel, size in sorted(need.items()):
        f = os.path.join(store, rel)
        have = os.path.getsize(f) if os.path.isfile(f) else None
        if have is None or have < size:
            raise AlignError(f"{f}: " + ("missing" if have is None else f"{have:,} bytes") + f", the DCP metadata "
                             f"reads {size:,} bytes from it (damaged or cut short)")


def _dcp_load(want: dict, store: str, **kw) -> None:
    """dcp.load into `want` from `store`, its files checked first; a failure is one AlignError line naming the
    store and the first rank's error, not DCP's CheckpointException (a BaseException with a traceback a rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    _check_dcp_files(store, _safe_reader(store).read_metadata())
    try:
        dcp.load(want, storage_reader=_safe_reader(store), **kw)
    except CheckpointException as exn:
        rank, (err, _) = sorted(exn.failures.items())[0]
        raise AlignError(f"{store}: cannot read the DCP checkpoint (rank {rank}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no message'})") from None


def load_dcp_tensors(path: str, prefix: str = "model.") -> Dict[str, torch.Tensor]:
    """Every full tensor of a DCP checkpoint dir whose key starts with `prefix` (prefix removed), gathered
    from all ranks' shards in this process (no process group needed). Tensors only: nothing unpickled."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = _safe_reader(path).read_metadata()
    flat = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.state_dict_metadata.items()
            if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    if flat:
        _dcp_load(flat, path, no_dist=True)
    return {k[len(prefix):]: v for k, v in flat.items()}


def load_dcp_weights(path: str) -> Dict[str, torch.Tensor]:
    """The full model weights of a DCP checkpoint dir, with the plain AlignModel's shapes: its weight average
    ("ema.", train.ema) when it holds one, as ema.safetensors is preferred beside model.safetensors."""
    from align.train.sharding import unshard_shapes

    sd = load_dcp_tensors(path, "ema.") or load_dcp_tensors(path, "model.")
    if not sd:
        raise AlignError(f"{path}: DCP checkpoint holds no model weights")
    return unshard_shapes(sd)


# -- user-facing weight loading --------------------------------------------------------------
def load_weights(path: str) -> Dict[str, torch.Tensor]:
    """Loads a state dict from safetensors, or from a torch file with weights_only=True."""
    if not os.path.exists(path):
        raise AlignError(f"no such checkpoint: {path}")
    if os.path.isdir(path) and is_dcp_store(path):
        return load_dcp_weights(path)
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, a pickle that wants to run code: one line naming the file
        raise AlignError(f"refused to load {path}: {load_error(path, e)}" if not path.endswith(".safetensors")
                         else load_error(path, e)) from None
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
        # by device index: sorted names put torch_cuda_10 before torch_cuda_2 (a node of 11 or more GPUs)
        states = [tensors[k] for k in sorted((k for k in tensors if k.startswith("torch_cuda_")),
                                              key=lambda k: int(k.rsplit("_", 1)[1]))]
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


def _unwrap_optim(optimizer):
    return getattr(optimizer, "optimizer", optimizer)   # Accelerate's AcceleratedOptimizer wraps torch's


def save_checkpoint(ckpt_dir: str, name: str, model_sd: Optional[dict], optimizer=None, state: Optional[dict] = None,
                    rank: int = 0, *, barrier: Optional[Callable[[], None]] = None, rank_state: Optional[dict] = None,
                    sharded=None, ema_sd: Optional[dict] = None, agree: Optional[Callable[[int], int]] = None) -> str:
    """Writes `ckpt_dir/name/`, visible only once complete. Every rank calls it (collective when `barrier`).

    model_sd / optimizer: rank 0's full model state dict and optimizer (DDP, one process).
    ema_sd: the weight average (train.ema): rank 0's, written as ema.safetensors; under `sharded`, every
    rank's DTensor shards, written into the DCP store as "ema.".
    sharded: the (FSDP model, optimizer) pair instead: every rank writes its shards through DCP.
    state: rank 0's counters and data position; rank_state: rank R>0's own (data position).
    agree: the MAX of an int over the ranks (a barrier too). A rank whose part fails (a full disk it alone
    sees) says so there instead of leaving the others waiting; rank 0 then removes the partial dir, the
    failed rank raises its error and the others one line naming it.
    """
    barrier = barrier or (lambda: None)
    agree = agree or (lambda code: (barrier(), code)[1])
    final = os.path.join(ckpt_dir, name)
    tmp = os.path.join(ckpt_dir, tmp_name(name))
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    code, own = 0, None
    try:
        rmeta = _write_part(tmp, model_sd, optimizer, rank, rank_state, sharded, ema_sd)
        hooks.full_disk_in_save(name, rank)
    except Exception as exn:            # said after every rank has done its part (below)
        code, own = 2 * (rank + 1) + int(is_storage_error(exn)), exn
    hooks.kill_in_save(name, rank)            # the kill-mid-write test: a rank > 0 dies with its part written
    failed = agree(code)
    if failed:
        if rank == 0:                         # rank 0 made the dir; only it removes it, once all are done
            shutil.rmtree(tmp, ignore_errors=True)
        if own is not None:
            raise own
        other = failed // 2 - 1
        kind = StorageError if failed % 2 else AlignError
        raise kind(f"{final}: rank {other} could not write its part of the checkpoint (its own line says why); "
                   f"partial files removed; the newest intact checkpoint is {newest_step_checkpoint(ckpt_dir)}")
    if rank == 0:
        # `sharded` is what is_sharded_checkpoint reads back (align.load, export, init_from, resume)
        _write_json(os.path.join(tmp, STATE), dict(state or {}, rng=rmeta, sharded=sharded is not None))
        write_manifest(tmp)                   # last: the sizes and hashes resume and load verify
        old = None
        if os.path.exists(final):             # replacing e.g. "best": move the old aside first
            old = os.path.join(ckpt_dir, old_name(name))
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)                # the atomic step
        if old:
            shutil.rmtree(old, ignore_errors=True)
        drop_older_partials(ckpt_dir, name)
    barrier()
    return final


def drop_older_partials(ckpt_dir: str, name: str) -> None:
    """After step checkpoint `name` is complete: the interrupted writes of older steps (`.step-N.tmp`, which a run
    with another checkpoint_every would never write again) are removed, named in one line. Others stay."""
    m = STEP_RE.match(name)
    older = [p for p in partial_writes(ckpt_dir) if m and STEP_RE.match(os.path.basename(p)[1:-len(".tmp")])
             and os.path.basename(p)[1:-len(".tmp")] < name]
    for p in older:
        shutil.rmtree(p, ignore_errors=True)
    if older:
        log.warning("removed %d interrupted checkpoint write(s) older than %s (%s; not checkpoints)", len(older),
                    name, ", ".join(os.path.basename(p) for p in older))


def _write_part(tmp: str, model_sd, optimizer, rank: int, rank_state, sharded, ema_sd) -> dict:
    """This rank's files of a checkpoint in its `.tmp` dir (save_checkpoint); -> this rank's RNG meta."""
    if sharded is not None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        from torch.distributed.checkpoint.api import CheckpointException

        msd, osd = get_state_dict(sharded[0], _unwrap_optim(sharded[1]))
        try:
            dcp.save({"model": msd, "optim": osd, **({"ema": ema_sd} if ema_sd is not None else {})},
                     checkpoint_id=os.path.join(tmp, DCP_DIR))
        except CheckpointException as exn:    # a BaseException, raised on every rank when any rank's part failed:
            if rank in exn.failures:          # this rank's own error (a full disk: one line); the others learn
                raise exn.failures[rank][0] from None     # of it from save_checkpoint's agreement
    elif rank == 0:
        for sd, name in ((model_sd, MODEL), (ema_sd, EMA)):
            if sd is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, os.path.join(tmp, name))
        if optimizer is not None:
            t, meta = _flatten_optim(optimizer.state_dict())
            save_file(t, os.path.join(tmp, OPTIM))
            _write_json(os.path.join(tmp, OPTIM_META), meta)
    rt, rmeta = rng_state()
    save_file(rt, os.path.join(tmp, rng_file(rank)))
    if rank > 0:
        _write_json(os.path.join(tmp, rank_file(rank)), dict(rank_state or {}, rng=rmeta))
    return rmeta


def prune_checkpoints(ckpt_dir: str, keep_last: int) -> None:
    for path in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def data_states(path: str, state: dict) -> list:
    """The data position of every rank that wrote checkpoint `path` (index = rank), for elastic resume."""
    out = [state.get("data")]
    world = state.get("world_size")          # older checkpoints: one rank-R.json per rank R > 0
    if world is None:
        world = 1 + sum(1 for n in os.listdir(path) if RANK_FILE_RE.match(n))
    for r in range(1, int(world)):
        f = os.path.join(path, rank_file(r))
        if not os.path.isfile(f):
            raise AlignError(f"{path}: no state for rank {r} of the {state.get('world_size')} that wrote it")
        with open(f) as fh:
            out.append(json.load(fh).get("data"))
    return out


def check_state_fits(own: Dict[str, torch.Tensor], saved: Dict[str, torch.Tensor], what: str, hint: str) -> None:
    """One AlignError line starting with `what` when a saved tensor has another shape than own's of the same name
    (an output_dir holding a run of another architecture, say; torch's load_state_dict would raise a multi-line
    RuntimeError; `hint` says what to do), or when names are missing or unexpected."""
    other = [k for k, v in saved.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if other:
        k = other[0]
        raise AlignError(f"{what} ({len(other)} tensor(s) of another shape; first {k}: {list(saved[k].shape)} "
                         f"saved, {list(own[k].shape)} in the model); {hint}")
    missing, unexpected = [k for k in own if k not in saved], [k for k in saved if k not in own]
    if missing or unexpected:
        raise AlignError(f"{what} (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_model_state(model, saved: Dict[str, torch.Tensor], what: str, hint: str) -> None:
    """saved -> model, every tensor by name, once check_state_fits agrees."""
    check_state_fits(model.state_dict(), saved, what, hint)
    model.load_state_dict(saved)


def dcp_holds_average(store: str) -> bool:
    """Whether the DCP store `store` (a checkpoint's dcp/) holds train.ema's weight average (its "ema." tensors)."""
    return any(k.startswith("ema.") for k in _safe_reader(store).read_metadata().state_dict_metadata)


def load_sharded_ema(path: str, avg: Dict[str, torch.Tensor]) -> bool:
    """Collective (train.sharding=fsdp): reads checkpoint `path`'s weight average into `avg` in place (this
    rank's DTensor shards; DCP reshards to this run's world size). False when the checkpoint has none."""
    store = os.path.join(path, DCP_DIR)
    if not dcp_holds_average(store):
        return False
    _dcp_load({"ema": avg}, store)
    return True


def load_checkpoint(path: str, model=None, optimizer=None, rank: int = 0, restore_rng: bool = True,
                    sharded: bool = False) -> dict:
    """Restores what is given from checkpoint dir `path`; returns its state dict (step, epoch, ...).

    sharded: `model` is FSDP-sharded; the checkpoint must then be a DCP one (written with sharding=fsdp),
    resharded by DCP to this run's world size. A rank the checkpoint has no file for (it was written by
    fewer processes) gets rank 0's counters and keeps its own RNG.
    """
    state = read_state(path)
    if state is None:
        raise AlignError(f"{path}: not a complete align checkpoint ({STATE} missing or unreadable)")
    is_dcp = is_sharded_checkpoint(path, state)          # before rank R's own file is merged in
    own_rng = rank == 0
    if rank > 0:                              # this rank's own data position and RNG
        own = os.path.join(path, rank_file(rank))
        if os.path.isfile(own):
            with open(own) as f:
                state.update(json.load(f))
            own_rng = True
    if model is not None and is_dcp != sharded:
        raise AlignError(f"{path}: written with train.sharding={'fsdp' if is_dcp else 'ddp'}; "
                         f"resume it with the same train.sharding")
    if model is not None and sharded:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        opt = _unwrap_optim(optimizer) if optimizer is not None else None
        msd, osd = get_state_dict(model, opt) if opt is not None else (get_state_dict(model, [])[0], None)
        want = {"model": msd, **({"optim": osd} if opt is not None else {})}
        _dcp_load(want, os.path.join(path, DCP_DIR))
        set_state_dict(model, opt if opt is not None else [], model_state_dict=want["model"],
                       optim_state_dict=want.get("optim", {}))
    elif model is not None:
        load_model_state(model, load_file(os.path.join(path, MODEL)),
                         f"{path}: checkpoint does not fit the recipe's model", "train into another output_dir")
    if optimizer is not None and not sharded and os.path.isfile(os.path.join(path, OPTIM_META)):
        with open(os.path.join(path, OPTIM_META)) as f:
            meta = json.load(f)
        optimizer.load_state_dict(_unflatten_optim(load_file(os.path.join(path, OPTIM)), meta))
    if restore_rng and own_rng:
        set_rng_state(load_file(os.path.join(path, rng_file(rank))), state["rng"])
    return state
