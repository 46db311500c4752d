"""Export test helpers: a saved tiny run (recipe + perturbed weights) that `align.load` accepts, fast.

`make_run(tmp_path, ...)` builds the model from a tiny recipe, perturbs every weight (so
nothing is at its initial value and a wrong mapping shows), and writes RUN/config.yaml and
RUN/checkpoints/step-00000001/model.safetensors, exactly the files training leaves.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from align.train.checkpoint import save_checkpoint
from align.config import parse_recipe, recipe_to_dict
from align.model import build_model
from tests.conftest import TINY_OPEN_CLIP

TINY_AUDIO_CNN = {"type": "audio_cnn", "clip_seconds": 0.5, "n_mels": 16, "channels": [4, 8]}
TINY_AUDIO_VIT = {"type": "audio", "clip_seconds": 0.31, "n_mels": 32, "width": 32, "layers": 1, "heads": 2,
                  "patch": 8, "patch_stride": [8, 4]}


def make_run(root, *, towers=None, open_clip=True, embed_dim=16, logit_bias=None, summary=None, evals=None,
             seed=0, name=None, pairs=None, noise=0.02, limits=None):
    """Writes a run dir under root/run and returns (run_dir, model); noise: the std of the random numbers
    added to every parameter; limits: the recipe's data.limits."""
    model_sec = {"embed_dim": embed_dim}
    if open_clip:
        model_sec["open_clip"] = json.loads(json.dumps(TINY_OPEN_CLIP))
    if towers:
        model_sec["towers"] = towers
    d = {"output_dir": str(root / "run"), "model": model_sec, "data": {"train": "synthetic"},
         "train": {"max_steps": 1}}
    if logit_bias is not None:
        model_sec["init_logit_bias"] = logit_bias
        d["loss"] = {"type": "siglip"}
    if name:
        d["name"] = name
    if pairs:
        d.setdefault("loss", {})["pairs"] = pairs
    if limits:
        d["data"]["limits"] = limits
    r = parse_recipe(d)
    model = build_model(r.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
        for mod in model.modules():            # BatchNorm running stats too, so eval mode is exercised
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
    run = root / "run"
    os.makedirs(run, exist_ok=True)
    with open(run / "config.yaml", "w") as f:
        yaml.safe_dump(recipe_to_dict(r), f, sort_keys=False)
    save_checkpoint(str(run / "checkpoints"), "step-00000001", model.state_dict(), state={"step": 1})
    if summary is not None:
        json.dump(summary, open(run / "summary.json", "w"))
    if evals is not None:
        with open(run / "eval.jsonl", "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in evals)
    return str(run), model.eval()


class WithoutAlign:
    """A fresh interpreter that must not import align (asserted at its end), started at once: it makes its slow
    imports (torch, open_clip, onnxruntime: ~7 s) while this process writes what it will read; run(code) then gives
    it the code (on stdin) and waits for it."""

    PRELOAD = "import numpy, torch, open_clip, onnxruntime, PIL.Image\n"

    def __init__(self, cwd):
        env = dict(os.environ, PYTHONPATH="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.p = subprocess.Popen([sys.executable, "-c", self.PRELOAD + "import sys\n"
                                   "exec(compile(sys.stdin.read(), '<code>', 'exec'))"], cwd=str(cwd), env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, code: str) -> str:
        """code run to its end (exit 0, align never imported); -> its stdout."""
        code += ("\nimport sys\nassert not any(m == 'align' or m.startswith('align.') for m in sys.modules), "
                 "'align imported'\n")
        out, err = self.p.communicate(code, timeout=300)
        assert self.p.returncode == 0, err[-3000:]
        return out

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate()


@pytest.fixture
def tiny_run(tmp_path):
    return make_run(tmp_path)


CAPTIONS = ["a photo of a dog.", "An orange CAT on a red sofa, photographed from above!", "",
            "a very long caption that is certainly longer than the twelve token context of the tiny model"]
SR = 16000


def write_images(d):
    """Non-square RGB, grey and RGBA PNGs, and a JPEG stored on its side with EXIF orientation 6 (a phone photo):
    the transform's resize/crop/convert paths and align's upright decoding all run."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w, mode) in enumerate([(20, 31, "RGB"), (40, 17, "L"), (16, 16, "RGBA")]):
        shape = (h, w) if mode == "L" else (h, w, len(mode))
        p = os.path.join(d, f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(p)
        paths.append(p)
    img = Image.fromarray(np.repeat(np.linspace(0, 255, 36, dtype=np.uint8)[None, :, None], 18, 0).repeat(3, 2))
    exif = img.getexif()
    exif[0x0112] = 6
    paths.append(os.path.join(d, "img3.jpg"))
    img.save(paths[-1], quality=95, exif=exif)
    return paths


def write_waves(d):
    """Mono float32 waves at SR: longer than the clip (centre crop) and shorter (zero padding)."""
    import numpy as np
    rng = np.random.default_rng(1)
    paths = []
    for i, n in enumerate([9000, 3000]):
        t = np.arange(n) / SR
        w = (0.3 * np.sin(2 * np.pi * (300 + 500 * i) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        paths.append(os.path.join(d, f"wave{i}.npy"))
        np.save(paths[-1], w)
    return paths


def readme_snippet(out_dir) -> str:
    """The onnxruntime code block of the export's README.md, pointed at out_dir."""
    text = open(os.path.join(out_dir, "README.md")).read()
    start = text.index("```python\n", text.index("### onnxruntime")) + len("```python\n")
    code = text[start:text.index("```", start)]
    assert 'EXPORT_DIR = "."' in code
    return code.replace('EXPORT_DIR = "."', f"EXPORT_DIR = {str(out_dir)!r}")


OUTSIDE = """
import json, numpy as np, torch, open_clip
from PIL import Image
IMAGES, CAPTIONS, WAVES = {images!r}, {captions!r}, {waves!r}

# 1. open_clip alone
name = 'local-dir:' + {out!r}
model, _, preprocess = open_clip.create_model_and_transforms(name)
model.eval()
tok = open_clip.get_tokenizer(name)
tokens = tok(CAPTIONS)
with torch.no_grad():
    x = torch.stack([preprocess(Image.open(p)) for p in IMAGES])
    np.save('oc_img.npy', model.encode_image(x, normalize=True).numpy())
    np.save('oc_txt.npy', model.encode_text(tokens, normalize=True).numpy())
np.save('oc_tokens.npy', tokens.numpy())
json.dump({{'logit_scale': model.logit_scale.item(), 'class': type(model).__name__,
           'logit_bias': None if model.logit_bias is None else model.logit_bias.item()}}, open('oc.json', 'w'))

# 2. the README's onnxruntime snippet
{snippet}
x_img = np.stack([preprocess_image(Image.open(p)) for p in IMAGES])
np.save('ort_img_in.npy', x_img)
np.save('ort_img.npy', embed('image', x_img))
np.save('ort_tokens.npy', tokenize(CAPTIONS))
np.save('ort_txt.npy', embed('text', tokenize(CAPTIONS)))
x_aud = np.stack([log_mel(audio_clips(np.load(p), {sr})[0]) for p in WAVES])
np.save('ort_aud_in.npy', x_aud)
np.save('ort_aud.npy', embed('audio', x_aud))
"""


@pytest.fixture(scope="session")
def outside(tmp_path_factory):
    """One image+text+audio model exported with fmt=all, then used by one interpreter WITHOUT align:
    through open_clip (open_clip format) and through the README's onnxruntime snippet. Outputs are
    .npy files in `root`; tests compare them with align's own pipeline."""
    from types import SimpleNamespace

    from align.export import export
    root = tmp_path_factory.mktemp("outside")
    outside = WithoutAlign(root)        # its imports overlap the export's work here
    try:
        run, model = make_run(root, towers={"audio": TINY_AUDIO_VIT})
        out = root / "export"
        res = export(run, str(out), fmt="all", progress=False)
        images, waves = write_images(str(root)), write_waves(str(root))
        outside.run(OUTSIDE.format(images=images, captions=CAPTIONS, waves=waves, out=str(out), sr=SR,
                                   snippet=readme_snippet(out)))
    finally:
        outside.close()
    return SimpleNamespace(root=root, run=run, out=str(out), result=res, images=images, waves=waves,
                           captions=CAPTIONS, model=model)


def assert_open_clip_format_refused(tmp_path, towers: dict, tower_class: str) -> None:
    """`align export --format all` of a run with these towers writes align and ONNX form only, and one note says
    open_clip's format cannot hold `tower_class` (a tower open_clip has no counterpart for)."""
    from align.export import export
    run, _ = make_run(tmp_path, towers=towers)
    res = export(str(run), str(tmp_path / "out"), fmt="all", progress=False)
    assert res["formats"] == ["align", "onnx"]
    assert any(f"{tower_class}, not an open_clip tower" in n for n in res["notes"]), res["notes"]
