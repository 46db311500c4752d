"""Export each tower to ONNX: preprocessed tensor in, L2-normalised embedding out.

    image.onnx   input "input" float32 [B, 3, H, W]        -> "embedding" float32 [B, E]
    text.onnx    input "input" int64   [B, context_length] -> "embedding" float32 [B, E]
    audio.onnx   input "input" float32 [B, n_mels, frames] -> "embedding" float32 [B, E]
    preprocess.json          how raw inputs become those tensors (see `preprocess_json`)
    tokenizer/               BPE vocab (open_clip) or HF tokenizer files
    audio_mel_filterbank.npy the exact mel filterbank [n_fft // 2 + 1, n_mels] of the audio front end
    image_processor/, audio_feature_extractor/   hf_image / hf_audio towers: the model's own transformers
                             preprocessor (save_pretrained), so the export needs no other folder

The batch axis is dynamic. Every file is checked against PyTorch with onnxruntime
at export time (batch 3 and batch 1, max abs diff <= 1e-4); a failure raises
AlignError and nothing is written to the final folder.

The TorchScript exporter (`dynamo=False`) is used first: on the test towers it took
~1 s where the torch.export-based exporter took 5-7 s. The dynamo exporter is the
fallback when TorchScript tracing fails (e.g. an op without a TorchScript symbolic).
Text towers are traced on tokenized captions, other towers on `dummy_input`.
"""
import json
import math
import os
import shutil
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from align.errors import AlignError
from align.towers.onnx_trace import INPUT, OUTPUT, export_torchscript, onnx_tracing

PARITY_ATOL = 1e-4


class NormalizedTower(nn.Module):
    """tower(x) -> L2-normalised [B, E]: what AlignModel.encode_* returns."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower(x), dim=-1)


def _export(module, x, path: str, dynamo: bool) -> None:
    if not dynamo:
        export_torchscript(module, x, path)
        return
    batch = torch.export.Dim("batch", min=1)
    prog = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    # Name the graph's input/output afterwards: passing the names to the exporter can collide with
    # internal values (an embedding lookup is itself named "embedding" -> an invalid model).
    g = prog.model.graph
    outer = {id(v) for v in list(g.inputs) + list(g.outputs)}
    for node in g:
        for v in node.outputs:
            if v.name in (INPUT, OUTPUT) and id(v) not in outer:
                v.name = f"{v.name}_internal"
    g.inputs[0].name, g.outputs[0].name = INPUT, OUTPUT
    prog.save(path)


# Text towers are traced and checked on real tokenized captions (valid ids, real end-token
# positions) rather than random ids: any text tower can tokenize, whatever its vocabulary.
CAPTIONS = ["a photo of a dog.", "an orange cat sleeping on a red sofa, seen from above", "",
            "a diagram", "two people riding bicycles along a river at sunset"]


def example_input(tower, batch_size: int) -> torch.Tensor:
    """A valid batch for `tower`: tokenized captions for text, the tower's dummy_input otherwise."""
    if tower.modality == "text":
        return tower.tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)])
    return tower.dummy_input(batch_size)


def export_tower(tower, path: str) -> str:
    """Writes one tower to `path`; returns which exporter succeeded ("torchscript" or "dynamo")."""
    module = NormalizedTower(tower).eval()
    x = example_input(tower, 2)
    errors = []
    with onnx_tracing():
        for name, dynamo in (("torchscript", False), ("dynamo", True)):
            try:
                _export(module, x, path, dynamo)
                return name
            except Exception as e:  # noqa: BLE001  try the other exporter; report both if it fails too
                errors.append(f"{name} exporter: {(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}")
    raise AlignError(f"{path}: ONNX export of the {tower.modality} tower failed ({'; '.join(errors)})")


def _session(path: str):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, torch.get_num_threads()))
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_tower(tower, path: str, atol: float = PARITY_ATOL) -> Dict[str, float]:
    """onnxruntime vs PyTorch on fresh dummy inputs of batch 3 and 1 -> {"batch3": diff, "batch1": diff}."""
    try:
        sess = _session(path)
    except Exception as e:  # noqa: BLE001  an invalid graph is an export failure, said in one line
        raise AlignError(f"{path}: onnxruntime cannot load the exported {tower.modality} tower: "
                         f"{str(e).strip().splitlines()[0][:300]}") from None
    module = NormalizedTower(tower).eval()
    out = {}
    for b in (3, 1):
        x = example_input(tower, b)
        if tower.modality == "text" and b == 1:
            x = tower.tokenize([CAPTIONS[-1]])         # not the first row of the batch-3 input
        got = sess.run([OUTPUT], {INPUT: x.numpy()})[0]
        ref = module(x).numpy()
        if got.shape != ref.shape:
            raise AlignError(f"{path}: ONNX output shape {list(got.shape)} != PyTorch {list(ref.shape)} at batch {b}")
        d = float(np.abs(got - ref).max())
        if not d <= atol:
            raise AlignError(f"{path}: ONNX {tower.modality} embeddings differ from PyTorch by {d:.3g} (> {atol}) "
                             f"at batch {b}")
        out[f"batch{b}"] = d
    return out


# -- preprocessing descriptions ---------------------------------------------------------------
def _hw(size) -> List[int]:
    return [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]


def image_steps(tower) -> Optional[List[dict]]:
    """PIL image -> float [3, H, W] as an explicit list of steps (None: not describable)."""
    from align.towers.open_clip_towers import OpenClipTower
    p = tower.preprocess_config()
    norm = {"op": "normalize", "mean": [float(v) for v in p["mean"]], "std": [float(v) for v in p["std"]]}
    to_float = {"op": "to_float", "note": "HWC uint8 -> CHW float32 / 255"}
    if isinstance(tower, OpenClipTower):
        hw, mode, interp = _hw(p["size"]), p["resize_mode"], p["interpolation"]
        if mode == "shortest" and hw[0] == hw[1]:
            geo = [{"op": "resize_shortest", "size": hw[0], "interpolation": interp},
                   {"op": "center_crop", "size": hw}]
        elif mode == "squash":
            geo = [{"op": "resize", "size": hw, "interpolation": interp}]
        else:  # open_clip's ResizeKeepRatio (+ pad) variants
            geo = [{"op": f"open_clip_resize_{mode}", "size": hw, "interpolation": interp}]
        # RGB first, as align's image_transform (UprightThen): PIL resizes a palette or 1-bit image with NEAREST
        return [{"op": "to_rgb"}] + geo + [to_float, norm]
    if p.get("tower") == "timm":
        hw, pct, mode, interp = _hw(p["image_size"]), p.get("crop_pct") or 0.875, p.get("crop_mode"), \
            p["interpolation"]
        scale = [math.floor(v / pct) for v in hw]
        if mode in (None, "center") and scale[0] == scale[1]:
            geo = [{"op": "resize_shortest", "size": scale[0], "interpolation": interp}]
        elif mode == "squash":
            geo = [{"op": "resize", "size": scale, "interpolation": interp}]
        else:
            geo = [{"op": f"timm_resize_{mode or 'center'}", "size": scale, "interpolation": interp}]
        return [{"op": "to_rgb"}] + geo + [{"op": "center_crop", "size": hw}, to_float, norm]
    return None


def _text_kind(tower) -> str:
    from align.towers.open_clip_towers import OpenClipTower
    if isinstance(tower, OpenClipTower):
        return "open_clip_hf" if tower.text_cfg.get("hf_tokenizer_name") else "open_clip_simple"
    if hasattr(tower, "tokenizer") and hasattr(tower.tokenizer, "save_pretrained"):
        return "hf"
    return getattr(tower, "tokenizer_kind", "unknown")   # e.g. rnn_text: open_clip's SimpleTokenizer


def save_tokenizer(tower, out_dir: str) -> Dict[str, object]:
    """Copies what tokenizing needs into out_dir/tokenizer/; returns the preprocess.json text entry."""
    kind = _text_kind(tower)
    tdir = os.path.join(out_dir, "tokenizer")
    entry = {"kind": kind, "context_length": int(tower.context_length), "dtype": "int64"}
    if kind == "open_clip_simple":
        from open_clip.tokenizer import default_bpe
        os.makedirs(tdir, exist_ok=True)
        shutil.copyfile(default_bpe(), os.path.join(tdir, os.path.basename(default_bpe())))
        entry.update(bpe_path=f"tokenizer/{os.path.basename(default_bpe())}",
                     tokenizer_kwargs=dict(getattr(tower, "text_cfg", {}).get("tokenizer_kwargs", {})),
                     how="open_clip.tokenizer.SimpleTokenizer(bpe_path=bpe_path, context_length=context_length, "
                         "**tokenizer_kwargs)(texts)")
        if getattr(tower, "punctuation", "ascii") != "ascii":     # bow_text's opt-in: the exported cleaning too
            entry.update(punctuation=tower.punctuation,
                         how=entry["how"] + "; punctuation unicode: after the tokenizer's clean_fn, every character "
                                            "of a Unicode punctuation category (P*) is deleted, whitespace made one")
    elif kind == "open_clip_hf":
        tower.save_hf_tokenizer(tdir)
        entry.update(path="tokenizer", tokenizer_kwargs=dict(tower.text_cfg.get("tokenizer_kwargs", {})),
                     how="open_clip.tokenizer.HFTokenizer(path, context_length, **tokenizer_kwargs)(texts)")
    elif kind == "hf":
        tower.tokenizer.save_pretrained(tdir)
        entry.update(path="tokenizer", padding="max_length", truncation=True, padding_side="right",
                     how="transformers.AutoTokenizer.from_pretrained(path)(texts, padding='max_length', "
                         "truncation=True, max_length=context_length)['input_ids']")
    entry["tower"] = tower.preprocess_config()
    return entry


def image_entry(tower, out_dir: str) -> dict:
    """preprocess.json's image entry: explicit steps, or (a transformers image processor, hf_image) the processor's
    own files in out_dir/image_processor/, which the README snippet loads."""
    entry = {"steps": image_steps(tower), "tower": tower.preprocess_config()}
    processor = getattr(tower, "processor", None)
    if entry["steps"] is None and hasattr(processor, "save_pretrained"):
        processor.save_pretrained(os.path.join(out_dir, "image_processor"))
        entry.update(path="image_processor",
                     how="transformers.AutoImageProcessor.from_pretrained(path)(images=img.convert('RGB'))"
                         "['pixel_values']")
    return entry


def _eval_crop(fe) -> str:
    """What align does to a wave before the log-mel, in order, with this front end's settings."""
    steps = ["mono", "resample to sample_rate (polyphase)", "clip to [-1, 1]"]
    if fe.trim_db > 0:
        steps.append(f"cut leading/trailing 10 ms frames whose RMS is more than trim_db ({fe.trim_db:g}) below the "
                     "loudest frame's")
    if fe.normalize != "none":
        steps.append(f"scale so the {fe.normalize} level is target_db ({fe.target_db:g}) dBFS (silence unchanged)")
    c = fe.eval_clips
    steps.append("centre crop or zero-pad on the right to clip_samples" if c == 1 else
                 f"eval_clips ({c}) crops of clip_samples starting at round(linspace(0, len - clip_samples, {c})) "
                 f"(a wave no longer than clip_samples: zero-padded on the right, {c} times)")
    norm = ("per-utterance CMVN of the log-mel (each mel bin to mean 0, std 1 over the frames that are not zero "
            "padding; those are set to 0)" if fe.cmvn == "utterance" else "log-mel (x - norm_mean) / norm_std")
    embed = "" if c == 1 else ("; the recording's embedding: the mean of the clips' L2-normalised embeddings, "
                               "L2-normalised")
    return ", ".join(steps) + "; then " + norm + embed


def audio_entry(tower, out_dir: str) -> dict:
    """preprocess.json's audio entry: align's front end (+ its mel filterbank file), or (hf_audio) the model's
    feature extractor files in out_dir/audio_feature_extractor/, which the README snippet loads."""
    pp = dict(tower.preprocess_config())
    fe = getattr(tower, "fe", None)
    if fe is not None:
        from align.towers.audio_features import mel_filterbank
        fb = mel_filterbank(fe.n_fft // 2 + 1, fe.sample_rate, fe.n_mels, fe.f_min, fe.f_max,
                            fe.mel_scale, None if fe.mel_norm == "none" else fe.mel_norm)
        np.save(os.path.join(out_dir, "audio_mel_filterbank.npy"), fb.numpy())
        pp.update(mel_filterbank="audio_mel_filterbank.npy", eval_crop=_eval_crop(fe))
    elif hasattr(getattr(tower, "extractor", None), "save_pretrained"):
        tower.extractor.save_pretrained(os.path.join(out_dir, "audio_feature_extractor"))
        call = ("fe(wave, sampling_rate=sample_rate, padding='max_length', max_length=clip_samples, truncation=True, "
                "return_attention_mask=True); input = stack([input_name values, attention_mask])"
                if pp.get("packed_attention_mask") else
                "zero-pad on the right to clip_samples (extractor_fixes_length false) or, when shorter than "
                "sample_rate // 20, to that (true); input = fe(wave, sampling_rate=sample_rate)[input_name][0]")
        pp.update(path="audio_feature_extractor",
                  how="mono, resample to sample_rate, clip to [-1, 1], centre crop to clip_samples when longer, then "
                      + call + "; fe = transformers.AutoFeatureExtractor.from_pretrained(path)")
    return pp


def preprocess_json(model, out_dir: str, files: Dict[str, str]) -> dict:
    """The preprocess.json dict; also writes tokenizer files and the audio mel filterbank."""
    out = {"format": "align-onnx/1", "embed_dim": None,
           "logit_scale": float(model.logit_scale.detach().exp()),        # multiply cosine similarities by this
           "logit_scale_log": float(model.logit_scale.detach()),
           "logit_bias": None if model.logit_bias is None else float(model.logit_bias.detach()),
           "towers": {}}
    for m, tower in model.towers.items():
        out["embed_dim"] = int(tower.embed_dim)
        x = example_input(tower, 1)
        entry = {"file": files[m], "input": {"name": INPUT, "dtype": str(x.dtype).replace("torch.", ""),
                                            "shape": ["batch", *x.shape[1:]]},
                 "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", int(tower.embed_dim)],
                            "l2_normalised": True}}
        if m == "image":
            entry["preprocess"] = image_entry(tower, out_dir)
        elif m == "text":
            entry["preprocess"] = save_tokenizer(tower, out_dir)
        elif m == "audio":
            entry["preprocess"] = audio_entry(tower, out_dir)
        else:
            entry["preprocess"] = tower.preprocess_config()
        out["towers"][m] = entry
    return out


def write(model, out_dir: str, progress: bool = False) -> dict:
    """Exports every tower + preprocess.json; returns {"files": [...], "parity": {m: {...}}, "exporter": {...}}."""
    from align.progress import progress as tqdm   # plain lines off a terminal
    files, parity, exporter = {}, {}, {}
    # one tower a step: traced to TOWER.onnx, then run by onnxruntime against torch (the parity check)
    bar = tqdm(total=len(model.modalities), desc="onnx export + parity check", unit="tower", disable=not progress,
               leave=False)
    for m in model.modalities:
        tower = model.towers[m]
        files[m] = f"{m}.onnx"
        bar.set_postfix_str(f"{m} -> {files[m]}", refresh=True)
        path = os.path.join(out_dir, files[m])
        exporter[m] = export_tower(tower, path)
        parity[m] = check_tower(tower, path)
        bar.update(1)
    bar.close()
    pp = preprocess_json(model, out_dir, files)
    with open(os.path.join(out_dir, "preprocess.json"), "w") as f:
        json.dump(pp, f, indent=1)
    written = list(files.values()) + ["preprocess.json"]
    return {"files": written, "parity": parity, "exporter": exporter, "preprocess": pp}
