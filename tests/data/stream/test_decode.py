"""align.data.stream.decode with data.limits: the recipe's limits reach the tar reader and the decoders."""
from types import SimpleNamespace

from align.config import parse_recipe
from align.train.loop import build_loader
from tests.conftest import TINY_OPEN_CLIP
from tests.wds_helpers import TRANSFORMS, image_text, wav_claiming, write_shard


def _loader(tmp_path, limits: dict):
    """The training stream exactly as `align train` builds it (align.train.loop.build_loader) for a recipe
    with these data.limits, over one shard of 4 ordinary samples and 3 that only some limits refuse."""
    samples = [image_text(f"g{i}", i) for i in range(4)] + [
        dict(image_text("longcap", 9), txt="a caption " * 30),                           # 300 bytes
        {"__key__": "slowrate", "wav": wav_claiming(4000, frames=400), "txt": "a low rate"},
        dict(image_text("bigjson", 8), json="[" + "0," * 400 + "0]"),                   # 803 bytes
    ]
    write_shard(tmp_path / "s-0.tar", samples)
    r = parse_recipe({"model": {"open_clip": dict(TINY_OPEN_CLIP)}, "output_dir": str(tmp_path / "run"),
                      "data": {"train": str(tmp_path / "s-0.tar"), "num_workers": 0, "shuffle_buffer": 0,
                               "limits": limits},
                      "train": {"batch_size": 1, "max_steps": 1}})
    model = SimpleNamespace(transforms=lambda train: TRANSFORMS, modalities=["image", "text", "audio"])
    return build_loader(r, model, 0, 1, None)


def test_recipe_limits_reach_the_reader_and_the_decoders(tmp_path):
    loader = _loader(tmp_path, {})
    assert sorted(k for b in loader for k in b["__key__"]) == ["bigjson", "g0", "g1", "g2", "g3", "longcap", "slowrate"]
    loader = _loader(tmp_path, {"max_text_bytes": 200, "min_sample_rate": 8000, "max_json_bytes": 500})
    assert sorted(k for b in loader for k in b["__key__"]) == ["g0", "g1", "g2", "g3"]
    assert dict(loader.skipped) == {"caption too long": 1, "audio sample rate out of range": 1, "json too large": 1}
