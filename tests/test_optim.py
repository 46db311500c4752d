"""Optimizer groups, LR schedule and synthetic data against plain references."""
import math

import pytest
import torch

from align.config import TrainConfig, parse_recipe
from align.model import AlignModel, build_model
from align.data.synthetic import SyntheticLoader
from align.optim import WarmupCosine, build_optimizer, build_scheduler, no_decay


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
    from align.optim import restore_scheduler
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
