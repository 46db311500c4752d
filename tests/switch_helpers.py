"""Helpers for the recipe-switch tests: a tiny recipe builder and spies that watch `train()` from outside.

The spies patch classes, not align.train's internals, so they survive edits of the loop:
  - every AdamW step: its param groups (lr, betas, eps, weight_decay) and the gradients it applies;
  - every training forward of AlignModel with gradients: the inputs [B, ...] and the embeddings [B, E];
  - every training open_clip Transformer forward: the sequence length it ran over.
"""
import copy
import json
import os
import subprocess
import sys

import torch

from tests.conftest import TINY_OPEN_CLIP, checkout_env


def recipe(tmp_path, name, base=None, **sections):
    """The tiny synthetic recipe (as tests/conftest.py's) with sections merged in: recipe(p, "x", train={...})."""
    r = copy.deepcopy(base) if base else {
        "seed": 0, "resume": "none",
        "model": {"embed_dim": 16, "open_clip": copy.deepcopy(TINY_OPEN_CLIP)},
        "data": {"train": "synthetic", "synthetic_size": 256, "num_workers": 0},
        "train": {"batch_size": 8, "max_steps": 2, "lr": 1e-3, "log_every": 1, "checkpoint_every": 0,
                  "keep_last": 5, "num_threads": 1},
        "eval": {"every": 0},
    }
    r["output_dir"] = str(tmp_path / name)
    for key, value in sections.items():
        if isinstance(value, dict):
            r.setdefault(key, {}).update(copy.deepcopy(value))
        else:
            r[key] = value
    return r


def train_dict(r, **kw):
    from align.config import parse_recipe
    from align.train.loop import train
    return train(parse_recipe(r), progress=False, **kw)


def metrics(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def checkpoints(run_dir):
    return sorted(os.listdir(os.path.join(run_dir, "checkpoints")))


def final_weights(run_dir):
    from safetensors.torch import load_file
    return load_file(os.path.join(run_dir, "checkpoints", checkpoints(run_dir)[-1], "model.safetensors"))


class Spy:
    """Install with Spy(monkeypatch); read .steps, .forwards, .seq_lens after train()."""

    def __init__(self, monkeypatch):
        from open_clip.transformer import Transformer

        from align.model import AlignModel
        self.steps, self.forwards, self.seq_lens = [], [], []
        real_step, real_fwd, real_tf = torch.optim.AdamW.step, AlignModel.forward, Transformer.forward
        spy = self

        def step(opt, *a, **k):
            spy.steps.append({
                "groups": [dict({k2: v for k2, v in g.items() if k2 != "params"}, n_params=len(g["params"]))
                           for g in opt.param_groups],
                "grads": [None if p.grad is None else p.grad.detach().clone()
                          for g in opt.param_groups for p in g["params"]]})
            return real_step(opt, *a, **k)

        def forward(model, batch):
            out = real_fwd(model, batch)
            if model.training and torch.is_grad_enabled():
                spy.forwards.append({
                    "inputs": {m: batch[m].detach().clone() for m in model.modalities if m in batch},
                    "out": {k2: v.detach().clone() for k2, v in out.items()}})
            return out

        def tf_forward(tf, x, *a, **k):
            if tf.training and torch.is_grad_enabled():     # training passes, not the FLOP count's
                spy.seq_lens.append(x.shape[1] if getattr(tf, "batch_first", True) else x.shape[0])
            return real_tf(tf, x, *a, **k)

        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        monkeypatch.setattr(AlignModel, "forward", forward)
        monkeypatch.setattr(Transformer, "forward", tf_forward)

    def grad_norm(self, i):
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in self.steps[i]["grads"] if g is not None)))


def run_align_train(r: dict, tmp_path, name: str, **env_extra) -> subprocess.CompletedProcess:
    """`align train` of recipe dict `r` (written to tmp_path/NAME.yaml) in a fresh process with env_extra set;
    this checkout's align first on the path."""
    import yaml
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(r))
    env = checkout_env(**env_extra)
    return subprocess.run([sys.executable, "-m", "align.cli", "train", str(path), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
