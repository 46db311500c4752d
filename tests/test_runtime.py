"""Optimizer groups, LR schedule and synthetic data against plain references."""
import math

import torch

from align.config import TrainConfig, parse_recipe
from align.model import build_model
from align.runtime import SyntheticLoader, WarmupCosine, build_optimizer, build_scheduler, no_decay


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
    sched2 = build_scheduler(opt, TrainConfig(lr=1.0, warmup_steps=2), total_steps=10)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()


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
