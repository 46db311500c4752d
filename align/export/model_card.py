"""The README.md model card written into every export, and the run facts it reports.

The card holds: what the model is (towers, embedding size, temperature), notes
(towers a format cannot carry, formats skipped), the training data and run
figures (summary.json), benchmark results (the last line of eval.jsonl and any
CLIP_benchmark-shaped result JSONs), how to load it with open_clip, onnxruntime
(a self-contained snippet, preprocessing included) and align, and the recipe.
The onnxruntime snippet is generated from preprocess.json and is run by the tests.
"""
import json
import math
import os
from typing import List, Optional

import yaml

from align.train.rundir import EVAL, SUMMARY, find_run_dir

RUN_INFO_NAME = "align_run_info.json"   # the facts below, kept so re-exporting an export keeps them


def _result_jsons(paths: List[str]) -> List[dict]:
    from align.bench.report import BASE_KEYS, load_results
    out = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(load_results(p))
        elif os.path.isfile(p):
            try:
                r = json.load(open(p))
            except (OSError, ValueError):
                continue
            if isinstance(r, dict) and all(k in r for k in BASE_KEYS):
                out.append(r)
    return out


def check_reports(reports: Optional[List[str]]) -> None:
    """The --report paths the user named, before the model loads: each an existing result JSON file, or a folder
    holding at least one (a missing or wrong file was silently left off the card). One line otherwise."""
    from align.errors import AlignError
    for p in reports or []:
        if not os.path.exists(p):
            raise AlignError(f"--report {p}: no such file or folder")
        if not _result_jsons([p]):
            what = "holds no result JSON" if os.path.isdir(p) else "is not a result JSON"
            raise AlignError(f"--report {p}: {what} (an `align bench` result: dataset, model, task, metrics, ...)")


def run_info(model_path: str, reports: Optional[List[str]] = None) -> dict:
    """{"run_dir", "summary", "eval", "reports"} from the run behind model_path (+ explicit report paths).

    summary: run_dir/summary.json; eval: last line of run_dir/eval.jsonl; reports: CLIP_benchmark-shaped
    result JSONs in run_dir, run_dir/bench and the given files/folders. An export being re-exported
    contributes its align_run_info.json.
    """
    info = {"run_dir": None, "summary": None, "eval": None, "reports": []}
    prev = os.path.join(os.path.abspath(model_path), RUN_INFO_NAME)
    if os.path.isfile(prev):
        try:
            info.update(json.load(open(prev)))
        except (OSError, ValueError):
            pass
    run = find_run_dir(model_path)
    if run:
        info["run_dir"] = run
        s = os.path.join(run, SUMMARY)
        if os.path.isfile(s):
            try:
                info["summary"] = json.load(open(s))
            except ValueError:
                pass
        e = os.path.join(run, EVAL)
        if os.path.isfile(e):
            lines = [l for l in open(e).read().splitlines() if l.strip()]
            try:
                info["eval"] = json.loads(lines[-1]) if lines else None
            except ValueError:
                pass
        info["reports"] = _result_jsons([run, os.path.join(run, "bench")])
    info["reports"] = info["reports"] + _result_jsons(list(reports or []))
    return info


def checkpoint_info(weights: Optional[str]) -> Optional[dict]:
    """{"path", "step", "weights": "average" | "trained"} of the checkpoint whose weights file (or DCP store) a
    model was loaded from (align.load sets model.weights_file); None for an export or a bare weights file."""
    from align.train.checkpoint import dcp_holds_average
    from align.train.rundir import DCP_DIR, EMA, read_state
    if not weights:
        return None
    ckpt = os.path.dirname(os.path.abspath(weights))
    state = read_state(ckpt)
    if state is None:
        return None
    average = dcp_holds_average(weights) if os.path.basename(weights) == DCP_DIR else os.path.basename(weights) == EMA
    return {"path": ckpt, "step": state.get("step"), "weights": "average" if average else "trained"}


# -- onnxruntime snippet ------------------------------------------------------------------------
_HEAD = '''\
import functools, json, os
import numpy as np
import onnxruntime as ort

EXPORT_DIR = "."  # this folder
PP = json.load(open(os.path.join(EXPORT_DIR, "preprocess.json")))


@functools.lru_cache(maxsize=None)
def _session(modality):
    path = os.path.join(EXPORT_DIR, PP["towers"][modality]["file"])
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def embed(modality, x):
    """A preprocessed batch -> L2-normalised embeddings [B, E] (float32)."""
    return _session(modality).run(None, {"input": x})[0]
'''

_IMAGE = '''

def preprocess_image(img):
    """PIL image -> float32 [3, H, W], exactly as the model's eval transform."""
    from PIL import Image
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
    for s in PP["towers"]["image"]["preprocess"]["steps"]:
        op = s["op"]
        if op == "to_rgb":                             # as align decodes a file: EXIF turn, alpha onto white
            from PIL import ImageOps
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
            elif img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):   # high bit depth: scaled, not clipped
                a = np.asarray(img, dtype=np.float64) * (255.0 if img.mode == "F" else 255.0 / 65535.0)
                img = Image.fromarray(np.rint(a).astype(np.uint8), "L")
            img = img.convert("RGB")
        elif op == "resize_shortest":                  # shorter side -> size, aspect kept (torchvision Resize(int))
            w, h = img.size
            short, long = min(w, h), max(w, h)
            new_short, new_long = s["size"], int(s["size"] * long / short)
            img = img.resize((new_short, new_long) if w <= h else (new_long, new_short), resample[s["interpolation"]])
        elif op == "resize":                           # exact [H, W]
            img = img.resize((s["size"][1], s["size"][0]), resample[s["interpolation"]])
        elif op == "center_crop":                      # torchvision CenterCrop rounding
            (ch, cw), (w, h) = s["size"], img.size
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            img = img.crop((left, top, left + cw, top + ch))
        elif op == "to_float":
            x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        elif op == "normalize":
            x = (x - np.float32(s["mean"])[:, None, None]) / np.float32(s["std"])[:, None, None]
        else:
            raise NotImplementedError(f"image preprocessing step {op!r}: see preprocess.json")
    return np.ascontiguousarray(x, dtype=np.float32)
'''

_TEXT_CHECK = '''

def _texts(texts):
    """list of str, or ValueError naming the first text holding a lone surrogate (half of a UTF-16 pair): align
    refuses it in every text tower, and the Hugging Face tokenizers fail on it with a TypeError"""
    import re
    texts = list(texts)
    for i, t in enumerate(texts):
        m = re.search("[\\ud800-\\udfff]", t) if isinstance(t, str) else None
        if m:
            raise ValueError(f"tokenize: texts[{i}]: lone surrogate at position {m.start()} (half of a UTF-16 pair, "
                             "not a character: no tokenizer reads it)")
    return texts'''

_TEXT = {
    "open_clip_simple": '''

@functools.lru_cache(maxsize=None)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer   # pip install open_clip_torch (align is not needed)
    t = PP["towers"]["text"]["preprocess"]
    tok = SimpleTokenizer(bpe_path=os.path.join(EXPORT_DIR, t["bpe_path"]), context_length=t["context_length"],
                          **t["tokenizer_kwargs"])
    if t.get("punctuation") == "unicode":      # also every Unicode punctuation mark (categories P*), as align
        import unicodedata
        clean = tok.clean_fn
        tok.clean_fn = lambda x: " ".join("".join(c for c in clean(x)
                                                  if not unicodedata.category(c).startswith("P")).split())
    return tok


def tokenize(texts):
    """list of str -> int64 [B, context_length]"""
    texts = _texts(texts)
    return _tokenizer()(texts).numpy().astype(np.int64)
''',
    "open_clip_hf": '''

@functools.lru_cache(maxsize=None)
def _tokenizer():
    from open_clip.tokenizer import HFTokenizer   # pip install open_clip_torch transformers
    t = PP["towers"]["text"]["preprocess"]
    return HFTokenizer(os.path.join(EXPORT_DIR, t["path"]), context_length=t["context_length"],
                       **t["tokenizer_kwargs"])


def tokenize(texts):
    """list of str -> int64 [B, context_length]"""
    texts = _texts(texts)
    return _tokenizer()(texts).numpy().astype(np.int64)
''',
    "hf": '''

@functools.lru_cache(maxsize=None)
def _tokenizer():
    from transformers import AutoTokenizer   # pip install transformers
    return AutoTokenizer.from_pretrained(os.path.join(EXPORT_DIR, PP["towers"]["text"]["preprocess"]["path"]))


def tokenize(texts):
    """list of str -> int64 [B, context_length] (right padding, truncation keeps the end token)"""
    t, texts = PP["towers"]["text"]["preprocess"], _texts(texts)
    ids = _tokenizer()(texts, padding="max_length", truncation=True, max_length=t["context_length"],
                       return_tensors="np")["input_ids"]
    return ids.astype(np.int64)
''',
}

_AUDIO = '''

def audio_clips(wave, sample_rate):
    """mono float32 wave -> the eval clips [eval_clips, clip_samples]: clipped to [-1, 1] (a float file may hold
    louder samples), silence trimmed and level normalised when the model does (trim_db, normalize), then eval_clips
    crops of clip_samples evenly spaced from start to end (one: the centre), zero-padded when the wave is shorter."""
    a = PP["towers"]["audio"]["preprocess"]
    if sample_rate != a["sample_rate"]:
        raise ValueError(f"resample to {a['sample_rate']} Hz first (e.g. scipy.signal.resample_poly)")
    w = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)       # as align's front end, after resampling
    if a.get("trim_db", 0) > 0:                        # cut 10 ms frames more than trim_db below the loudest
        hop = max(1, sample_rate // 100)
        frames = np.zeros(-(-len(w) // hop) * hop)
        frames[:len(w)] = w
        rms = np.sqrt((frames.reshape(-1, hop) ** 2).mean(axis=1))
        if rms.max() > 0:
            loud = np.flatnonzero(rms >= rms.max() * 10 ** (-a["trim_db"] / 20))
            w = w[loud[0] * hop:min(len(w), (loud[-1] + 1) * hop)]
    if a.get("normalize", "none") != "none":           # peak or RMS level -> target_db dBFS
        level = np.abs(w).max() if a["normalize"] == "peak" else np.sqrt(np.mean(w.astype(np.float64) ** 2))
        if level > 1e-8:
            w = (w * (10 ** (a["target_db"] / 20) / level)).astype(np.float32)
    n, c = a["clip_samples"], a.get("eval_clips", 1)
    if len(w) <= n:
        starts = [0] * c
    elif c == 1:
        starts = [(len(w) - n) // 2]
    else:
        starts = np.round(np.linspace(0, len(w) - n, c)).astype(np.int64)
    out = np.zeros((c, n), dtype=np.float32)
    for i, start in enumerate(starts):
        seg = w[start:start + n]
        out[i, :len(seg)] = seg
    return out


def log_mel(clip):
    """[clip_samples] -> normalised log-mel float32 [n_mels, n_frames] (torch.stft center=True, Hann)."""
    a = PP["towers"]["audio"]["preprocess"]
    n_fft, hop, win = a["n_fft"], a["hop_length"], a["win_length"]
    fb = np.load(os.path.join(EXPORT_DIR, a["mel_filterbank"]))                   # [n_fft // 2 + 1, n_mels]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)                  # periodic Hann
    window = np.pad(window, ((n_fft - win) // 2, n_fft - win - (n_fft - win) // 2))
    w = np.pad(np.asarray(clip, dtype=np.float64), n_fft // 2)                      # zero padding
    frames = np.lib.stride_tricks.sliding_window_view(w, n_fft)[::hop]             # [n_frames, n_fft]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2                      # [n_frames, n_freqs]
    logmel = np.log(power @ fb + a["log_offset"])                                  # [n_frames, n_mels]
    if a.get("cmvn", "none") == "utterance":   # each bin to mean 0, std 1 over the frames that are not padding
        valid = logmel.max(axis=1, keepdims=True) > np.log(a["log_offset"]) + 1e-3   # [n_frames, 1]
        n = max(int(valid.sum()), 1)
        mean = (logmel * valid).sum(axis=0) / n
        var = (((logmel - mean) * valid) ** 2).sum(axis=0) / n
        return ((logmel - mean) / np.sqrt(var + 1e-5) * valid).T.astype(np.float32)
    return ((logmel - a["norm_mean"]) / a["norm_std"]).T.astype(np.float32)


def embed_audio(wave, sample_rate):
    """mono float32 wave -> its L2-normalised embedding [E] as align evaluates a recording: the mean of its clips'
    L2-normalised embeddings, L2-normalised (one clip: that clip's embedding)."""
    z = embed("audio", np.stack([log_mel(c) for c in audio_clips(wave, sample_rate)])).mean(axis=0)
    return z / max(float(np.linalg.norm(z)), 1e-12)
'''

_HF_IMAGE = '''

@functools.lru_cache(maxsize=None)
def _image_processor():
    from transformers import AutoImageProcessor   # pip install transformers
    return AutoImageProcessor.from_pretrained(os.path.join(EXPORT_DIR, PP["towers"]["image"]["preprocess"]["path"]))


def preprocess_image(img):
    """PIL image -> float32 [3, H, W], exactly as the model's eval transform (its own image processor)."""
    x = _image_processor()(images=img.convert("RGB"), return_tensors="np")["pixel_values"][0]
    return np.ascontiguousarray(x, dtype=np.float32)
'''

_HF_AUDIO = '''

@functools.lru_cache(maxsize=None)
def _feature_extractor():
    from transformers import AutoFeatureExtractor   # pip install transformers
    return AutoFeatureExtractor.from_pretrained(os.path.join(EXPORT_DIR, PP["towers"]["audio"]["preprocess"]["path"]))


def audio_input(wave, sample_rate):
    """mono float32 wave -> the audio tower's input for one recording (clipped to [-1, 1], its centre clip through
    the model's own feature extractor)."""
    a, fe = PP["towers"]["audio"]["preprocess"], _feature_extractor()
    if sample_rate != a["sample_rate"]:
        raise ValueError(f"resample to {a['sample_rate']} Hz first (e.g. scipy.signal.resample_poly)")
    n, w = a["clip_samples"], np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    if len(w) > n:                                                                 # centre crop
        w = w[(len(w) - n) // 2:(len(w) - n) // 2 + n]
    if a["packed_attention_mask"]:
        out = fe(w, sampling_rate=sample_rate, padding="max_length", max_length=n, truncation=True,
                 return_attention_mask=True, return_tensors="np")
        return np.stack([out[a["input_name"]][0], out["attention_mask"][0]]).astype(np.float32)
    pad = sample_rate // 20 if a["extractor_fixes_length"] else n     # the extractor pads to its own length
    w = np.pad(w, (0, max(0, pad - len(w))))
    return fe(w, sampling_rate=sample_rate, return_tensors="np")[a["input_name"]][0].astype(np.float32)
'''


def onnx_snippet(pp: dict) -> str:
    """Self-contained Python (numpy, onnxruntime, PIL / open_clip / transformers as needed) for this export."""
    towers = pp["towers"]
    code = _HEAD
    if "image" in towers:
        code += _IMAGE if towers["image"]["preprocess"].get("steps") else \
            _HF_IMAGE if towers["image"]["preprocess"].get("path") else ""
    if "text" in towers and towers["text"]["preprocess"]["kind"] in _TEXT:
        code += _TEXT_CHECK + _TEXT[towers["text"]["preprocess"]["kind"]]
    if "audio" in towers:
        code += _AUDIO if towers["audio"]["preprocess"].get("mel_filterbank") else \
            _HF_AUDIO if towers["audio"]["preprocess"].get("path") else ""
    return code


def _usage(pp: dict) -> str:
    """Lines that call the snippet's functions, only those it defines (a tower it cannot preprocess gets none)."""
    lines, defined = [], onnx_snippet(pp)
    if "def preprocess_image(" in defined:
        lines.append('from PIL import Image\nz_img = embed("image", preprocess_image(Image.open("cat.jpg"))[None])'
                     '  # [1, E]')
    if "def tokenize(" in defined:
        lines.append('z_txt = embed("text", tokenize(["a photo of a cat", "a photo of a dog"]))  # [2, E]')
    audio = ("embed_audio(wave, sr)[None]" if "def embed_audio(" in defined else
             'embed("audio", audio_input(wave, sr)[None])' if "def audio_input(" in defined else None)
    if audio:
        lines.append('import soundfile as sf\nwave, sr = sf.read("dog.wav", dtype="float32")  # mono\n'
                     f'z_aud = {audio}  # [1, E]')
    made = {m for m, v in (("image", "z_img ="), ("text", "z_txt ="), ("audio", "z_aud =")) if v in "".join(lines)}
    mods = [m for m in ("image", "audio") if m in made]
    if mods and "text" in made:
        bias = ' + PP["logit_bias"]' if pp.get("logit_bias") is not None else ""
        short = {"image": "img", "audio": "aud"}[mods[0]]
        lines.append(f'logits = PP["logit_scale"] * z_{short} @ z_txt.T{bias}  # [1, 2]')
    return "\n".join(lines)


# -- the card -----------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _training(recipe: dict, info: dict) -> List[str]:
    """The card's Training section: the data, the checkpoint exported (its step; trained weights or their
    average), and the run's figures (summary.json), said to be the whole run's when the checkpoint is not its last."""
    L = ["## Training", "", f"- data: `{json.dumps(recipe.get('data', {}).get('train'))}`"]
    ck, s = info.get("checkpoint"), info.get("summary") or {}
    if ck:
        ema = (recipe.get("train") or {}).get("ema")
        what = (f"the moving average of the trained weights (train.ema{f' {ema:g}' if ema else ''})"
                if ck["weights"] == "average" else "the trained weights")
        L.append(f"- exported: the checkpoint of step {ck['step']} (`{ck['path']}`); weights: {what}")
    if not s:
        return L + [f"- no run summary found ({SUMMARY})", ""]
    if ck and s.get("steps") is not None and ck["step"] != s.get("steps"):
        L.append(f"- the figures below are the whole run's (to step {s.get('steps')}), not the exported step "
                 f"{ck['step']}'s")
    wall, sps = s.get("wall_time_s"), s.get("samples_per_s")
    samples = int(round(wall * sps)) if wall and sps else None
    loss = s.get("final_loss")
    facts = [f"- steps: {s.get('steps')}",
             f"- training time: {_fmt(wall)} s" if wall is not None else "",
             f"- throughput: {_fmt(sps)} samples/s" if sps is not None else "",
             f"- samples seen: ~{samples:,}" if samples else "",
             f"- final loss: {_fmt(loss)}" + (" (training loss of the trained weights, not of their average)"
                                              if ck and ck["weights"] == "average" else "") if loss is not None else "",
             f"- processes: {s.get('world_size')}, precision {s.get('precision')}" if s.get("world_size") else ""]
    return L + [f for f in facts if f] + [""]


def render(model, *, name: str, source: str, result: dict, info: dict, pp: Optional[dict]) -> str:
    """The README.md text."""
    recipe = model.config or {}
    towers = recipe.get("model", {}).get("towers", {})
    L = [f"# {name}", "",
         f"A contrastive {' + '.join(model.modalities)} model trained with align, exported from `{source}`.", ""]
    L += ["| tower | type | parameters |", "|---|---|---:|"]
    for m, t in model.towers.items():
        kind = towers.get(m, {}).get("type", type(t).__name__)
        L.append(f"| {m} | {kind} | {sum(p.numel() for p in t.parameters()):,} |")
    bias = "" if model.logit_bias is None else f", logit_bias {float(model.logit_bias.detach()):.4g}"
    log_scale = float(model.logit_scale.detach())
    L += ["", f"Embedding size {next(iter(model.towers.values())).embed_dim}; logit scale "
              f"{math.exp(log_scale):.4g} (= exp of the stored {log_scale:.4g}){bias}. "
              f"Embeddings are L2-normalised.", ""]
    if result["notes"]:
        L += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    L += ["## Files", ""] + [f"- `{f}`" for f in result["files"] if "/" not in f]
    for folder, what in (("tokenizer", "tokenizer files for ONNX users"),
                         ("image_processor", "image processor files for ONNX users"),
                         ("audio_feature_extractor", "audio feature extractor files for ONNX users"),
                         ("hf", "the Hugging Face towers' config.json and tokenizer / preprocessor files, which "
                                "align.load builds them from")):
        if any(f.startswith(folder + "/") for f in result["files"]):
            L.append(f"- `{folder}/` ({what})")
    L.append("")

    # -- how to load --
    L += ["## Use it", ""]
    if "open_clip" in result["formats"]:
        L += ["### open_clip", "", "```python", "import open_clip",
              "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:path/to/this/folder')",
              "tokenizer = open_clip.get_tokenizer('local-dir:path/to/this/folder')",
              "z_img = model.encode_image(preprocess(image)[None], normalize=True)",
              "z_txt = model.encode_text(tokenizer(['a photo of a cat']), normalize=True)", "```", "",
              "open_clip's `preprocess` converts with PIL's `convert('RGB')` after resizing (a palette or 1-bit image "
              "is then resized with NEAREST); align makes images RGB first, turned by their EXIF orientation and "
              "with transparency on white: for such files pass "
              "`align.media.image.upright_rgb(image)` (or the same steps, as the onnxruntime code below does).", "",
              "CLIP_benchmark: `clip_benchmark eval --model local-dir:path/to/this/folder --pretrained '' "
              "--no_amp ...` (on CPU `--no_amp` avoids bfloat16 autocast).", ""]
    if pp is not None:
        L += ["### onnxruntime", "",
              "Each `<tower>.onnx` takes the preprocessed batch (`input`) and returns L2-normalised embeddings "
              "(`embedding`), batch size free. `preprocess.json` describes the preprocessing; the code below "
              "implements it with numpy (tokenizers: open_clip's or transformers', from `tokenizer/`; align is not "
              "needed).", "", "```python", onnx_snippet(pp).rstrip(), "```", "", "```python", _usage(pp), "```", ""]
        if "audio" in pp["towers"] and pp["towers"]["audio"]["preprocess"].get("eval_clips", 1) > 1:
            L += [f"Audio: align embeds a recording as the mean of the L2-normalised embeddings of its "
                  f"{pp['towers']['audio']['preprocess']['eval_clips']} evenly spaced clips (`audio_clips`), "
                  f"L2-normalised; `embed_audio` does the same.", ""]
    L += ["### align", "", "```python", "import align", "model = align.load('path/to/this/folder')",
          "z = model.encode_text(model.tokenize(['a photo of a cat']))", "```", ""]

    # -- training and results --
    L += _training(recipe, info)
    ev, reports = info.get("eval"), info.get("reports") or []
    if ev or reports:
        L += ["## Benchmarks", ""]
        if ev:
            L += [f"Last evaluation during training (step {ev.get('step')}, {EVAL}):", "",
                  "| metric | value |", "|---|---:|"]
            L += [f"| {k} | {_fmt(v)} |" for k, v in ev.items() if k != "step"] + [""]
        if reports:
            from align.bench.report import markdown_table
            L += ["Benchmark results (%, CLIP_benchmark definitions):", "", markdown_table(reports)]
    L += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(L)
