"""How long a launch lives on after one of its workers is SIGKILLed (issue 14: it must end within seconds).

    python benchmarks/kill_exit.py [--repeats 3]

Runs a tiny synthetic-data `align train` as (a) one 2-process `accelerate launch` (ddp and fsdp) whose
rank 1 SIGKILLs itself after step 3, and (b) two 1-process "machines" on localhost whose second one
does; prints the seconds from the kill to the end of the (last) launch. CPU processes over gloo.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import yaml

TINY = {"vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0}}
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--num_processes", "2"]


def recipe(d: str, sharding: str) -> str:
    r = {"output_dir": os.path.join(d, "run"), "seed": 0, "model": {"embed_dim": 16, "open_clip": TINY},
         "data": {"train": "synthetic", "synthetic_size": 512, "num_workers": 0},
         "train": {"batch_size": 8, "max_steps": 8, "checkpoint_every": 2, "num_threads": 1, "sharding": sharding}}
    path = os.path.join(d, "r.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(r, f)
    return path


def run(machines: bool, sharding: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        stamp = os.path.join(d, "stamp")
        env = dict(os.environ, ALIGN_TEST_SIGKILL_AT_STEP="3", ALIGN_TEST_SIGKILL_RANK="1", ALIGN_TEST_KILL_STAMP=stamp)
        tail = ["-m", "align.cli", "train", recipe(d, sharding), "--no-progress"]
        if machines:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs = [subprocess.Popen(LAUNCH + ["--num_machines", "2", "--machine_rank", str(m), "--main_process_ip",
                                                "127.0.0.1", "--main_process_port", str(port)] + tail, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for m in (0, 1)]
        else:
            procs = [subprocess.Popen(LAUNCH + ["--num_machines", "1"] + tail, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)]
        for p in procs:
            p.wait(timeout=600)
        end = time.time()
        return end - float(open(stamp).read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = {}
    for name, machines, sharding in (("2 processes, ddp", False, "ddp"), ("2 processes, fsdp", False, "fsdp"),
                                     ("2 machines on localhost, ddp", True, "ddp")):
        t = [run(machines, sharding) for _ in range(args.repeats)]
        out[name] = t
        print(f"{name}: launch ended {min(t):.1f}-{max(t):.1f}s after the SIGKILL of rank 1 ({len(t)} runs)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
