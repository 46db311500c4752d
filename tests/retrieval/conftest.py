"""Retrieval test helpers: a tiny image+text+audio align run and small shards with all three modalities."""
import pytest

from tests.export.conftest import TINY_AUDIO_CNN, make_run
from tests.wds_helpers import flac_bytes, jpeg_bytes, write_shard

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "car", "tree"]


def tri_sample(key: str, seed: int) -> dict:
    return {"__key__": key, "jpg": jpeg_bytes(seed, size=16), "flac": flac_bytes(seed),
            "txt": f"a {WORDS[seed % 8]} {WORDS[(seed // 8) % 8]} number {seed}"}


def tri_shards(root, n_shards=3, per_shard=5, broken=None):
    """n_shards tars of image+text+audio samples; broken=(shard, j): that sample's jpg is garbage."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_shards):
        samples = [tri_sample(f"s{i:02d}_{j:03d}", i * 100 + j) for j in range(per_shard)]
        if broken and broken[0] == i:
            samples[broken[1]]["jpg"] = b"not a jpeg"
        paths.append(write_shard(root / f"shard-{i:03d}.tar", samples))
    return paths


@pytest.fixture(scope="session")
def tri_run(tmp_path_factory):
    """(run dir, model) of a tiny untrained image+text+audio model, written as training writes it."""
    return make_run(tmp_path_factory.mktemp("tri"), towers={"audio": TINY_AUDIO_CNN})
