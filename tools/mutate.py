"""Mutation check: plant one-line bugs in the core modules and make sure the tests catch each of them.

    python tools/mutate.py                 # every mutation (~30 min on 2 busy cores)
    python tools/mutate.py --only loss     # ids containing "loss"
    python tools/mutate.py --list          # the list, nothing run

Each mutation is (id, file, exact source snippet, replacement, tests), listed in tools/mutations/ (one list
per part of align). The snippet is text, not a line number, so the list survives edits elsewhere in a file; a
snippet that is missing or occurs more than once is reported as STALE (fix the list). The repository's files (git ls-files, tracked and untracked
but not ignored) are copied to a temporary directory once (once per job with --jobs N); each mutation
is applied there, the listed tests run (`pytest -x -q -m "not slow"`, with a timeout; without the marker filter
for an entry with slow=True, whose catching test is a slow one), and the file is restored before the next one.
Your tree is never modified.

A mutation is KILLED when its tests fail (or time out), SURVIVED when they pass. The listed tests
must pass on the unmutated copy first (the baseline), or the run stops. Exit status 0 only when every
mutation is killed and none is stale. It runs before a release, not in CI (see README, Tests).
"""
import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mutations import MUTATIONS  # noqa: E402  (tools/mutations/: the lists)


def repo_files(root: str) -> List[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and os.path.isfile(os.path.join(root, p))]


def copy_repo(root: str, dest: str) -> None:
    for rel in repo_files(root):
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), os.path.join(dest, rel))


def run_tests(copy: str, tests: List[str], timeout: float, slow: bool = False) -> str:
    """'pass', 'fail' or 'timeout' for `pytest -x -q tests` run inside the copy (slow ones too if `slow`)."""
    env = dict(os.environ, PYTHONPATH=copy, PYTHONDONTWRITEBYTECODE="1")
    marks = [] if slow else ["-m", "not slow"]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *marks, *tests]
    try:
        out = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout,
                             start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout"
    if out.returncode == 5:       # no tests collected: a stale test id, not a kill
        return "no tests"
    return "pass" if out.returncode == 0 else "fail"


def baseline_passes(copy: str, todo, timeout: float) -> bool:
    """The mutations' listed tests on the unmutated copy, each entry's as it will run (slow=True ones without the
    marker filter); False, with the command to rerun them, when they do not pass."""
    for slow in (False, True):
        base_tests = sorted({t for m in todo if m.slow == slow for t in m.tests})
        if not base_tests:
            continue
        print(f"baseline: {len(base_tests)} test targets on the unmutated copy{' (slow too)' if slow else ''} ...",
              flush=True)
        base = run_tests(copy, base_tests, timeout, slow)
        if base != "pass":
            marks = "" if slow else '-m "not slow" '
            print(f"baseline {base}: the listed tests must pass before mutating (run them: pytest "
                  f"{marks}{' '.join(base_tests)})")
            return False
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="run mutations whose id contains this (repeatable)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run (default 600)")
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument("--jobs", type=int, default=1, help="mutations tested at once, each in its own copy (default 1)")
    args = ap.parse_args(argv)
    muts = [m for m in MUTATIONS if not args.only or any(s in m.id for s in args.only)]
    if args.list:
        for m in muts:
            print(f"{m.id:48s} {m.file}  -> {' '.join(m.tests)}" + (" (slow too)" if m.slow else "")
                  + (f"  [{m.note}]" if m.note else ""))
        return 0

    t0 = time.perf_counter()
    stale = []
    for m in muts:
        text = open(os.path.join(ROOT, m.file)).read()
        if text.count(m.snippet) != 1:
            stale.append(m)
            print(f"STALE     {m.id}: snippet found {text.count(m.snippet)} times in {m.file}: {m.snippet!r}")
    todo = [m for m in muts if m not in stale]
    results = {}
    with tempfile.TemporaryDirectory(prefix="align-mutate-") as tmp:
        copies = [os.path.join(tmp, f"repo{j}") for j in range(max(1, args.jobs))]
        for c in copies:
            copy_repo(ROOT, c)
        if not baseline_passes(copies[0], todo, args.timeout * 3):
            return 2
        print(f"baseline passed in {time.perf_counter() - t0:.0f}s", flush=True)
        free = queue.Queue()
        for c in copies:
            free.put(c)
        lock = threading.Lock()

        def one(m):
            copy = free.get()       # a copy of the repo no other job is mutating now
            try:
                path = os.path.join(copy, m.file)
                original = open(path).read()
                t1 = time.perf_counter()
                try:
                    with open(path, "w") as f:
                        f.write(original.replace(m.snippet, m.replacement, 1))
                    outcome = run_tests(copy, m.tests, args.timeout, m.slow)
                finally:
                    with open(path, "w") as f:
                        f.write(original)
            finally:
                free.put(copy)
            verdict = {"pass": "SURVIVED", "fail": "killed", "timeout": "killed (timeout)",
                       "no tests": "STALE (no tests collected)"}[outcome]
            with lock:
                results[m.id] = verdict
                note = f"  [{m.note}]" if m.note else ""
                print(f"[{len(results):3d}/{len(todo)}] {verdict:16s} {m.id}  ({time.perf_counter() - t1:.0f}s){note}",
                      flush=True)

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            list(pool.map(one, todo))
    killed = sum(v.startswith("killed") for v in results.values())
    survived = [k for k, v in results.items() if v == "SURVIVED"]
    stale_ids = [m.id for m in stale] + [k for k, v in results.items() if v.startswith("STALE")]
    print(f"\n{killed}/{len(muts)} mutations killed, {len(survived)} survived, {len(stale_ids)} stale, "
          f"in {time.perf_counter() - t0:.0f}s")
    for k in survived:
        print(f"  survived: {k}")
    for k in stale_ids:
        print(f"  stale: {k}")
    return 0 if not survived and not stale_ids else 1


if __name__ == "__main__":
    sys.exit(main())
