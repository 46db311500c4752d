"""Where a run's time goes, from a py-spy raw profile: the share of samples per part of align's step.

    py-spy record -r 50 --format raw -o prof.txt -- align train demo train.max_steps=300 --no-progress
    python tools/pyspy_summary.py prof.txt

py-spy's raw format is one line per distinct stack, "frame;frame;...;frame COUNT" (outermost first). Each
stack goes to the first bucket whose test matches it, in the order below; inside `train_step` the buckets
follow the step's own parts (align/train/step.py): the towers' forward passes, the loss, backward, the
optimizer. Outside it: the data fetch, evaluation, checkpoints, start-up (imports, building the engine).
The shares are of the samples of the process that was profiled (the training process; data workers are
other processes: add --subprocesses to py-spy to see them, and they are then counted too).
"""
import collections
import sys

# (bucket, substrings any of which must be in the stack), first match wins; more specific first
BUCKETS = [
    ("step: backward", ("backward",)),
    ("step: optimizer", ("optimizer_step", "adamw", "AdamW", "_fused_adamw", "step (torch/optim")),
    ("step: loss", ("losses.py", "loss.py")),
    ("step: forward image", ("encode_image", "VisionTransformer", "ModifiedResNet")),
    ("step: forward audio", ("encode_audio", "towers/audio")),
    ("step: forward text", ("encode_text", "TextTransformer", "trimmed_text_forward")),
]
OUTSIDE = [
    ("idle: background threads waiting (queue feeder, run-lock heartbeat, log writer)", ("Condition.wait",)),
    ("data: waiting for a batch", ("Batches.take", "take (align/train")),
    ("evaluation", ("evaluate",)),
    ("checkpoint", ("save (align/train", "save_checkpoint")),
    ("start-up: engine (model, optimizer)", ("build_engine",)),
    ("start-up: loader", ("build_loader",)),
    ("start-up: imports", ("_find_and_load",)),
    ("logging and summary", ("RunLogger", "metrics.py")),
]


def bucket(stack: str) -> str:
    if "train_step" in stack:
        for name, keys in BUCKETS:
            if any(k in stack for k in keys):
                return name
        return "step: other"
    for name, keys in OUTSIDE:
        if any(k in stack for k in keys):
            return name
    return "other"


def summarise(lines):
    counts, total = collections.Counter(), 0
    for line in lines:
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, n = line.rsplit(" ", 1)
        counts[bucket(stack)] += int(n)
        total += int(n)
    return counts, total


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(__doc__)
    with open(argv[0]) as f:
        counts, total = summarise(f)
    if not total:
        raise SystemExit(f"{argv[0]}: no samples (is it py-spy's --format raw output?)")
    step = sum(v for k, v in counts.items() if k.startswith("step:"))
    busy = total - sum(v for k, v in counts.items() if k.startswith("idle:"))
    for name, n in counts.most_common():
        print(f"{100 * n / total:5.1f} %  {name}")
    print(f"{total} samples; inside train_step {100 * step / total:.1f} % of all, {100 * step / max(1, busy):.1f} % "
          f"of the samples not idle")


if __name__ == "__main__":
    main()
