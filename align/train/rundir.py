"""The layout of a run directory, named in one place, and how to find a run, checkpoint or export from a path.

    RUN/                              output_dir of a recipe
      config.yaml                     CONFIG       the recipe as trained
      metrics.jsonl                   METRICS      one JSON row per logged step (read by the loss plot and tests)
      eval.jsonl                      EVAL         one JSON row per val-set evaluation
      summary.json                    SUMMARY      the figures of the finished run
      loss.png                        LOSS_PLOT    the loss curve
      tb/                             TB_DIR       TensorBoard events
      val_split/                      VAL_SPLIT    data.val_split's held-out samples as a CLIP_benchmark-layout val set
      checkpoints/                    CHECKPOINTS
        step-00000100/                step_name(100); `best/` (BEST) is the best eval so far
          state.json                  STATE        counters, data position, RNG, schedule; `sharded`: DCP or not
          model.safetensors           MODEL        the model (unsharded runs)
          ema.safetensors             EMA          train.ema: the weight average, the model align.load reads
          optim.safetensors           OPTIM        optimizer tensors; optim.json (OPTIM_META): the rest
          dcp/                        DCP_DIR      model + optimizer (+ "ema.") as DCP shards (train.sharding: fsdp)
          rng-R.safetensors           rng_file(R)  rank R's RNG
          rank-R.json                 rank_file(R) rank R's data position and RNG (R > 0)
        .step-00000100.tmp/           tmp_name()   being written; never read
        .best.old/                    old_name()   a replaced copy while its successor is moved in
    EXPORT/                           `align export`: align_config.json (EXPORT_CONFIG) + align_model.safetensors

`write_config` writes RUN/config.yaml (a resume with other settings keeps the old one beside it).
`locate(path)` answers "which model is this" for align.load, export and model.init_from alike: a run dir
(its newest intact complete checkpoint; of a run in progress, its last complete one, named in one line), a
checkpoint dir (plain or DCP) or an export. `is_sharded_checkpoint` is the one
test of whether a checkpoint holds DCP shards: it reads the flag state.json records.
"""
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import List, Optional

from align.errors import AlignError
from align.writes import write_text_whole

log = logging.getLogger("align.train")

# -- the run dir ---------------------------------------------------------------------------------
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVAL = "eval.jsonl"
SUMMARY = "summary.json"
LOSS_PLOT = "loss.png"
TB_DIR = "tb"
VAL_SPLIT = "val_split"
CHECKPOINTS = "checkpoints"

# -- a checkpoint dir ----------------------------------------------------------------------------
BEST = "best"
STATE = "state.json"
MODEL = "model.safetensors"
EMA = "ema.safetensors"              # train.ema's weight average (align.train.ema); preferred by weights_path
OPTIM = "optim.safetensors"
OPTIM_META = "optim.json"
DCP_DIR = "dcp"
DCP_METADATA = ".metadata"           # what makes a directory a DCP store (torch.distributed.checkpoint)
STEP_RE = re.compile(r"^step-(\d{8})$")
RANK_FILE_RE = re.compile(r"^rank-(\d+)\.json$")

# -- an export -----------------------------------------------------------------------------------
EXPORT_CONFIG = "align_config.json"  # the recipe the model came from (self-contained)
EXPORT_WEIGHTS = "align_model.safetensors"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def tmp_name(name: str) -> str:
    """Where checkpoint `name` is written before it appears under its name."""
    return f".{name}.tmp"


def old_name(name: str) -> str:
    """Where a replaced checkpoint (e.g. `best`) waits while the new one is moved in."""
    return f".{name}.old"


def rng_file(rank: int) -> str:
    return f"rng-{rank}.safetensors"


def rank_file(rank: int) -> str:
    return f"rank-{rank}.json"


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


# -- checkpoints -----------------------------------------------------------------------------------
def list_checkpoints(ckpt_dir: str) -> List[str]:
    """Complete step checkpoints in `ckpt_dir`, oldest first (temporary dirs are ignored)."""
    if not os.path.isdir(ckpt_dir):
        return []
    names = sorted(n for n in os.listdir(ckpt_dir) if STEP_RE.match(n)
                   and os.path.isfile(os.path.join(ckpt_dir, n, STATE)))
    return [os.path.join(ckpt_dir, n) for n in names]


def partial_writes(ckpt_dir: str) -> List[str]:
    """The unfinished checkpoint writes (`.NAME.tmp`, tmp_name) in `ckpt_dir`, oldest name first: a save that a kill,
    a full disk or a crash interrupted. Never read as checkpoints; a save of the same name replaces one, and a
    successful step save removes those of older steps (align.train.checkpoint.drop_older_partials)."""
    return _hidden_dirs(ckpt_dir, ".tmp")


def replaced_leftovers(ckpt_dir: str) -> List[str]:
    """The replaced checkpoints (`.NAME.old`, old_name) a kill between save_checkpoint's two renames left behind:
    with NAME missing, the only complete copy of NAME (restore_replaced puts it back at resume)."""
    return _hidden_dirs(ckpt_dir, ".old")


def _hidden_dirs(ckpt_dir: str, suffix: str) -> List[str]:
    if not os.path.isdir(ckpt_dir):
        return []
    return [os.path.join(ckpt_dir, n) for n in sorted(os.listdir(ckpt_dir))
            if n.startswith(".") and n.endswith(suffix) and os.path.isdir(os.path.join(ckpt_dir, n))]


def replaced_name(old: str) -> str:
    """The checkpoint a `.NAME.old` dir (old_name) was the previous copy of: NAME."""
    return os.path.basename(old)[1:-len(".old")]


def restore_replaced(ckpt_dir: str) -> List[str]:
    """Rank 0 at resume: every complete `.NAME.old` whose NAME is missing (a kill between the two renames that
    replace e.g. `best`) is renamed back to NAME, as if the interrupted save had not begun; one line each.
    -> the leftovers kept (NAME present: a stale copy the next save of NAME removes; or not complete)."""
    kept = []
    for old in replaced_leftovers(ckpt_dir):
        final = os.path.join(ckpt_dir, replaced_name(old))
        if not os.path.exists(final) and read_state(old) is not None:
            os.replace(old, final)
            log.warning("restored checkpoint %s from %s (a save that replaces it was interrupted between its two "
                        "renames)", os.path.basename(final), os.path.basename(old))
        else:
            kept.append(old)
    return kept


def say_partial_writes(run_dir: str, found: Optional[str]) -> None:
    """One warning (rank 0's) naming the checkpoint writes a kill or a full disk interrupted, which resume ignores;
    a replaced checkpoint left by a kill is restored (restore_replaced) or, when not needed, named."""
    from align.progress import main_process
    if not main_process():
        return
    kept = restore_replaced(checkpoints_dir(run_dir))
    partial = partial_writes(checkpoints_dir(run_dir))
    if partial:
        log.warning("ignored %d unfinished checkpoint write(s) (%s: a save interrupted by a kill, a full disk or a "
                    "crash; not checkpoints); %s", len(partial), ", ".join(os.path.basename(p) for p in partial),
                    f"resuming from {os.path.basename(found)}" if found else "starting afresh")
    if kept:
        log.warning("left in place %d replaced checkpoint copy(ies) (%s: a kill after its replacement was in place; "
                    "the next save of that name removes it)", len(kept), ", ".join(os.path.basename(p) for p in kept))


def newest_checkpoint(run_dir: str) -> Optional[str]:
    """The newest complete step checkpoint of a run that verifies against its manifest, or None when the
    run has none. A damaged newer one is left in place and named in one warning line; when every
    checkpoint is damaged, AlignError names the newest one's damaged file."""
    return newest_intact(list_checkpoints(checkpoints_dir(run_dir)))


def newest_intact(ckpts: List[str]) -> Optional[str]:
    """The newest of `ckpts` (oldest first) whose files match its manifest (align.train.manifest). The damaged
    newer one is named by rank 0 alone in a launch: every rank resolves resume=auto (and model.init_from) over the
    same files, so each said the same line."""
    from align.progress import main_process
    from align.train.manifest import verify

    first_problem = None
    for ckpt in reversed(ckpts):
        problem = verify(ckpt)
        if problem is None:
            if first_problem and main_process():
                log.warning("checkpoint %s is damaged (%s); using %s instead; the damaged one stays in place "
                            "until this run writes that step again (copy it away to inspect it)", first_problem[0],
                            first_problem[1], ckpt)
            return ckpt
        first_problem = first_problem or (ckpt, problem)
    if first_problem:
        raise AlignError(f"no intact checkpoint: {first_problem[1]}")
    return None


def display_name(path: str) -> str:
    """What to call the model at `path` (a model card's title): the folder's name, and for a checkpoint inside a
    run, the run's name before it ("demo step-00000300", "demo best"), not the checkpoint folder's alone."""
    p = os.path.normpath(os.path.abspath(path))
    parent = os.path.dirname(p)
    if os.path.basename(parent) == CHECKPOINTS and os.path.basename(os.path.dirname(parent)):
        return f"{os.path.basename(os.path.dirname(parent))} {os.path.basename(p)}"
    return os.path.basename(p)


def best_of_run(path: str) -> Optional[tuple]:
    """(the `best` checkpoint dir, its state) of a run dir that kept one (eval.best_metric) and whose files
    verify; None for anything else (a checkpoint dir, an export, a run without one)."""
    from align.train.manifest import verify
    if not os.path.isfile(os.path.join(path, CONFIG)):
        return None
    best = os.path.join(checkpoints_dir(path), BEST)
    state = read_state(best) if os.path.isdir(best) else None
    if state is None:
        return None
    problem = verify(best)
    if problem:
        log.warning("the best checkpoint %s is damaged (%s); using the newest intact step checkpoint", best, problem)
        return None
    return best, state


def read_state(ckpt: str) -> Optional[dict]:
    """state.json of a checkpoint dir, or None when it has none (incomplete) or it is unreadable."""
    try:
        with open(os.path.join(ckpt, STATE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_dcp_store(path: str) -> bool:
    """Whether directory `path` is a DCP store (its `.metadata` file)."""
    return os.path.isfile(os.path.join(path, DCP_METADATA))


def is_sharded_checkpoint(ckpt: str, state: Optional[dict] = None) -> bool:
    """Whether checkpoint dir `ckpt` holds its model as DCP shards (written with train.sharding: fsdp).

    Read from the `sharded` flag save_checkpoint records in state.json (`state`: that file, when already
    read). A checkpoint without the flag (written before it was recorded) is sharded when it has a DCP
    store and no single-file model.
    """
    state = read_state(ckpt) if state is None else state
    if state is not None and "sharded" in state:
        return bool(state["sharded"])
    return is_dcp_store(os.path.join(ckpt, DCP_DIR)) and not os.path.isfile(os.path.join(ckpt, MODEL))


def is_checkpoint_dir(path: str) -> bool:
    """A checkpoint dir: its model as one file or as DCP shards."""
    return os.path.isfile(os.path.join(path, MODEL)) or is_sharded_checkpoint(path)


def weights_path(ckpt: str) -> str:
    """The file (or DCP store) holding a checkpoint's model weights; align.train.checkpoint.load_weights reads
    either. A run with train.ema gives its weight average (resume alone reads the trained weights, MODEL)."""
    if is_sharded_checkpoint(ckpt):
        return os.path.join(ckpt, DCP_DIR)
    ema = os.path.join(ckpt, EMA)
    return ema if os.path.isfile(ema) else os.path.join(ckpt, MODEL)


# -- from a path to a model -------------------------------------------------------------------------
@dataclass
class Located:
    """What a path names. kind: "run", "checkpoint" or "export"; run_dir: None for an export (or a checkpoint
    outside a run); checkpoint: the checkpoint dir (None for an export); weights: the file or DCP store."""
    kind: str
    run_dir: Optional[str]
    checkpoint: Optional[str]
    weights: str

    @property
    def config_path(self) -> Optional[str]:
        if self.kind == "export":
            return os.path.join(os.path.dirname(self.weights), EXPORT_CONFIG)
        return os.path.join(self.run_dir, CONFIG) if self.run_dir else None


def find_run_dir(path: str) -> Optional[str]:
    """The run directory behind a run dir or checkpoint dir (None for an export or anything else)."""
    p = os.path.abspath(path)
    if os.path.isfile(os.path.join(p, CONFIG)):
        return p
    if is_checkpoint_dir(p):
        run = os.path.dirname(os.path.dirname(p))          # RUN/checkpoints/NAME
        return run if os.path.isfile(os.path.join(run, CONFIG)) else None
    return None


HF_TOWERS = ("hf", "hf_image", "hf_audio")


def _absolute_local_dir(name):
    """`local-dir:DIR` with DIR absolute when it is a folder here; anything else as it is."""
    if isinstance(name, str) and name.startswith("local-dir:") and os.path.isdir(name[len("local-dir:"):]):
        return "local-dir:" + os.path.abspath(name[len("local-dir:"):])
    return name


def absolute_model_paths(recipe: dict) -> dict:
    """The recipe dict with the model section's local files as absolute paths (model.open_clip's JSON, a tower's
    config_file, a Hugging Face tower's folder, an open_clip tower's pretrained weights and tokenizer_folder, whose
    tokenizer files a loaded run reads): align.load and export rebuild the towers from RUN/config.yaml,
    from whatever directory they run in."""
    m = recipe.get("model") or {}
    if isinstance(m.get("open_clip"), str) and m["open_clip"].endswith(".json") and os.path.isfile(m["open_clip"]):
        m["open_clip"] = os.path.abspath(m["open_clip"])
    if "open_clip" in m:
        m["open_clip"] = _absolute_local_dir(m["open_clip"])
    configs = [m.get("open_clip")]                    # inline open_clip configs: their HF text folders
    for t in (m.get("towers") or {}).values():
        if isinstance(t.get("config_file"), str) and os.path.isfile(t["config_file"]):
            t["config_file"] = os.path.abspath(t["config_file"])
        if t.get("type") == "open_clip" and "model" in t:
            t["model"] = _absolute_local_dir(t["model"])
        if t.get("type") == "open_clip":        # the tokenizer files beside the weights are read when it loads
            for key in ("pretrained", "tokenizer_folder"):
                value = t.get(key)
                if isinstance(value, str) and os.path.exists(value):
                    t[key] = os.path.abspath(value)
                elif key in t:
                    t[key] = _absolute_local_dir(value)
        if t.get("type") in HF_TOWERS and isinstance(t.get("model"), str) and os.path.isdir(t["model"]):
            t["model"] = os.path.abspath(t["model"])
        configs.append(t.get("config"))
    for text_cfg in (c.get("text_cfg") for c in configs if isinstance(c, dict)):
        for key in ("hf_model_name", "hf_tokenizer_name"):
            if isinstance(text_cfg, dict) and isinstance(text_cfg.get(key), str) and os.path.isdir(text_cfg[key]):
                text_cfg[key] = os.path.abspath(text_cfg[key])
    return recipe


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def write_config(output_dir: str, recipe: dict, is_main: bool, step: int = 0, printer=print) -> None:
    """RUN/config.yaml: `recipe` (align.config.recipe_to_dict's) as trained; align.load and export read it. A run
    resumed at `step` with other settings keeps the config its first steps were trained with as config.step-N.yaml,
    and says which keys changed: the weights' history is not rewritten to claim the new settings."""
    os.makedirs(output_dir, exist_ok=True)
    if not is_main:
        return
    import yaml
    path, new = os.path.join(output_dir, CONFIG), absolute_model_paths(recipe)
    if step and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            old = None
        a, b = _flat(old if isinstance(old, dict) else {}), _flat(new)
        changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if changed:
            kept = os.path.join(output_dir, f"config.{step_name(step)}.yaml")
            os.replace(path, kept)
            printer(f"resumed at step {step} with {len(changed)} changed settings ("
                    + "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:4])
                    + (" ..." if len(changed) > 4 else "") + f"); the settings of steps 1-{step}: {kept}")
    # whole or not at all (a cut config.yaml is what align.load and export read): a full disk is one line
    write_text_whole(path, yaml.safe_dump(new, sort_keys=False), kept="the run's checkpoints are untouched")


def other_library_model(p: str) -> Optional[str]:
    """What an existing path that holds no align files is, when it is another library's model, and how align takes
    it; None otherwise. A Hugging Face folder has a model.safetensors, as an align checkpoint does."""
    if os.path.isfile(p):
        folder = os.path.dirname(p)
        if any(os.path.isfile(os.path.join(folder, f)) for f in (EXPORT_CONFIG, STATE)):
            return f"a file of one: load its folder {folder}"
        return ("a weights file: an open_clip checkpoint is benchmarked as open_clip:ARCH with pretrained FILE, and "
                "starts a fine-tune as model.init_from")
    if any(os.path.isfile(os.path.join(p, f)) for f in (CONFIG, EXPORT_CONFIG, STATE)):
        return None
    if os.path.isfile(os.path.join(p, "open_clip_config.json")):
        return f"an open_clip folder: load it as local-dir:{p}; it starts a fine-tune as model.init_from"
    if os.path.isfile(os.path.join(p, "config.json")):
        return ("a Hugging Face model folder (config.json): it is a tower of its own "
                "({type: hf | hf_image | hf_audio, model: FOLDER})")
    return None


def locate(path: str) -> Located:
    """A run dir (its newest checkpoint), a checkpoint dir (plain or DCP) or an export; one AlignError line if
    it is none of them."""
    p = os.path.abspath(path)
    if not os.path.exists(p):
        if path.startswith("local-dir:"):       # open_clip's name for a folder: not something align loads whole
            raise AlignError(f"{path}: an open_clip folder is not an align model (a run, a checkpoint or an align "
                             "export); start from it with model.init_from, or benchmark it as open_clip:ARCH")
        raise AlignError(f"no such model: {p}")
    other = other_library_model(p)
    if other:
        raise AlignError(f"{p}: not an align run, checkpoint or export but {other}")
    if os.path.isfile(os.path.join(p, EXPORT_CONFIG)):
        for name in (MODEL, EXPORT_WEIGHTS):
            if os.path.isfile(os.path.join(p, name)):
                return Located("export", None, None, os.path.join(p, name))
        raise AlignError(f"{p}: export has {EXPORT_CONFIG} but no {EXPORT_WEIGHTS}")
    if os.path.isfile(os.path.join(p, CONFIG)):
        from align.progress import main_process   # every rank of a launch locates model.init_from: rank 0 says it
        from align.runlock import live_holder
        ckpt, holder = newest_checkpoint(p), live_holder(p)
        if ckpt is None:
            raise AlignError(f"{p}: run has no complete checkpoint yet"
                             + (f" (it is in progress: {holder})" if holder else ""))
        if holder and main_process():      # a live run writes here: its newer checkpoints are not complete yet
            log.warning("%s: a run is in progress (%s); reading its last complete checkpoint, %s", p, holder,
                        os.path.basename(ckpt))
        return Located("run", p, ckpt, weights_path(ckpt))
    if is_checkpoint_dir(p):
        from align.train.manifest import verify

        problem = verify(p)
        if problem:
            raise AlignError(f"damaged checkpoint: {problem}")
        return Located("checkpoint", find_run_dir(p), p, weights_path(p))
    raise AlignError(f"{p}: not an align run, checkpoint or export (no {CONFIG}, {MODEL}, {DCP_DIR}/ "
                     f"or {EXPORT_CONFIG})")


HF_TOWERS = ("hf", "hf_image", "hf_audio")


def export_tokenizer_folders(recipe: dict, folder: str) -> dict:
    """An export's recipe with its open_clip text tower's tokenizer folder found: written relative to the export
    (its own tokenizer/ copy) it is joined to `folder`; an absolute one that is gone (an export written before the
    copy, then moved) falls back to the tokenizer files the export holds (tokenizer/, or beside its
    open_clip_config.json). An hf / hf_image / hf_audio tower's `model` naming a folder of the export (hf/MODALITY,
    its config and tokenizer or preprocessor files) is joined to `folder` too; an absolute one (an export written
    before the copy) is kept."""
    from align.open_clip_files import TOKENIZER_FOLDER, holds_tokenizer
    for t in ((recipe.get("model") or {}).get("towers") or {}).values():
        name = t.get("model") if isinstance(t, dict) and t.get("type") in HF_TOWERS else None
        if isinstance(name, str) and not os.path.isabs(name) and os.path.isdir(os.path.join(folder, name)):
            t["model"] = os.path.join(folder, name)
        cfg = t.get("config") if isinstance(t, dict) else None
        path = cfg.get(TOKENIZER_FOLDER) if isinstance(cfg, dict) else None
        if not isinstance(path, str):
            continue
        if not os.path.isabs(path):
            cfg[TOKENIZER_FOLDER] = os.path.join(folder, path)
        elif not os.path.isdir(path):
            found = [d for d in (os.path.join(folder, "tokenizer"), folder) if holds_tokenizer(d)]
            if found:
                cfg[TOKENIZER_FOLDER] = found[0]
    return recipe


def read_model_config(where: Located) -> dict:
    """The recipe dict behind a located model: the export's align_config.json or the run's config.yaml."""
    if where.kind == "export":
        with open(where.config_path) as f:
            return export_tokenizer_folders(json.load(f), os.path.dirname(where.config_path))
    if where.run_dir is None:
        run = os.path.dirname(os.path.dirname(where.checkpoint))
        raise AlignError(f"{where.checkpoint}: cannot find the run's {CONFIG} at {os.path.join(run, CONFIG)}")
    import yaml
    with open(where.config_path) as f:
        return yaml.safe_load(f)


def find_model(path: str):
    """-> (recipe dict, weights file or DCP store) for a run dir, checkpoint dir or export."""
    where = locate(path)
    return read_model_config(where), where.weights
