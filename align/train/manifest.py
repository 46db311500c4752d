"""Checkpoints that prove themselves: a manifest of every file's size and SHA-256, written last.

A checkpoint folder is renamed into place atomically, but a storage fault or an interrupted copy can
still damage it afterwards. `write_manifest(dir)` records each file (relative path, size, sha256) in
`manifest.json`, written after everything else; `verify(dir)` re-reads them and returns None when the
checkpoint is intact, else one line naming the first damaged or missing file. A checkpoint without a
manifest (written by an older align) is taken as it is: `verify` returns None and `has_manifest` says so.

    write_manifest(ckpt)             # after the checkpoint's files, before the atomic rename
    problem = verify(ckpt)           # None, or "checkpoints/step-00000040/model.safetensors: 21 MB, expected 42 MB"
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _files(ckpt_dir: str) -> list[str]:
    out = []
    for d, _, names in os.walk(ckpt_dir):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), ckpt_dir)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(ckpt_dir: str) -> str:
    """Record every file of `ckpt_dir` (size, sha256) in its manifest.json (atomic write); returns its path."""
    entries = {rel: {"size": os.path.getsize(os.path.join(ckpt_dir, rel)),
                     "sha256": _sha256(os.path.join(ckpt_dir, rel))} for rel in _files(ckpt_dir)}
    path = os.path.join(ckpt_dir, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"version": 1, "files": entries}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def has_manifest(ckpt_dir: str) -> bool:
    return os.path.isfile(os.path.join(ckpt_dir, MANIFEST))


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g} MB" if n >= 1e5 else f"{n} bytes"


def verify(ckpt_dir: str, *, hashes: bool = True) -> Optional[str]:
    """None when every file the manifest lists is present with its size (and hash); else one line."""
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as exn:
        return f"{path}: unreadable manifest ({exn})"
    for rel, want in sorted(files.items()):
        p = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(p):
            return f"{p}: missing (the checkpoint's manifest lists it)"
        size = os.path.getsize(p)
        if size != want["size"]:
            got, exp = _mb(size), _mb(want["size"])
            if got == exp:         # a few bytes apart: "34.1 MB, expected 34.1 MB" would say nothing
                got, exp = f"{size:,} bytes", f"{want['size']:,} bytes"
            return f"{p}: {got}, expected {exp} (damaged or cut short)"
        if hashes and _sha256(p) != want["sha256"]:
            return f"{p}: contents differ from the checkpoint's manifest (sha256 mismatch)"
    return None
