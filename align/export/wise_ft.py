"""WiSE-FT: weight-space interpolation between the starting model and the fine-tuned one.

    theta(alpha) = (1 - alpha) * theta_start + alpha * theta_finetuned      (Wortsman et al., 2022)

alpha = 0 is the starting model, alpha = 1 the fine-tuned one. The start is anything
`model.init_from` reads (an align run, checkpoint or export; an open_clip checkpoint file or
folder), mapped onto the fine-tuned model's keys. Floating-point tensors present in both with
the same shape are interpolated, the temperature (logit_scale, logit_bias) included; tensors the
start does not have (a tower or head added for the fine-tune) keep their fine-tuned values and
are counted in the report. A shape mismatch fails with one line naming the tensor.

    align export runs/ft --interpolate-with exports/start --alpha 0.5 --out exports/wise
    align export runs/ft --interpolate-with exports/start --alpha 0,0.25,0.5,0.75,1 --out exports/wise
        -> exports/wise/alpha-0, alpha-0.25, ... (one export per alpha; `align bench suite` with one
           --model per folder prints the curve side by side)
"""
from typing import Dict, List

import torch

from align.errors import AlignError


def parse_alphas(text: str) -> List[float]:
    """'0.5' or '0,0.25,0.5' -> [floats in [0, 1]]."""
    try:
        alphas = [float(a) for a in str(text).split(",") if a.strip() != ""]
    except ValueError:
        raise AlignError(f"--alpha: expected numbers in [0, 1] separated by commas, got {text!r}") from None
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise AlignError(f"--alpha: expected numbers in [0, 1] separated by commas, got {text!r}")
    return alphas


def interpolate_state(finetuned: Dict[str, torch.Tensor], start: Dict[str, torch.Tensor],
                      alpha: float) -> (Dict[str, torch.Tensor], dict):
    """-> (interpolated state dict, {"interpolated": n, "kept_finetuned": [keys], "counters": n}); counters are
    integer buffers (BatchNorm's num_batches_tracked), taken from the fine-tuned model, not interpolated."""
    out, kept, counters = {}, [], 0
    for k, v in finetuned.items():
        s = start.get(k)
        if s is None or not v.is_floating_point():
            out[k] = v.clone()
            if s is None:
                kept.append(k)
            else:
                counters += 1
            continue
        if tuple(s.shape) != tuple(v.shape):
            raise AlignError(f"--interpolate-with: tensor {k!r} has shape {list(s.shape)} in the start but "
                             f"{list(v.shape)} in the fine-tuned model")
        out[k] = ((1.0 - alpha) * s.to(torch.float32) + alpha * v.to(torch.float32)).to(v.dtype)
    return out, {"interpolated": len(finetuned) - len(kept) - counters, "kept_finetuned": kept, "counters": counters}


def apply_wise_ft(model, start_path: str, alpha: float) -> dict:
    """Interpolates `model` (the fine-tuned one, in place) towards `start_path`; returns the report."""
    from align.errors import ConfigError
    from align.train.init_from import load_source
    try:
        start, source = load_source(start_path, where="--interpolate-with")
    except ConfigError as e:
        raise AlignError(str(e)) from None
    sd, report = interpolate_state(model.state_dict(), start, alpha)
    if report["interpolated"] == 0:
        raise AlignError(f"--interpolate-with {start_path}: no tensor of the start matches the fine-tuned model")
    with torch.no_grad():
        model.load_state_dict(sd)
    report.update(alpha=alpha, start=source)
    return report


def note(report: dict) -> str:
    kept = report["kept_finetuned"]
    return (f"WiSE-FT: weights = {1 - report['alpha']:g} x start ({report['start']}) + {report['alpha']:g} x "
            f"fine-tuned; {report['interpolated']} tensors interpolated" +
            (f", {len(kept)} only in the fine-tuned model kept as trained" if kept else "") +
            (f", {report['counters']} integer counters kept as trained" if report.get("counters") else ""))
