"""Export a trained align model for use outside align: open_clip folder, ONNX, model card.

    from align.export import export
    export("runs/demo", "exports/demo", fmt="all")   # open_clip + ONNX + align files + README.md

Every export folder holds
    align_config.json, align_model.safetensors   `align.load(DIR)` loads it (self-contained recipe)
    README.md                                     model card: towers, data, run figures, benchmarks, usage
    align_run_info.json                           the run facts behind the card (re-exports keep them)
and, by format,
    open_clip  open_clip_config.json + open_clip_model.safetensors: open_clip.create_model_and_transforms(
               'local-dir:DIR') and CLIP_benchmark's `--model local-dir:DIR` load it (image+text towers of
               type open_clip only; others are refused for fmt="open_clip")
    onnx       <tower>.onnx per tower + preprocess.json + tokenizer/ (+ audio_mel_filterbank.npy; hf_image /
               hf_audio towers: image_processor/, audio_feature_extractor/)
    all        both (open_clip skipped, with a note, when the towers cannot be expressed in it)
Towers a format cannot carry are never dropped silently: they are exported in
align (and ONNX) form and named in `notes`, the card and the CLI summary.

Each format is checked at export time: open_clip reloads the folder and must
reproduce align's embeddings within 1e-5 (and the same tokens); onnxruntime must
match PyTorch within 1e-4 at batch 3 and 1. The export is built in a temporary
sibling folder and renamed into place only when every check passed; a full disk removes it and
raises StorageError, one line with the space needed and free (align.writes).
Modules: open_clip_format (open_clip's folder layout), onnx_format (one ONNX file per tower),
model_card (the README.md of every export), wise_ft (WiSE-FT interpolation); this file: `export`.
"""
import copy
import json
import os
import secrets
import shutil
import tempfile
from typing import List, Optional

from align.errors import AlignError, make_folder
from align.writes import StorageError, is_storage_error, storage_line

FORMATS = ("open_clip", "onnx", "all")
AUDIO_NOTE = "audio tower not representable in open_clip format; exported in align/ONNX form"


def check_out_dir(src: str, dst: str, overwrite: bool) -> None:
    """AlignError (one line) when `dst` (absolute) cannot take an export of `src`: a file, a folder holding the
    model itself, a non-empty folder without overwrite, or with overwrite a non-empty folder that holds no
    earlier export."""
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise AlignError(f"export: {dst} exists and is not a folder")
    # Compared as given and through links: `--out link/..` naming the run's own parent by another path
    # would otherwise pass, and --overwrite would then delete the run being exported.
    if any(d == s or s.startswith(d.rstrip(os.sep) + os.sep)
           for s, d in ((src, dst), (os.path.realpath(src), os.path.realpath(dst)))):
        raise AlignError(f"export: out_dir {dst} contains the model being exported ({src}); choose another folder")
    names = sorted(os.listdir(dst)) if os.path.isdir(dst) else []
    if names and not overwrite:
        raise AlignError(f"export: {dst} exists and is not empty; pass overwrite=True (CLI: --overwrite) to "
                         f"replace it")
    # overwrite replaces an earlier export only: `--out . --overwrite` in a project folder would delete the project
    from align.export.model_card import RUN_INFO_NAME
    if names and RUN_INFO_NAME not in names:
        raise AlignError(f"export: {dst} holds files that are not an align export ({', '.join(names[:3])}"
                         f"{', ...' if len(names) > 3 else ''}; an export has {RUN_INFO_NAME}): overwrite replaces "
                         f"only an earlier export; choose a new or empty folder")


def _new_folder(dst: str, what: str) -> str:
    """An empty folder beside `dst` with the user's umask (tempfile.mkdtemp's is 0700: an export meant for
    sharing would be unreadable to the group)."""
    while True:
        path = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.{what}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
        except OSError as e:     # read-only, no permission: one line, not a traceback after the model loaded
            raise AlignError(f"export: cannot write beside {dst} ({e.strerror or e})") from None


TOKENIZER_DIR = "tokenizer"      # an open_clip text tower's Hugging Face tokenizer files (the ONNX export's too)
HF_DIR = "hf"                    # hf / hf_image / hf_audio towers: hf/<modality>/ holds config.json + tokenizer or
                                 # preprocessor files (no weights: the export's own are read over the architecture)


def save_hf_files(tower, folder: str) -> None:
    """What an hf / hf_image / hf_audio tower needs to build, with no weights (`from_config: true`): its
    transformers config and its tokenizer, image processor or feature extractor, each by its own save_pretrained."""
    trunk = tower.trunk if hasattr(tower, "trunk") else tower.model
    trunk.config.save_pretrained(folder)
    for name in ("tokenizer", "processor", "extractor"):
        part = getattr(tower, name, None)
        if hasattr(part, "save_pretrained"):
            part.save_pretrained(folder)


def self_contained_recipe(model, out_dir: Optional[str] = None) -> dict:
    """The recipe with every outside file reference replaced, so `align.load(DIR)` needs nothing else.

    open_clip towers get their resolved model config inline (no `model` name lookup or `config_file`); a Hugging
    Face tokenizer's files (text_cfg.hf_tokenizer_name) are copied into out_dir/tokenizer/ and the config names that
    folder relative to the export (align.train.rundir.read_model_config resolves it), so the folder can move;
    `pretrained` weights and `init_from_vit.weights` are dropped (the export's weights replace them);
    `resume` is set to none. hf / hf_image / hf_audio towers get the files they build from (config.json, tokenizer,
    image processor or feature extractor; no weights) in out_dir/hf/<modality>/, named relative to the export with
    `from_config: true` (the export's weights fill the architecture), so no model folder is needed either.
    """
    from align.open_clip_files import TOKENIZER_FOLDER
    from align.towers import drop_pretrained
    from align.towers.hf_encoder import HFEncoderTower
    from align.towers.hf_text import HFTextTower
    from align.towers.open_clip_towers import OpenClipTower
    r = copy.deepcopy(model.config or {})
    r["resume"] = "none"
    m = r.setdefault("model", {})
    towers = m.setdefault("towers", {})
    m["embed_dim"] = int(next(iter(model.towers.values())).embed_dim)
    for mod, tower in model.towers.items():
        t = dict(towers.get(mod, {}))
        if isinstance(tower, OpenClipTower):
            keep = {k: v for k, v in tower.cfg.items() if k not in ("model", "config", "config_file",
                                                                      TOKENIZER_FOLDER)}
            t = {"type": "open_clip", "config": copy.deepcopy(tower.model_cfg), **keep}
            if out_dir and mod == "text" and tower.text_cfg.get("hf_tokenizer_name"):
                tower.save_hf_tokenizer(os.path.join(out_dir, TOKENIZER_DIR))
                t["config"][TOKENIZER_FOLDER] = TOKENIZER_DIR          # relative: the export's own copy
        elif out_dir and isinstance(tower, (HFTextTower, HFEncoderTower)):
            save_hf_files(tower, os.path.join(out_dir, HF_DIR, mod))
            t.update(model=f"{HF_DIR}/{mod}", from_config=True)            # relative: the export's own copy
        drop_pretrained(t)
        if isinstance(t.get("init_from_vit"), dict):
            t["init_from_vit"] = {k: v for k, v in t["init_from_vit"].items() if k != "weights"}
        towers[mod] = t
    m.pop("open_clip", None)   # image/text are explicit above; the shorthand may name a file
    m.pop("init_from", None)   # the weights are in the export
    return r


def _write_align(model, d: str) -> List[str]:
    from safetensors.torch import save_file
    from align.train.rundir import EXPORT_CONFIG, EXPORT_WEIGHTS
    with open(os.path.join(d, EXPORT_CONFIG), "w") as f:
        json.dump(self_contained_recipe(model, d), f, indent=1)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              os.path.join(d, EXPORT_WEIGHTS))
    return [EXPORT_CONFIG, EXPORT_WEIGHTS]


def _verify_align(model, d: str) -> float:
    """align.load(d) must rebuild the same model: max abs weight difference (0 expected)."""
    from align.api import load
    try:
        again = load(d)
    except AlignError as e:
        raise AlignError(f"{d}: align cannot load the export: {e}") from None
    a, b = model.state_dict(), again.state_dict()
    return max((float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel()), default=0.0)


def _default_checkpoint(model_path: str) -> str:
    """A run dir exports its best checkpoint by the held-out metric (eval.best_metric) when the run kept one,
    said in one line; otherwise `model_path` as it is (a run's newest intact checkpoint, a checkpoint, an export)."""
    from align.train.rundir import best_of_run
    found = best_of_run(model_path)
    if found is None:
        return model_path
    best, state = found
    value = state.get("best")
    print(f"{model_path}: exporting its best checkpoint by {state.get('best_metric') or 'eval.best_metric'} "
          f"(step {state.get('step')}" + (f", {value:.4f}" if isinstance(value, (int, float)) else "")
          + "); to export the last one, give its checkpoint directory (checkpoints/step-N)", flush=True)
    return best


def _list_files(d: str) -> List[str]:
    out = []
    for root, _, names in os.walk(d):
        out += [os.path.relpath(os.path.join(root, n), d) for n in names]
    return sorted(out)


def _finalize(tmp: str, dst: str) -> None:
    """Moves the finished export into place; an old folder (overwrite=True) is removed only afterwards.
    Its files get the umask's modes, read from `tmp`'s own (safetensors writes its files 0600)."""
    mode = os.stat(tmp).st_mode & 0o666
    for root, _, names in os.walk(tmp):
        for n in names:
            os.chmod(os.path.join(root, n), mode)
    old = None
    if os.path.isdir(dst) and os.listdir(dst):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
        os.rmdir(old)
        os.replace(dst, old)
    elif os.path.isdir(dst):
        os.rmdir(dst)
    os.replace(tmp, dst)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def export(model_path: str, out_dir: str, fmt: str = "open_clip", overwrite: bool = False, *,
           reports: Optional[List[str]] = None, progress: bool = True, interpolate_with: Optional[str] = None,
           alpha: Optional[float] = None) -> dict:
    """Export the model at `model_path` (run dir, checkpoint dir or export) to `out_dir`.

    fmt: "open_clip" | "onnx" | "all". reports: extra CLIP_benchmark-shaped result JSON files or folders
    for the model card. interpolate_with + alpha: export the WiSE-FT interpolation (1 - alpha) * start +
    alpha * model (see wise_ft.py). Returns {"out_dir", "formats", "files", "notes", "parity", "exporter"}.
    Raises AlignError when out_dir is non-empty (unless overwrite), the format cannot hold the model,
    or a parity check fails.
    """
    from align.api import load
    from align.export import model_card, onnx_format, open_clip_format
    if fmt not in FORMATS:
        raise AlignError(f"export: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    src, dst = os.path.abspath(model_path), os.path.abspath(out_dir)
    check_out_dir(src, dst, overwrite)
    model_card.check_reports(reports)
    model = load(_default_checkpoint(model_path)).eval()
    wise = None
    if interpolate_with is not None:
        from align.export.wise_ft import apply_wise_ft
        if alpha is None:
            raise AlignError("export: interpolate_with needs alpha (0 = the start, 1 = the fine-tuned model)")
        wise = apply_wise_ft(model, interpolate_with, float(alpha))
    reason = open_clip_format.unsupported_reason(model)
    if fmt == "open_clip" and reason:
        raise AlignError(f"export {model_path}: cannot use format open_clip: {reason}. Use --format onnx (or all, "
                         f"which skips open_clip with a note; fmt= in Python)")
    info = model_card.run_info(model_path, reports)
    info["checkpoint"] = model_card.checkpoint_info(getattr(model, "weights_file", None)) or info.get("checkpoint")
    make_folder(os.path.dirname(dst), "export's parent")
    tmp = _new_folder(dst, "tmp")
    result = {"out_dir": dst, "source": src, "formats": ["align"], "files": [], "notes": [], "parity": {},
              "exporter": {}}
    if wise is not None:
        from align.export.wise_ft import note
        result["notes"].append(note(wise))
        result["wise_ft"] = {k: wise[k] for k in ("alpha", "start", "interpolated")}
    try:
        _write_align(model, tmp)
        result["parity"]["align"] = {"max_weight_diff": _verify_align(model, tmp)}
        if fmt in ("open_clip", "all"):
            if reason:
                result["notes"].append(f"open_clip format skipped: {reason}")
            else:
                open_clip_format.write(model, tmp)
                result["parity"]["open_clip"] = open_clip_format.verify(model, tmp)
                result["formats"].append("open_clip")
                if open_clip_format.local_path_note(model):
                    result["notes"].append(open_clip_format.local_path_note(model))
                for m in open_clip_format.extra_modalities(model):
                    result["notes"].append(AUDIO_NOTE if m == "audio" else
                                           f"{m} tower not representable in open_clip format; exported in "
                                           f"align/ONNX form")
                    if fmt == "open_clip":
                        result["notes"][-1] += " (ONNX files only with --format all or onnx)"
        pp = None
        if fmt in ("onnx", "all"):
            o = onnx_format.write(model, tmp, progress=progress)
            result["parity"]["onnx"], result["exporter"] = o["parity"], o["exporter"]
            result["formats"].append("onnx")
            pp = o["preprocess"]
        with open(os.path.join(tmp, model_card.RUN_INFO_NAME), "w") as f:
            json.dump({k: info[k] for k in ("run_dir", "summary", "eval", "reports", "checkpoint")}, f, indent=1)
        result["files"] = _list_files(tmp) + ["README.md"]
        name = getattr(model, "name", None) or os.path.basename(dst)
        card = model_card.render(model, name=name, source=model_path, result=result, info=info, pp=pp)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(card)
        result["files"] = _list_files(tmp)
        _finalize(tmp, dst)
    except BaseException as exn:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exn, Exception) and is_storage_error(exn):   # a full disk: one line, nothing left behind
            raise StorageError(storage_line(exn, dst, _export_bytes(model, fmt), None,
                                            kept=f"nothing was written to {dst}")) from None
        raise
    return result


def _export_bytes(model, fmt: str) -> int:
    """About what an export needs: the weights once per weight file (align, open_clip, ONNX)."""
    weights = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    return weights * {"open_clip": 2, "onnx": 2, "all": 3}[fmt]


def summary_lines(result: dict) -> List[str]:
    """What the CLI prints: one line per note, then the one summary line (last, where a person looks)."""
    par = []
    for fmt, p in result["parity"].items():
        if fmt == "align":
            continue
        worst = max((v if isinstance(v, float) else max(v.values())) for v in p.values())
        par.append(f"{fmt} max diff {worst:.1e}")
    line = (f"exported {result['source']} -> {result['out_dir']} ({', '.join(result['formats'])}; "
            f"{len(result['files'])} files)" + (f"; parity: {', '.join(par)}" if par else ""))
    return [f"note: {n}" for n in result["notes"]] + [line]
