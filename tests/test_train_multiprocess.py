"""2 CPU processes over gloo through `accelerate launch`: trains, is killed, resumes, matches.

Slow (three launches of two processes each): `pytest -m slow`.
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _launch(recipe_path, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(ACCELERATE + ["-m", "align.cli", "train", recipe_path, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_train_kill_resume(tiny_recipe, tmp_path):
    tiny_recipe["train"].update(max_steps=8, checkpoint_every=2)
    tiny_recipe["data"]["synthetic_size"] = 512
    paths = {}
    for name in ("ref", "killed"):
        d = dict(tiny_recipe, output_dir=str(tmp_path / name))
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(d))
    ref = _launch(str(paths["ref"]))
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert "world_size" in open(tmp_path / "ref" / "summary.json").read()
    assert os.path.isfile(tmp_path / "ref" / "checkpoints" / "step-00000008" / "rank-1.json")
    killed = _launch(str(paths["killed"]), {"ALIGN_TEST_SIGKILL_AT_STEP": "5"})
    assert killed.returncode != 0
    resumed = _launch(str(paths["killed"]))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(str(tmp_path / "ref" / "checkpoints" / "step-00000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoints" / "step-00000008" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
