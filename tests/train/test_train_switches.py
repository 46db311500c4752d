"""Every model.*, loss.*, train.*, eval.* and resume switch of a recipe, through `train()`.

Each test fails when its switch is ignored (tools/mutate.py plants exactly that and checks). The
table in tests/README.md maps each switch to its test. Runs are tiny and in-process (~0.5 s each).
"""
import math
import os

import pytest
import torch

from align.errors import AlignError
from tests.losses.loss_reference import ref_clip, ref_siglip
from tests.switch_helpers import Spy, checkpoints, final_weights, metrics, recipe, train_dict


# -- model.* and loss.* -------------------------------------------------------------------------
@pytest.mark.parametrize("loss,init_bias,ref", [("clip", None, "clip"), ("siglip", -5.0, "siglip"),
                                                 ("chunked_clip", None, "clip")])
def test_loss_type_and_temperature_init_match_a_plain_reference(tmp_path, monkeypatch, loss, init_bias, ref):
    """lr=0: the logged loss of step 1 is the plain reference loss of the embeddings that step computed,
    at exp(model.init_logit_scale) (and model.init_logit_bias for SigLIP)."""
    spy = Spy(monkeypatch)
    r = recipe(tmp_path, loss, loss={"type": loss, "chunk_size": 2} if loss.startswith("chunked") else {"type": loss},
               model={"init_logit_scale": 1.5, "init_logit_bias": init_bias}, train={"lr": 0.0, "max_steps": 1})
    train_dict(r)
    row = metrics(r["output_dir"])[0]
    out = {k: v.double() for k, v in spy.forwards[0]["out"].items()}
    assert math.isclose(row["logit_scale"], math.exp(1.5), rel_tol=1e-6)
    if ref == "clip":
        expect = ref_clip(out["image"], out["text"], math.exp(1.5))
    else:
        assert math.isclose(row["logit_bias"], init_bias, rel_tol=1e-6)
        expect = ref_siglip(out["image"], out["text"], math.exp(1.5), init_bias)
    assert math.isclose(row["loss"], float(expect), rel_tol=1e-5), (row["loss"], float(expect))


def _matmul_shapes(r):
    """2-D shapes of every matmul result during train(r) (the contrastive logits among them)."""
    shapes = []

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if getattr(func, "__name__", "") in ("matmul", "__matmul__", "mm") and torch.is_tensor(out) and out.dim() == 2:
                shapes.append(tuple(out.shape))
            return out

    with Mode():
        train_dict(r)
    return shapes


def test_chunked_clip_computes_logits_chunk_size_rows_at_a_time(tmp_path):
    """loss.type=chunked_clip with loss.chunk_size=2: logits [2, 8], never the full [8, 8]; clip: [8, 8]."""
    plain = _matmul_shapes(recipe(tmp_path, "clip", train={"max_steps": 1}))
    chunked = _matmul_shapes(recipe(tmp_path, "chunked", loss={"type": "chunked_clip", "chunk_size": 2},
                                    train={"max_steps": 1}))
    assert (8, 8) in plain and (2, 8) not in plain
    assert (2, 8) in chunked and (8, 8) not in chunked


def test_loss_pairs_and_weights_through_training(tmp_path, monkeypatch):
    """Three towers, loss.pairs image-text and audio-text weighted 1 and 0.25: the logged loss is that sum."""
    spy = Spy(monkeypatch)
    audio = {"type": "audio", "clip_seconds": 0.5, "n_mels": 16, "patch": 8, "width": 32, "layers": 1, "heads": 2}
    r = recipe(tmp_path, "pairs", train={"lr": 0.0, "max_steps": 1},
               loss={"pairs": [["image", "text"], ["audio", "text"]], "weights": [1.0, 0.25]})
    r["model"]["towers"] = {"audio": audio}
    train_dict(r)
    out = {k: v.double() for k, v in spy.forwards[0]["out"].items()}
    s = float(out["logit_scale"])
    expect = ref_clip(out["image"], out["text"], s) + 0.25 * ref_clip(out["audio"], out["text"], s)
    assert math.isclose(metrics(r["output_dir"])[0]["loss"], float(expect), rel_tol=1e-5)


def test_max_logit_scale_clamps_the_temperature(tmp_path):
    r = recipe(tmp_path, "clamp", model={"init_logit_scale": 5.0, "max_logit_scale": 50.0}, train={"max_steps": 1})
    train_dict(r)
    assert math.isclose(metrics(r["output_dir"])[0]["logit_scale"], 50.0, rel_tol=1e-5)


def test_embed_dim_and_open_clip_config_shape_the_model(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    r = recipe(tmp_path, "dim", model={"embed_dim": 24}, train={"max_steps": 1})
    r["model"]["open_clip"]["vision_cfg"]["width"] = 48
    train_dict(r)
    assert spy.forwards[0]["out"]["image"].shape == (8, 24) and spy.forwards[0]["out"]["text"].shape == (8, 24)
    w = final_weights(r["output_dir"])
    assert any(v.dim() == 4 and v.shape[0] == 48 for k, v in w.items() if k.startswith("towers.image")), \
        "the image tower's patch embedding has the configured width"


def test_text_trim_padding_false_runs_the_full_context(tmp_path, monkeypatch):
    """Synthetic caption = 4 tokens of context_length 12: trimmed, the text transformer runs over 8
    positions (a multiple of 8); with model.towers.text.trim_padding: false over all 12."""
    spy = Spy(monkeypatch)
    train_dict(recipe(tmp_path, "trim", train={"max_steps": 1}))
    trimmed = set(spy.seq_lens)
    spy.seq_lens.clear()
    r = recipe(tmp_path, "full", train={"max_steps": 1})
    r["model"]["towers"] = {"text": {"trim_padding": False}}
    train_dict(r)
    image_len = (16 // 4) ** 2 + 1
    assert trimmed == {image_len, 8} and set(spy.seq_lens) == {image_len, 12}


def _saved_tensors_during(r):
    n = [0]

    def pack(t):
        n[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_dict(r)
    return n[0]


@pytest.mark.parametrize("where", ["train", "tower"])
def test_grad_checkpointing_saves_fewer_activations(tmp_path, where):
    """train.grad_checkpointing (every tower) or model.towers.image.grad_checkpointing (one tower):
    fewer tensors saved for backward during the training step."""
    def r(name, on):
        out = recipe(tmp_path, name, train={"max_steps": 1})
        for c in ("vision_cfg", "text_cfg"):
            out["model"]["open_clip"][c]["layers"] = 3
        if on and where == "train":
            out["train"]["grad_checkpointing"] = True
        if on and where == "tower":
            out["model"]["towers"] = {"image": {"grad_checkpointing": True}}
        return out
    plain, ckpt = _saved_tensors_during(r("plain", False)), _saved_tensors_during(r("ckpt", True))
    assert ckpt < (0.6 if where == "train" else 0.85) * plain, (plain, ckpt)


# -- train.* ------------------------------------------------------------------------------------
def test_optimizer_and_schedule_settings_reach_every_step(tmp_path, monkeypatch):
    """train.lr, warmup_steps, min_lr_ratio, weight_decay, betas, eps, max_steps: the values each AdamW
    step used, against the warmup + cosine formula written out here."""
    spy = Spy(monkeypatch)
    tc = {"lr": 0.01, "warmup_steps": 2, "min_lr_ratio": 0.1, "weight_decay": 0.05, "betas": [0.8, 0.9],
          "eps": 1e-5, "max_steps": 6}
    train_dict(recipe(tmp_path, "opt", train=tc))
    assert len(spy.steps) == 6
    for k, st in enumerate(spy.steps):
        factor = (k + 1) / 2 if k < 2 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (k - 2) / 4))
        decay, skip = st["groups"]
        assert decay["n_params"] > 0 and skip["n_params"] > 0     # the lr below is the one the weights get
        assert math.isclose(decay["lr"], 0.01 * factor, rel_tol=1e-9), (k, decay["lr"])
        assert decay["weight_decay"] == 0.05 and skip["weight_decay"] == 0.0
        assert tuple(decay["betas"]) == (0.8, 0.9) and decay["eps"] == 1e-5


def test_grad_clip_bounds_the_applied_gradient_norm(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    train_dict(recipe(tmp_path, "free", train={"max_steps": 2}))
    free = [spy.grad_norm(i) for i in range(2)]
    spy.steps.clear()
    train_dict(recipe(tmp_path, "clip", train={"max_steps": 2, "grad_clip": 0.01}))
    assert min(free) > 0.02
    assert all(spy.grad_norm(i) <= 0.01 * (1 + 1e-4) for i in range(2))


def test_gradcache_gradients_equal_one_dense_large_batch_step(tmp_path, monkeypatch):
    """train.accum_steps=2 x batch 4 applies the gradients of one batch-8 step on the same 8 samples."""
    from tests.wds_helpers import make_shards
    paths, _ = make_shards(tmp_path / "shards", 1, 16)
    spy = Spy(monkeypatch)
    data = {"train": paths[0], "shuffle_buffer": 1, "num_workers": 0}
    train_dict(recipe(tmp_path, "dense", data=data, train={"max_steps": 1, "batch_size": 8}))
    dense_in, dense = spy.forwards[0]["inputs"], spy.steps[0]["grads"]
    spy.steps.clear()
    spy.forwards.clear()
    train_dict(recipe(tmp_path, "gc", data=data, train={"max_steps": 1, "batch_size": 4, "accum_steps": 2}))
    assert len(spy.steps) == 1
    gc_in = {m: torch.cat([f["inputs"][m] for f in spy.forwards]) for m in dense_in}
    assert all(torch.equal(gc_in[m], dense_in[m]) for m in dense_in)    # the same 8 samples
    for a, b in zip(dense, spy.steps[0]["grads"]):
        if a is None:
            assert b is None
            continue
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().max())), float((a - b).abs().max())


def test_compile_trains_the_compiled_model(tmp_path, monkeypatch):
    """train.compile: the loop trains through what torch.compile returned (a counting stand-in here;
    the real inductor run is the slow test_torch_compile_trains_like_eager)."""
    compiled, calls = [], [0]

    class Compiled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *a, **k):
            calls[0] += 1
            return self.m(*a, **k)

    def fake_compile(m, *a, **k):
        compiled.append((m, k))
        return Compiled(m)

    monkeypatch.setattr(torch, "compile", fake_compile)
    train_dict(recipe(tmp_path, "plain", train={"max_steps": 2}))
    assert compiled == [] and calls[0] == 0
    train_dict(recipe(tmp_path, "comp", train={"max_steps": 2, "compile": True}))
    assert len(compiled) == 1 and calls[0] == 2
    # Static shapes: the towers share one forward code object, and dynamo's automatic dynamic shapes made the
    # second tower's graph dynamic (ViT-Tiny on CPU: 4.1 s a step against 2.6 s; benchmarks/RESULTS.md).
    assert compiled[0][1].get("dynamic") is False


def test_batch_size_epochs_and_synthetic_size(tmp_path, monkeypatch):
    """train.epochs=2 of data.synthetic_size=24 at train.batch_size=6: 8 steps of 6, epoch 1 from step 5."""
    spy = Spy(monkeypatch)
    r = recipe(tmp_path, "ep", data={"synthetic_size": 24}, train={"batch_size": 6, "max_steps": None, "epochs": 2})
    assert train_dict(r)["steps"] == 8
    assert all(f["inputs"]["image"].shape[0] == 6 for f in spy.forwards) and len(spy.forwards) == 8
    assert [row["epoch"] for row in metrics(r["output_dir"])] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_synthetic_caption_is_the_text_trained_on(tmp_path, monkeypatch):
    import open_clip
    spy = Spy(monkeypatch)
    train_dict(recipe(tmp_path, "cap", data={"synthetic_caption": "a red fox"}, train={"max_steps": 1}))
    text = spy.forwards[0]["inputs"]["text"]
    assert torch.equal(text, open_clip.tokenize(["a red fox"] * 8, context_length=12))


def test_checkpoint_every_and_keep_last(tmp_path):
    r = recipe(tmp_path, "ck", train={"max_steps": 6, "checkpoint_every": 2, "keep_last": 2})
    train_dict(r)
    assert checkpoints(r["output_dir"]) == ["step-00000004", "step-00000006"]
    r = recipe(tmp_path, "ck5", train={"max_steps": 6, "checkpoint_every": 2, "keep_last": 5})
    train_dict(r)
    assert checkpoints(r["output_dir"]) == ["step-00000002", "step-00000004", "step-00000006"]


def test_log_every(tmp_path):
    r = recipe(tmp_path, "log", train={"max_steps": 6, "log_every": 4})
    train_dict(r)
    assert [row["step"] for row in metrics(r["output_dir"])] == [4, 6]


def test_seed_sets_the_initial_weights(tmp_path):
    """lr=0: the saved weights are the initial ones (the data, also seeded, cannot move them)."""
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        r = recipe(tmp_path, name, seed=seed, train={"max_steps": 1, "lr": 0.0})
        train_dict(r)
        runs[name] = final_weights(r["output_dir"])
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def _torch_settings():
    return (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(), torch.utils.deterministic.fill_uninitialized_memory)


def test_num_threads_and_deterministic_are_applied_then_restored(tmp_path, monkeypatch):
    """Each optimizer step runs with train.num_threads and deterministic algorithms; when train() returns,
    normally or by an error, torch's thread count and determinism flags are what they were before."""
    before = _torch_settings()
    want = 3 if before[0] != 3 else 2
    seen, real_step = [], torch.optim.AdamW.step

    def step(opt, *a, **k):
        seen.append(_torch_settings())
        return real_step(opt, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    try:
        torch.use_deterministic_algorithms(False)     # a known start, each flag the opposite of what the run sets
        torch.utils.deterministic.fill_uninitialized_memory = True
        start = _torch_settings()
        train_dict(recipe(tmp_path, "thr", train={"max_steps": 1, "num_threads": want, "deterministic": True}))
        assert seen == [(want, True, True, False)]
        assert _torch_settings() == start
        bad = recipe(tmp_path, "err", model={"init_logit_scale": float("nan")},
                     train={"max_steps": 3, "max_bad_steps": 1, "num_threads": want, "deterministic": True})
        with pytest.raises(AlignError, match="NaN/Inf"):
            train_dict(bad)
        assert _torch_settings() == start
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.utils.deterministic.fill_uninitialized_memory = before[3]


def test_max_bad_steps(tmp_path):
    r = recipe(tmp_path, "nan", model={"init_logit_scale": float("nan")}, train={"max_steps": 10, "max_bad_steps": 2})
    with pytest.raises(AlignError, match="NaN/Inf for 2 steps in a row"):
        train_dict(r)


# -- resume ------------------------------------------------------------------------------------
def test_resume_auto_none_and_path(tmp_path, monkeypatch):
    """auto: continues from the newest checkpoint; none: starts again at step 0; PATH: from that one.
    Which step each run starts at is read off the AdamW steps it takes and its metrics rows."""
    spy = Spy(monkeypatch)
    base = recipe(tmp_path, "run", resume="auto", train={"max_steps": 4, "checkpoint_every": 2})
    train_dict(base)
    spy.steps.clear()
    train_dict(dict(base, train=dict(base["train"], max_steps=6)))            # auto: steps 5 and 6
    assert len(spy.steps) == 2
    assert [row["step"] for row in metrics(base["output_dir"])][-2:] == [5, 6]
    spy.steps.clear()
    fresh = dict(base, resume="none", output_dir=os.path.join(tmp_path, "fresh"),
                 train=dict(base["train"], max_steps=3))
    train_dict(fresh)                                                         # none: 3 fresh steps
    assert len(spy.steps) == 3 and [row["step"] for row in metrics(fresh["output_dir"])] == [1, 2, 3]
    spy.steps.clear()
    step2 = os.path.join(tmp_path, "keep", "step-00000002")
    import shutil
    shutil.copytree(os.path.join(base["output_dir"], "checkpoints", "step-00000002"), step2)
    other = recipe(tmp_path, "other", resume=step2, train={"max_steps": 4, "checkpoint_every": 0})
    train_dict(other)                                                         # PATH: steps 3 and 4
    assert len(spy.steps) == 2 and [row["step"] for row in metrics(other["output_dir"])] == [3, 4]


def test_a_fresh_start_into_a_run_with_checkpoints_is_refused(tmp_path, monkeypatch):
    """resume=none, or a checkpoint of another run, into an output_dir that holds checkpoints: one AlignError line
    naming the folder and its newest checkpoint, before a step is taken or a file written; a checkpoint inside the
    same output_dir (a rewind) is allowed."""
    import shutil
    spy = Spy(monkeypatch)
    base = recipe(tmp_path, "run", resume="auto", train={"max_steps": 4, "checkpoint_every": 2})
    train_dict(base)
    run = base["output_dir"]
    shutil.copytree(os.path.join(run, "checkpoints", "step-00000002"), os.path.join(tmp_path, "elsewhere"))
    before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, fs in os.walk(run) for p in fs}
    for resume in ("none", os.path.join(tmp_path, "elsewhere")):
        spy.steps.clear()
        with pytest.raises(AlignError) as e:
            train_dict(dict(base, resume=resume))
        msg = str(e.value)
        assert "\n" not in msg and run in msg and "step-00000004" in msg and "resume=auto" in msg
        assert spy.steps == []
    assert {p: os.path.getmtime(os.path.join(d, p)) for d, _, fs in os.walk(run) for p in fs} == before
    spy.steps.clear()
    train_dict(dict(base, resume=os.path.join(run, "checkpoints", "step-00000002")))   # a rewind: steps 3, 4
    assert len(spy.steps) == 2


@pytest.mark.parametrize("how", ["same_recipe", "extended"])
def test_restored_scheduler_follows_the_schedule(tmp_path, monkeypatch, how):
    """Resumed at step 3 of 6, each AdamW step uses the lr of the schedule computed here from the
    recipe (not a value restored from the checkpoint itself). same_recipe: a 6-step run's step-6
    checkpoint is removed, so it resumes from step 3; extended: a finished 3-step run is resumed with
    train.max_steps=6 (its saved schedule had decayed to 0 at step 3)."""
    import shutil
    spy = Spy(monkeypatch)
    tc = {"lr": 0.01, "warmup_steps": 2, "min_lr_ratio": 0.0, "max_steps": 6 if how == "same_recipe" else 3,
          "checkpoint_every": 3}
    r = recipe(tmp_path, "s", resume="auto", train=tc)
    train_dict(r)
    if how == "same_recipe":
        shutil.rmtree(os.path.join(r["output_dir"], "checkpoints", "step-00000006"))
    spy.steps.clear()
    train_dict(dict(r, train=dict(r["train"], max_steps=6)))
    lrs = [st["groups"][0]["lr"] for st in spy.steps]
    assert len(lrs) == 3
    for k, lr in zip(range(3, 6), lrs):
        t = (k - 2) / 4
        assert math.isclose(lr, 0.01 * 0.5 * (1 + math.cos(math.pi * t)), rel_tol=1e-9), (k, lr)


# -- eval.* ------------------------------------------------------------------------------------
def _val_dir(root):
    """A 12-item CLIP_benchmark-layout val set with labels and captions (zero-shot and retrieval)."""
    import numpy as np
    from tests.bench.conftest import png_bytes, write_wds
    rng = np.random.default_rng(0)
    samples = [(f"v{i:03d}", {"png": png_bytes(rng), "cls": str(i % 3), "txt": f"a photo number {i}"})
               for i in range(12)]
    return write_wds(str(root), samples, classnames=["cat", "dog", "car"], templates=["a photo of a {c}."])


def test_eval_every_tasks_best_metric_and_batch_size(tmp_path, monkeypatch):
    import json
    from align.model import AlignModel
    val = _val_dir(tmp_path / "val")
    eval_batches = []
    real = AlignModel.encode

    def encode(model, modality, x, normalize=True):
        eval_batches.append((modality, x.shape[0]))
        return real(model, modality, x, normalize)
    monkeypatch.setattr(AlignModel, "encode", encode)
    r = recipe(tmp_path, "ev", data={"val": val}, train={"max_steps": 4},
               eval={"every": 2, "tasks": ["zeroshot"], "best_metric": "image/zeroshot/acc1", "batch_size": 5})
    train_dict(r)
    rows = [json.loads(line) for line in open(os.path.join(r["output_dir"], "eval.jsonl"))]
    assert [row["step"] for row in rows] == [2, 4]                                   # eval.every (+ the end)
    assert all(any("zeroshot" in k for k in row) and not any("retrieval" in k for k in row) for row in rows)
    images = [n for m, n in eval_batches if m == "image"]
    assert images and max(images) == 5                                                # eval.batch_size
    assert any("best" in d for d in os.listdir(os.path.join(r["output_dir"], "checkpoints")))  # eval.best_metric
    eval_batches.clear()
    r2 = recipe(tmp_path, "ev2", data={"val": val}, train={"max_steps": 2}, eval={"every": 0})
    train_dict(r2)
    rows = [json.loads(line) for line in open(os.path.join(r2["output_dir"], "eval.jsonl"))]
    assert [row["step"] for row in rows] == [2] and any("retrieval" in k for k in rows[0])
    assert not any("best" in d for d in os.listdir(os.path.join(r2["output_dir"], "checkpoints")))


def test_the_same_command_on_a_finished_run_changes_nothing(tmp_path, monkeypatch, capsys):
    """A requeued job re-ran a finished run: "resumed at step 4", summary.json got final_loss NaN, and with other
    settings config.yaml was rewritten to claim them over weights trained with the first ones. Each rerun says so
    in one line."""
    spy = Spy(monkeypatch)
    base = recipe(tmp_path, "run", resume="auto", train={"max_steps": 4, "checkpoint_every": 2})
    first = train_dict(base)
    run = base["output_dir"]
    before = {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(run) for f in fs
              if not f.startswith("align.lock") and "tb" not in d}
    spy.steps.clear()
    capsys.readouterr()
    for again in (base, dict(base, train=dict(base["train"], lr=0.5))):
        assert train_dict(again) == first and spy.steps == []
    said = [ln for ln in capsys.readouterr().out.splitlines() if "already trained to step" in ln]
    assert said == [f"{run}: already trained to step 4 (train.max_steps); nothing to do, nothing rewritten (raise "
                    f"train.max_steps to train on)"] * 2, said
    after = {p: open(p, "rb").read() for p in before}
    assert after == before and math.isfinite(first["final_loss"])


def test_a_resume_with_other_settings_keeps_the_config_of_the_first_steps(tmp_path, capsys):
    base = recipe(tmp_path, "run", resume="auto", train={"max_steps": 2, "checkpoint_every": 2})
    train_dict(base)
    train_dict(dict(base, train=dict(base["train"], max_steps=4, lr=0.02)))
    import yaml
    run = base["output_dir"]
    kept = yaml.safe_load(open(os.path.join(run, "config.step-00000002.yaml")))
    now = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    assert (kept["train"]["max_steps"], now["train"]["max_steps"], now["train"]["lr"]) == (2, 4, 0.02)
    out = capsys.readouterr().out
    assert "resumed at step 2 with 2 changed settings (train.lr:" in out and "train.max_steps: 2 -> 4" in out


def test_a_new_run_refuses_a_folder_of_someone_elses_files_of_its_names(tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    r = recipe(tmp_path, "mine", resume="auto", train={"max_steps": 1})
    os.makedirs(r["output_dir"])
    for name, text in (("config.yaml", "experiment: 7\n"), ("metrics.jsonl", '{"step": 5}\n')):
        with open(os.path.join(r["output_dir"], name), "w") as f:
            f.write(text)
    for resume in ("auto", "none"):
        with pytest.raises(AlignError, match=r"holds config.yaml, metrics.jsonl of no align run"):
            train_dict(dict(r, resume=resume))
    assert spy.steps == [] and open(os.path.join(r["output_dir"], "metrics.jsonl")).read() == '{"step": 5}\n'
    os.remove(os.path.join(r["output_dir"], "config.yaml"))
    with open(os.path.join(r["output_dir"], "notes.txt"), "w") as f:
        f.write("mine")
    os.remove(os.path.join(r["output_dir"], "metrics.jsonl"))
    train_dict(r)                                     # other files are left alone and do not stop a run
    assert open(os.path.join(r["output_dir"], "notes.txt")).read() == "mine" and len(spy.steps) == 1


def test_an_output_dir_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    for where, msg in ((tmp_path / "afile", "exists and is not a folder"),
                       (tmp_path / "afile" / "sub", "cannot create the run's folder")):
        with pytest.raises(AlignError, match=msg):
            train_dict(recipe(tmp_path, "x", output_dir=str(where), train={"max_steps": 1}))
