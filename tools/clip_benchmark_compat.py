"""Run CLIP_benchmark's own CLI on numpy >= 2.4 (same arguments as `clip_benchmark`).

    python tools/clip_benchmark_compat.py eval --model local-dir:exports/demo --pretrained '' \
        --dataset wds/mydata --dataset_root data/mydata --task zeroshot_classification --no_amp --output out.json

Why: CLIP_benchmark 1.6.2's `clip_benchmark/metrics/zeroshot_classification.py::accuracy` ends with
    float(correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy())
i.e. `float()` of a shape-(1,) ndarray. numpy deprecated converting arrays with ndim > 0 to Python
scalars in 1.25 and numpy 2.4 made it a TypeError ("only 0-dimensional arrays can be converted to
Python scalars"), so every single-label zero-shot classification run dies there. No CLI argument
avoids it (`evaluate` calls `accuracy` for every single-label dataset).

What this wrapper does: before calling `clip_benchmark.cli.main()`, it binds the name `float` inside
that one module to a function that converts a size-1 array the way numpy < 2.4 did and defers to the
builtin `float` for everything else. CLIP_benchmark's code and site-packages stay untouched; other
modules are unaffected. It also turns the missing undeclared dependency `requests` (imported by
`clip_benchmark.datasets.builder`) into a one-line message.
"""
import builtins
import sys


def _float_compat(x=0.0):
    """builtins.float, plus numpy < 2.4's acceptance of size-1 arrays of any ndim."""
    size, reshape = getattr(x, "size", None), getattr(x, "reshape", None)
    if size == 1 and reshape is not None and getattr(x, "ndim", 0) > 0 and type(x).__module__ == "numpy":
        return builtins.float(x.reshape(()))
    return builtins.float(x)


def patch() -> None:
    """Apply the numpy >= 2.4 fix to CLIP_benchmark's zero-shot classification module."""
    try:
        import clip_benchmark.metrics.zeroshot_classification as zsc
    except ModuleNotFoundError as e:
        if e.name == "requests":
            raise SystemExit("clip_benchmark needs the package 'requests' (an undeclared dependency of "
                             "clip-benchmark 1.6.2): pip install requests") from None
        raise SystemExit(f"clip_benchmark is not installed ({e}): pip install clip-benchmark") from None
    zsc.float = _float_compat   # module global shadows the builtin for lookups inside zsc only


def main() -> int:
    patch()
    try:
        from clip_benchmark.cli import main as cb_main
    except ModuleNotFoundError as e:
        if e.name == "requests":
            raise SystemExit("clip_benchmark needs the package 'requests' (an undeclared dependency of "
                             "clip-benchmark 1.6.2): pip install requests") from None
        raise
    sys.argv[0] = "clip_benchmark"
    return cb_main() or 0


if __name__ == "__main__":
    sys.exit(main())
