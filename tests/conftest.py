"""Shared test helpers: a tiny open_clip config and recipe dict used across tests, and child processes that
import this checkout's align (checkout_env, start_python)."""
import os
import subprocess
import sys
import textwrap

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkout_env(**extra) -> dict:
    """os.environ with this checkout first on PYTHONPATH, so a child process imports the align under test."""
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def start_python(code: str, ready: str) -> subprocess.Popen:
    """`python -c code` (dedented) in a child process with checkout_env, returned once it has printed `ready`."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                         env=checkout_env())
    assert p.stdout.readline().strip() == ready
    return p


def as_new_process(out, err=None) -> None:
    """In a child forked from pytest, the state a fresh process has: stdout on file `out`, stderr on `err` (default:
    `out` too), both at the file-descriptor level (native code and data workers write there); no warning-line
    handler pytest's process left on the "align" logger (it writes to pytest's stderr); torch on one thread (the
    parent's OpenMP pool does not survive the fork: a child using it hangs); a fresh Accelerate state."""
    import logging

    import torch
    from accelerate.state import AcceleratorState

    from align.progress import WarningLines
    for fd, f in zip((1, 2), (out, err or out)):
        os.dup2(f.fileno(), fd)
    sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False) for fd in (1, 2))
    logger = logging.getLogger("align")
    for h in [h for h in logger.handlers if isinstance(h, WarningLines)]:
        logger.removeHandler(h)
    torch.set_num_threads(1)
    AcceleratorState._reset_state(True)


def fork_main(argv: list, timeout: float = 300) -> subprocess.CompletedProcess:
    """`align ARGV` as its own process, forked from this one: the exit status, stdout and stderr (its data workers'
    lines too) that `python -m align.cli ARGV` gives, without a fresh interpreter's 8-10 s of imports (torch,
    open_clip, accelerate). Torch on one thread, a fresh Accelerate state and no inherited socket in the child, as a
    new process has; past `timeout` s the child is killed and the test fails (a hang is never waited out)."""
    import gc
    import multiprocessing as mp
    import stat
    import tempfile
    streams = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]

    def child():
        from align.cli import main
        for fd in map(int, os.listdir("/proc/self/fd")):   # a new process inherits no socket: a server this
            try:                                           # test shut down must not accept through the child's copy
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.close(fd)
            except OSError:
                pass
        as_new_process(*streams)
        rc = main(list(argv))
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(rc)
    # garbage collected here, not in the child: a native library's object (an onnxruntime session) destroyed in a
    # forked child can wait forever on its thread pool, whose threads the child does not have
    gc.collect()
    p = mp.get_context("fork").Process(target=child)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"align {' '.join(map(str, argv))}: still running after {timeout} s (killed)")
    out, err = [(f.seek(0), f.read().decode("utf-8", "replace"))[1] for f in streams]
    return subprocess.CompletedProcess(["align", *argv], p.exitcode, out, err)


TINY_OPEN_CLIP = {
    "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}


@pytest.fixture(autouse=True)
def _console_handler_removed():
    """The warning-line handler a CLI call installs on the `align` logger (align.progress.setup_console) is taken
    off after each test, so that one test's `main(...)` does not print later tests' warnings to their stderr."""
    yield
    import logging
    from align.progress import WarningLines
    logger = logging.getLogger("align")
    for h in [h for h in logger.handlers if isinstance(h, WarningLines)]:
        logger.removeHandler(h)


@pytest.fixture
def tiny_recipe(tmp_path):
    """A dict recipe of a tiny dual-tower model on synthetic data."""
    return {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "resume": "auto",
        "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP)},
        "data": {"train": "synthetic", "synthetic_size": 256, "num_workers": 0},
        "train": {"batch_size": 8, "max_steps": 6, "lr": 1e-3, "log_every": 2, "checkpoint_every": 3,
                  "keep_last": 5, "num_threads": 1},
        "eval": {"every": 0},
    }


@pytest.fixture(scope="session")
def fresh_align_bench():
    """One fresh interpreter for two tests (torch's import, ~3 s, paid once): it builds every `align` parser and
    says which heavy modules that imported (tests/test_cli.py), then looks align.bench.BENCHMARKS up first from two
    threads at once, its runners not yet imported, and says what each thread saw (tests/test_registry.py).
    -> (the heavy modules the parsers imported, as printed; the two threads' task names, as printed)"""
    code = """
        import sys, threading
        import align.cli as c
        c.build_parser().parse_args(['recipes'])
        print(sorted(m for m in ('torch', 'faiss', 'numpy', 'open_clip') if m in sys.modules))
        out, b = [], threading.Barrier(2)
        def look():
            b.wait()
            from align.bench import BENCHMARKS
            out.append(BENCHMARKS.names())
        ts = [threading.Thread(target=look) for _ in range(2)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print(out)
    """
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded, seen = run.stdout.splitlines()
    return loaded, seen
