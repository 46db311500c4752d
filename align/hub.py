"""Reaching the Hugging Face Hub from a machine that may not: `hub_unreachable` (one quick connection to its host)
and `hub_offline` (huggingface_hub's and datasets' offline mode for the calls inside).

huggingface_hub retries an unreachable host for 20-100 s before its error; the model layer (open_clip tags, Hub
ids of Hugging Face towers) and the data layer (`align data shards ORG/NAME`) ask this first and, when the host does
not answer, read the cache at once or say one line. It imports nothing of align.
"""
import contextlib
import os
import sys
from typing import Optional

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """The Hugging Face endpoint's host (HF_ENDPOINT honoured) when no connection to it opens within `timeout` s,
    else None. None without trying when a proxy is set (the hub may answer only through it) or HF_HUB_OFFLINE is
    (huggingface_hub then reads its cache without asking)."""
    import socket
    from urllib.parse import urlsplit
    if any(os.environ.get(k) for k in PROXY_VARS + ("HF_HUB_OFFLINE",)):
        return None
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    try:
        socket.create_connection((host, url.port or (80 if url.scheme == "http" else 443)), timeout=timeout).close()
    except OSError:
        return host
    return None


@contextlib.contextmanager
def hub_offline():
    """huggingface_hub's offline mode for the calls inside (its public `constants.HF_HUB_OFFLINE`, which it reads
    at each call; restored after), and datasets' (`datasets.config.HF_HUB_OFFLINE`) when datasets is imported:
    open_clip given a tag whose weights are cached, or datasets given a cached dataset, then reads the cache at once
    instead of retrying an unreachable hub first."""
    from huggingface_hub import constants
    mods = [constants] + [sys.modules[m] for m in ("datasets.config",) if m in sys.modules]
    before = [m.HF_HUB_OFFLINE for m in mods]
    for m in mods:
        m.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for m, b in zip(mods, before):
            m.HF_HUB_OFFLINE = b
