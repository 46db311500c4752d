"""Optimizer groups, LR schedule and synthetic data against plain references."""
import math

import pytest
import torch

from align.config import TrainConfig, parse_recipe
from align.model import AlignModel, build_model
from align.data.stream.synthetic import SyntheticLoader
from align.train.optim import WarmupCosine, build_optimizer, build_scheduler, no_decay


def test_no_weight_decay_on_biases_norms_temperature_embeddings(tiny_recipe):
    model = build_model(parse_recipe(tiny_recipe).model)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    decay_ids = {id(p) for p in opt.param_groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    for n, p in model.named_parameters():
        parts = n.split(".")
        expect_skip = p.ndim < 2 or any(x in ("token_embedding", "positional_embedding", "class_embedding")
                                        for x in parts)
        assert (id(p) not in decay_ids) == expect_skip, n
    assert any("token_embedding" in names[i] for i in {id(p) for p in opt.param_groups[1]["params"]})
    assert no_decay("towers.image.net.conv1.weight", torch.zeros(2, 2, 2, 2)) is False


def test_warmup_cosine_matches_formula():
    f = WarmupCosine(warmup=10, total=110, min_ratio=0.1)
    assert math.isclose(f(0), 0.1) and math.isclose(f(9), 1.0)
    for step in (10, 35, 60, 109, 200):
        t = min((step - 10) / 100, 1.0)
        assert math.isclose(f(step), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def test_scheduler_state_is_json_safe(tiny_recipe):
    import json
    model = build_model(parse_recipe(tiny_recipe).model)
    opt = build_optimizer(model, TrainConfig(lr=1.0, warmup_steps=2))
    sched = build_scheduler(opt, TrainConfig(lr=1.0, warmup_steps=2), total_steps=10)
    for _ in range(3):
        opt.step()
        sched.step()
    state = json.loads(json.dumps(sched.state_dict()))
    from align.train.optim import restore_scheduler
    model2 = build_model(parse_recipe(tiny_recipe).model)
    opt2 = build_optimizer(model2, TrainConfig(lr=1.0, warmup_steps=2))
    sched2 = build_scheduler(opt2, TrainConfig(lr=1.0, warmup_steps=2), total_steps=10)
    restore_scheduler(sched2, state)

    def cosine(step):   # warmup 2, total 10, min ratio 0, written out (not read back from the state)
        return (step + 1) / 2 if step < 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / 8))
    assert opt2.param_groups[0]["lr"] == pytest.approx(cosine(3), rel=1e-12)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(cosine(4), rel=1e-12)


def test_synthetic_loader_resumes_exactly(tiny_recipe):
    model = build_model(parse_recipe(tiny_recipe).model)
    a = SyntheticLoader(model, batch_size=4, seed=3, samples_per_epoch=40)
    it = iter(a)
    first = [next(it) for _ in range(3)]
    state = a.state_dict()
    rest = [next(it)["image"] for _ in range(2)]
    b = SyntheticLoader(model, batch_size=4, seed=3, samples_per_epoch=40, resume_state=state)
    again = [x["image"] for _, x in zip(range(2), iter(b))]
    assert all(torch.equal(x, y) for x, y in zip(rest, again))
    assert not torch.equal(first[0]["image"], first[1]["image"])


def test_synthetic_text_is_the_caption_tokenized_as_open_clip_does(tiny_recipe):
    model = build_model(parse_recipe(tiny_recipe).model)
    batch = next(iter(SyntheticLoader(model, batch_size=4, samples_per_epoch=8, caption="Dummy caption")))
    import open_clip
    ref = open_clip.tokenize(["Dummy caption"] * 4, context_length=batch["text"].shape[1])
    assert torch.equal(batch["text"], ref)


def _saved_tensors(tower, x):
    n = [0]

    def pack(t):
        n[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tower(x).sum().backward()
    return n[0]


def test_grad_checkpointing_stores_fewer_activations_in_every_transformer_tower():
    from align.model import enable_grad_checkpointing
    from align.towers import build_tower
    from tests.conftest import TINY_OPEN_CLIP

    cfg = {**TINY_OPEN_CLIP, "vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "layers": 3},
           "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "layers": 3}}
    towers = {
        "image": build_tower({"type": "open_clip", "config": cfg}, "image", 16),
        "text": build_tower({"type": "open_clip", "config": cfg}, "text", 16),
        "audio": build_tower({"type": "audio", "clip_seconds": 0.5, "n_mels": 32, "patch": 8, "width": 32,
                              "layers": 3, "heads": 2}, "audio", 16),
    }
    inputs = {m: t.dummy_input(2) for m, t in towers.items()}
    before = {m: _saved_tensors(t, inputs[m]) for m, t in towers.items()}
    model = AlignModel(towers)
    assert sorted(enable_grad_checkpointing(model)) == ["audio", "image", "text"]
    for m, t in towers.items():
        assert _saved_tensors(t, inputs[m]) < before[m] / 2, m


# -- fine-tuning controls: per-tower lr, layer-wise lr decay, unlock after N steps -----------------
def _two_layer_recipe(tiny_recipe, **train):
    import copy
    r = copy.deepcopy(tiny_recipe)
    r["model"]["open_clip"]["vision_cfg"]["layers"] = 2
    r["train"].update(train)
    return r


def _expected_depth(name: str) -> int:
    """Written out by hand for open_clip's VisionTransformer / TextTransformer with 2 / 1 blocks."""
    tower, rest = name.split(".")[1], ".".join(name.split(".")[3:])
    n = 2 if tower == "image" else 1
    if rest.startswith("transformer.resblocks."):
        return int(rest.split(".")[2]) + 1
    if rest.split(".")[0] in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "token_embedding"):
        return 0
    assert rest.split(".")[0] in ("ln_post", "proj", "ln_final", "text_projection"), rest
    return n + 1


def test_tower_lr_and_layer_decay_give_each_parameter_its_lr(tiny_recipe):
    r = parse_recipe(_two_layer_recipe(tiny_recipe, lr=1e-3, tower_lr={"image": 1e-4}, layer_decay=0.5))
    model = build_model(r.model)
    opt = build_optimizer(model, r.train)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        if n.startswith("towers."):
            base, top = (1e-4, 3) if n.split(".")[1] == "image" else (1e-3, 2)
            want = base * 0.5 ** (top - _expected_depth(n))
        else:
            want = 1e-3                                       # temperature: train.lr
        assert math.isclose(lr_of[id(p)], want, rel_tol=1e-12), n
        assert wd_of[id(p)] == (0.0 if no_decay(n, p) else r.train.weight_decay), n
    # the schedule scales each group's own lr
    sched = build_scheduler(opt, TrainConfig(lr=1e-3, warmup_steps=4), total_steps=10)
    opt.step()
    sched.step()
    for g in opt.param_groups:
        assert math.isclose(g["lr"], g["initial_lr"] * 0.5, rel_tol=1e-9)


def test_plain_optimizer_keeps_two_groups(tiny_recipe):
    model = build_model(parse_recipe(tiny_recipe).model)
    assert len(build_optimizer(model, TrainConfig()).param_groups) == 2


def test_finetune_keys_are_checked(tiny_recipe):
    import pytest
    from align.errors import ConfigError
    for train, msg in (({"tower_lr": {"audio": 1e-4}}, "train.tower_lr.audio: no such tower"),
                       ({"layer_decay": 1.5}, r"train.layer_decay: must be in \(0, 1\]"),
                       ({"unlock_at_step": {"image": 3}}, "the image tower is not locked")):
        with pytest.raises(ConfigError, match=msg):
            parse_recipe(_two_layer_recipe(tiny_recipe, **train))


def _ckpt(run, step):
    from safetensors.torch import load_file
    import os
    return load_file(os.path.join(run, "checkpoints", f"step-{step:08d}", "model.safetensors"))


def test_training_uses_per_tower_lr(tiny_recipe):
    """Through train(): the optimizer saved in the checkpoint has the per-parameter lrs, and an image tower
    with a 1e-9 lr barely moves while the text tower trains."""
    import json
    import os
    from tests.train.test_train import _run
    r = _two_layer_recipe(tiny_recipe, tower_lr={"image": 1e-9}, layer_decay=0.8, max_steps=2, checkpoint_every=1)
    assert _run(r) == 0
    meta = json.load(open(os.path.join(r["output_dir"], "checkpoints", "step-00000002", "optim.json")))
    lrs = sorted({round(g["initial_lr"], 15) for g in meta["param_groups"]})
    want = sorted({round(b * 0.8 ** k, 15) for b, top in ((1e-9, 3), (1e-3, 2)) for k in range(top + 1)} | {1e-3})
    assert lrs == want
    a, b = _ckpt(r["output_dir"], 1), _ckpt(r["output_dir"], 2)
    img = max(float((a[k] - b[k]).abs().max()) for k in a if k.startswith("towers.image."))
    txt = max(float((a[k] - b[k]).abs().max()) for k in a if k.startswith("towers.text."))
    assert img < 1e-7 < 1e-4 < txt


def test_unlock_after_n_steps(tiny_recipe):
    """towers.image.lock + unlock_at_step.image=2: frozen for updates 1-2, trained from update 3."""
    from tests.train.test_train import _run
    r = _two_layer_recipe(tiny_recipe, unlock_at_step={"image": 2}, max_steps=4, checkpoint_every=1, keep_last=10)
    r["model"]["towers"] = {"image": {"lock": True}}
    assert _run(r) == 0
    c = {s: _ckpt(r["output_dir"], s) for s in (1, 2, 3, 4)}
    moved = lambda s, t, tower: max(float((c[s][k] - c[t][k]).abs().max()) for k in c[s]
                                    if k.startswith(f"towers.{tower}.net."))
    assert moved(1, 2, "image") == 0.0 and moved(1, 2, "text") > 0
    assert moved(2, 3, "image") > 0 and moved(3, 4, "image") > 0


def test_hf_grad_checkpointing_helper_recomputes_activations():
    """towers.common.hf_grad_checkpointing (hf, hf_image, hf_audio towers): fewer saved activations when on,
    as many as before when turned off again, and False for a model without checkpointing."""
    transformers = pytest.importorskip("transformers")
    from align.towers.common import hf_grad_checkpointing

    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3,
                                                          num_attention_heads=2, intermediate_size=64))
    bert.train()
    ids = torch.randint(0, 50, (2, 12))

    def saved():
        n = [0]
        with torch.autograd.graph.saved_tensors_hooks(lambda t: n.__setitem__(0, n[0] + 1) or t, lambda t: t):
            bert(input_ids=ids).last_hidden_state.sum().backward()
        return n[0]
    before = saved()
    assert hf_grad_checkpointing(bert, True) is True
    assert saved() < before / 2
    assert hf_grad_checkpointing(bert, False) is True and saved() == before
    assert hf_grad_checkpointing(torch.nn.Linear(2, 2), True) is False
