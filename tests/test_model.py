"""align.model: the dict of towers an open_clip user calls encode_* on."""
import numpy as np
import pytest
import torch

from align.config import parse_recipe
from align.errors import AlignError
from align.model import build_model


def _model(tiny_recipe):
    tiny_recipe["model"]["towers"] = {"audio": {"type": "audio", "clip_seconds": 0.31, "n_mels": 32, "width": 32,
                                                "layers": 2, "heads": 2, "patch": 4}}
    return build_model(parse_recipe(tiny_recipe).model).eval()


def test_float64_and_half_inputs_are_cast_to_the_towers_dtype(tiny_recipe):
    """float64 arrays from numpy (or float32 into a model.half()) failed in the first layer with
    'expected scalar type Float but found Double'; they embed as the same inputs in the tower's dtype."""
    model = _model(tiny_recipe)
    rng = np.random.default_rng(0)
    img = rng.standard_normal((2, 3, 16, 16))                  # float64, as numpy makes it
    with torch.no_grad():
        z64 = model.encode_image(torch.from_numpy(img))
        z32 = model.encode_image(torch.from_numpy(img).float())
        assert z64.dtype == torch.float32 and torch.equal(z64, z32)
        audio_in = torch.from_numpy(rng.standard_normal((2, 32, 32)))     # log-mel [B, n_mels, T]
        assert torch.equal(model.encode_audio(audio_in), model.encode_audio(audio_in.float()))
        tokens = model.tokenize(["a cat", "two dogs"])
        assert tokens.dtype == torch.long and model.encode_text(tokens).dtype == torch.float32  # ids stay integers


def test_the_image_transform_sees_a_file_as_align_decodes_it(tiny_recipe, tmp_path):
    """model.image_transform(Image.open(path)) (the Python API) against the transform of the pixels align decodes
    from the same file (training, `align embed`): equal for a photo stored on its side with EXIF orientation 6 and
    for an RGBA image whose transparent pixels hide black; the transform without the upright step differs."""
    import io

    from PIL import Image

    from align.media.image import decode_image
    model = _model(tiny_recipe)
    side = Image.fromarray(np.repeat(np.linspace(0, 255, 36, dtype=np.uint8)[None, :, None], 18, 0).repeat(3, 2))
    exif = side.getexif()
    exif[0x0112] = 6
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:8, :, 0], rgba[:8, :, 3] = 200, 255                  # top half red and opaque, bottom transparent black
    files = {"side.jpg": (side, {"exif": exif, "quality": 95}), "clear.png": (Image.fromarray(rgba), {})}
    for name, (img, kw) in files.items():
        buf = io.BytesIO()
        img.save(buf, format="JPEG" if name.endswith("jpg") else "PNG", **kw)
        path = tmp_path / name
        path.write_bytes(buf.getvalue())
        want = model.towers["image"].preprocess(train=False)(decode_image(str(path)))
        assert torch.equal(model.image_transform(Image.open(path)), want), name
        assert torch.equal(model.transforms(train=False)["image"](Image.open(path)), want), name
        assert not torch.equal(model.towers["image"].preprocess(train=False)(Image.open(path)), want), name


def test_what_users_pass_to_encode_and_tokenize_is_one_line_naming_the_argument(tiny_recipe):
    """A caption string, a PIL image, a numpy array, float token ids, tokens of another context length, an image
    without its batch axis, a uint8 batch, texts with None or an int in them: each failed deep in torch or open_clip
    (AttributeError 'no attribute is_floating_point', IndexError, a size mismatch in the positional embedding) or,
    for 77 tokens of a short caption, worked while a long one failed; now one AlignError naming the call."""
    from PIL import Image
    model = _model(tiny_recipe)
    ctx = model.towers["text"].context_length
    tokens = model.tokenize(["a cat", "a dog"])
    long = torch.ones(1, ctx + 5, dtype=torch.long)
    cases = [(model.encode_text, "a cat", r"encode_text: expected a torch.Tensor batch, got str"),
             (model.encode_text, tokens.numpy(), "encode_text: expected a torch.Tensor batch, got ndarray"),
             (model.encode_text, tokens.float(), r"encode_text: expected integer token ids \[B, L\].*float32"),
             (model.encode_text, tokens[0], r"encode_text: expected integer token ids .*int64 \[%d\]" % ctx),
             (model.encode_text, long, f"encode_text: {ctx + 5} tokens per text, over this model's context_length"),
             (model.encode_image, Image.new("RGB", (16, 16)), "encode_image: expected a torch.Tensor batch, got Image"),
             (model.encode_image, torch.zeros(3, 16, 16), r"encode_image: expected a float batch .*\[3, 16, 16\]"),
             (model.encode_image, torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "encode_image: .*got uint8"),
             (model.encode_audio, [0.0] * 10, "encode_audio: expected a torch.Tensor batch, got list"),
             (model.tokenize, ["a cat", None], r"tokenize: texts\[1\] is NoneType \(None\), not a string"),
             (model.tokenize, [3], r"tokenize: texts\[0\] is int"),
             (model.tokenize, None, "tokenize: expected a list of strings, got NoneType"),
             (model.tokenize, ["a cat", "a \ud800 dog"], r"tokenize: texts\[1\]: lone surrogate at position 2 \(")]
    for call, arg, message in cases:
        with pytest.raises(AlignError, match=message):
            call(arg)
    with torch.no_grad():       # what is valid still embeds: a string is a list of one, int32 ids are ids
        assert torch.equal(model.tokenize("a cat"), tokens[:1])
        assert torch.equal(model.encode_text(tokens.int()), model.encode_text(tokens))
        assert model.encode_text(model.tokenize([])).shape == (0, model.towers["text"].embed_dim)


def test_an_image_batch_of_another_size_is_one_line_naming_both_shapes():
    """A 32 px batch into a 16 px ViT failed in torch ("The size of tensor a (65) must match ... (17)"), into
    open_clip's ModifiedResNet likewise, and a timm ResNet embedded it without a word; every image tower now says which
    [B, C, H, W] it takes (what model.image_transform makes) and what it got, as a ValueError and an AlignError."""
    from PIL import Image

    from align.model import AlignModel
    from align.towers import build_tower
    from tests.conftest import TINY_OPEN_CLIP
    text = build_tower({"type": "open_clip", "config": dict(TINY_OPEN_CLIP, embed_dim=16)}, "text", 16)
    resnet_cfg = dict(TINY_OPEN_CLIP, embed_dim=16, vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 16})
    towers = {"vit": ({"type": "open_clip", "config": dict(TINY_OPEN_CLIP, embed_dim=16)}, 16),
              "resnet": ({"type": "open_clip", "config": resnet_cfg}, 32),
              "timm resnet": ({"type": "timm", "model": "resnet18", "image_size": [24, 32]}, (24, 32))}
    for name, (cfg, size) in towers.items():
        h, w = (size, size) if isinstance(size, int) else size
        model = AlignModel({"image": build_tower(cfg, "image", 16), "text": text}).eval()
        assert model.image_transform(Image.new("RGB", (50, 40))).shape == (3, h, w), name
        with torch.no_grad():
            assert model.encode_image(torch.zeros(2, 3, h, w)).shape == (2, 16), name
            for bad in ((2, 3, h * 2, w * 2), (1, 3, h, w + 1), (2, 1, h, w), (2, 4, h, w)):
                for error in (ValueError, AlignError):
                    with pytest.raises(error, match=rf"^encode_image: expected \[B, 3, {h}, {w}\], this model's image "
                                                    rf"size .*, got float32 \[{', '.join(map(str, bad))}\]$"):
                        model.encode_image(torch.zeros(bad))
    dynamic = build_tower({"type": "timm", "model": "vit_tiny_patch16_224", "image_size": 32,
                           "model_kwargs": {"patch_size": 8, "depth": 1, "dynamic_img_size": True}}, "image", 16)
    model = AlignModel({"image": dynamic, "text": text}).eval()
    with torch.no_grad():        # a timm ViT built to take any size (dynamic_img_size) still takes any size
        assert model.encode_image(torch.zeros(1, 3, 48, 40)).shape == (1, 16)
