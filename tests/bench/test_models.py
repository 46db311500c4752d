"""open_clip models in `align bench`: checkpoints open_clip itself wrote, its hub layout, align's export, errors."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import align
from align.bench.models import OpenClipModel, load_model, pair_pretrained, split_scheme
from align.bench.suite import suite_models
from align.bench.zeroshot import zeroshot_classification
from align.errors import AlignError, ConfigError
from align.towers.open_clip_towers import trimmed_text_forward
from tests.bench.conftest import OC_ARCH as ARCH, classification_wds
from tests.conftest import TINY_OPEN_CLIP
from tests.test_open_clip_files import cache_file, no_hub  # noqa: F401  (no_hub: a fixture)
from tests.towers.test_open_clip_towers import offline  # noqa: F401  (a fixture)

def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 16, 16, generator=g), ["a photo of a dog.", "a red car", ""]


def _assert_same_embeddings(model, net):
    x, texts = _inputs()
    import open_clip
    tokens = open_clip.get_tokenizer(ARCH)(texts)
    with torch.no_grad():
        assert torch.equal(model.tokenize(texts), tokens)
        torch.testing.assert_close(model.encode_image(x), F.normalize(net.encode_image(x), dim=-1))
        torch.testing.assert_close(model.encode_text(tokens), F.normalize(net.encode_text(tokens), dim=-1))
    assert model.modalities == ["image", "text"] and model.audio_transform is None
    assert float(model.logit_scale.detach()) == pytest.approx(float(net.logit_scale.detach()))


def test_checkpoint_files_open_clip_writes(tmp_path, oc_arch, oc_net):
    from safetensors.torch import save_file
    sd = oc_net.state_dict()
    files = ("plain.pt", "train.pt", "w.safetensors")
    torch.save(sd, tmp_path / "plain.pt")
    # open_clip_train's checkpoint: {"epoch", "name", "state_dict" with DDP's module. prefix, "optimizer"}
    torch.save({"epoch": 3, "name": "x", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "train.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    fps = set()
    for name in files:
        model = load_model({"model": f"open_clip:{oc_arch}", "pretrained": str(tmp_path / name)})
        assert isinstance(model, OpenClipModel) and model.name == oc_arch
        assert model.pretrained == str(tmp_path / name)
        _assert_same_embeddings(model, oc_net)
        fps.add(model.fingerprint())
    assert len(fps) == 1                                   # same weights, same embedding-cache key
    # align.load reaches the same loader
    model = align.load(f"open_clip:{oc_arch}", pretrained=str(tmp_path / "plain.pt"))
    _assert_same_embeddings(model, oc_net)


def test_local_dir_in_open_clips_hub_layout(tmp_path, oc_arch, oc_net):
    """The folder open_clip's own save helpers write (config + safetensors or pytorch_model.bin)."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file
    cfg = {"embed_dim": 16, **TINY_OPEN_CLIP}
    for weights in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        d = tmp_path / weights.split(".")[0]
        d.mkdir()
        save_config_for_hf(oc_net, d / "open_clip_config.json", model_config=cfg)
        if weights.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in oc_net.state_dict().items()}, str(d / weights))
        else:
            torch.save(oc_net.state_dict(), d / weights)
        model = load_model(f"local-dir:{d}")
        assert model.name == d.name and model.pretrained == str(d)
        _assert_same_embeddings(model, oc_net)


def test_align_export_scores_like_the_run_it_came_from(tmp_path):
    """`align export` writes open_clip's layout; benchmarked as local-dir: it gives the run's numbers."""
    from align.export import export
    from tests.export.conftest import make_run
    run, _ = make_run(tmp_path)
    export(run, str(tmp_path / "exp"), fmt="open_clip", progress=False)
    ds = classification_wds(tmp_path / "cls", n=16, n_classes=4)
    from align.bench.datasets import open_dataset
    data = open_dataset(ds, "wds", split="test")
    r_run = zeroshot_classification(align.load(run), data, progress=False)
    r_oc = zeroshot_classification(load_model(f"local-dir:{tmp_path / 'exp'}"), data, progress=False)
    assert r_oc["metrics"] == r_run["metrics"]
    assert r_oc["model"] == "exp" and r_oc["pretrained"] == str(tmp_path / "exp")


def test_errors_are_one_line(tmp_path, oc_arch):
    with pytest.raises(ConfigError, match="unknown open_clip architecture"):
        load_model("open_clip:NoSuchNet-7", pretrained="x")
    with pytest.raises(ConfigError, match="needs pretrained weights: --pretrained TAG"):
        load_model(f"open_clip:{oc_arch}")
    with pytest.raises(ConfigError, match="neither a file nor an open_clip tag"):
        load_model(f"open_clip:{oc_arch}", pretrained=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AlignError, match=f"open_clip:{oc_arch} pretrained .*junk.pt': cannot read .*junk.pt' as a "
                                         r"weights-only torch file \(damaged or cut short\?\): Unsupported operand"):
        load_model(f"open_clip:{oc_arch}", pretrained=str(tmp_path / "junk.pt"))
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(AlignError, match=r"wrong.pt' does not fit the model: tensor 'visual.conv1.weight' has "
                                         r"shape \[1\] in the weights but \[32, 3, 4, 4\] in the model"):
        load_model(f"open_clip:{oc_arch}", pretrained=str(tmp_path / "wrong.pt"))
    with pytest.raises(ConfigError, match="no open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}")
    with pytest.raises(ConfigError, match="applies to open_clip:ARCH models only"):
        load_model({"model": str(tmp_path), "pretrained": "x.pt"})
    with pytest.raises(ConfigError, match="unknown key 'weights'"):
        load_model({"model": "open_clip:x", "weights": "y"})


def test_a_broken_local_folder_is_one_line_naming_its_file_never_a_random_model(tmp_path, oc_arch, oc_net):
    """A hub download copied by hand: weights left behind, a file cut short, a pickle with code, tokenizer files left
    behind, weights of another config. open_clip warned and went on with random weights for the first, and named no
    file for the others ("Couldn't instantiate the backend tokenizer from one of:")."""
    import json
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file
    cfg = {"embed_dim": 16, **TINY_OPEN_CLIP}

    def folder(name, model_cfg=cfg):
        d = tmp_path / name
        d.mkdir()
        save_config_for_hf(oc_net, d / "open_clip_config.json", model_config=model_cfg)
        return d
    sd = {k: v.contiguous() for k, v in oc_net.state_dict().items()}
    with pytest.raises(ConfigError, match=r"no weights file in that folder .*would start from random weights$"):
        load_model(f"local-dir:{folder('empty')}")
    d = folder("cut")
    save_file(sd, str(d / "open_clip_model.safetensors"))
    data = (d / "open_clip_model.safetensors").read_bytes()
    (d / "open_clip_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AlignError, match=r"cut/open_clip_model.safetensors' as a safetensors file \(damaged or cut"):
        load_model(f"local-dir:{d}")
    d = folder("pickle")
    torch.save({**sd, "extra": os.path.join}, d / "open_clip_pytorch_model.bin")
    with pytest.raises(AlignError, match=r"pickle/open_clip_pytorch_model.bin' holds Python objects besides tensors"):
        load_model(f"local-dir:{d}")
    hf_tok = json.loads(json.dumps(cfg))
    hf_tok["text_cfg"]["hf_tokenizer_name"] = "org/tokenizer"
    d = folder("tokenizer", hf_tok)
    save_file(sd, str(d / "open_clip_model.safetensors"))
    with pytest.raises(ConfigError, match=r"tokenizer: its open_clip_config.json names the tokenizer 'org/tokenizer', "
                                          r"whose files \(tokenizer.json or tokenizer_config.json, ...\) are not in"):
        load_model(f"local-dir:{d}")
    wide = json.loads(json.dumps(cfg))
    wide["vision_cfg"]["width"] *= 2
    d = folder("shape", wide)
    save_file(sd, str(d / "open_clip_model.safetensors"))
    with pytest.raises(AlignError, match=r"shape/open_clip_model.safetensors' does not fit the model: tensor "
                                         r"'visual\.\S+' has shape \[\d+.*\] in the weights but \[.*\] in the model"):
        load_model(f"local-dir:{d}")


def test_a_weights_file_taken_out_of_a_folder_of_other_preprocessing_is_one_line(tmp_path, oc_arch, oc_net):
    """open_clip:ARCH --pretrained DIR/open_clip_model.safetensors normalised images as ARCH's default (OpenAI's
    mean/std), not as the folder's open_clip_config.json says: local-dir:DIR would."""
    import json
    from safetensors.torch import save_file
    weights = str(tmp_path / "open_clip_model.safetensors")
    save_file({k: v.contiguous() for k, v in oc_net.state_dict().items()}, weights)
    config = {"model_cfg": {"embed_dim": 16, **TINY_OPEN_CLIP}, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5]}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=rf"^model open_clip:{oc_arch} pretrained '.*': the folder's "
                                          r"open_clip_config.json normalises images with mean \[0.5, 0.5, 0.5\], "
                                          rf"open_clip:{oc_arch} with \[0.481.*\]: load the folder as local-dir:"):
        load_model(f"open_clip:{oc_arch}", pretrained=weights)
    config["preprocess_cfg"]["mean"] = [0.48145466, 0.4578275, 0.40821073]           # the same: taken as it is
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    assert load_model(f"open_clip:{oc_arch}", pretrained=weights).pretrained == weights


def test_scheme_parsing_and_pretrained_pairing():
    assert split_scheme("open_clip:ViT-B-32") == ("open_clip", "ViT-B-32")
    assert split_scheme("local-dir:/a/b") == ("local-dir", "/a/b")
    assert split_scheme("runs/demo") == ("align", "runs/demo")
    assert split_scheme("C:/runs/demo") == ("align", "C:/runs/demo")        # not a registered scheme: a path
    assert pair_pretrained(["runs/a", "open_clip:A", "open_clip:B"], ["t1", "f.pt"]) == [
        "runs/a", {"model": "open_clip:A", "pretrained": "t1"}, {"model": "open_clip:B", "pretrained": "f.pt"}]
    with pytest.raises(ConfigError, match="one --pretrained per open_clip:ARCH --model"):
        pair_pretrained(["open_clip:A"], None)


def test_suite_models_resolve_against_the_yaml(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "models": ["runs/start", {"model": "open_clip:A", "pretrained": "w.pt", "name": "base"},
                   {"model": "open_clip:A", "pretrained": "laion2b_s34b_b79k"}, "local-dir:exp"],
        "benchmarks": [{"dataset": "d", "type": "wds", "task": "zeroshot"}]}))
    got = suite_models(str(tmp_path / "suite.yaml"))
    assert got == [{"model": str(tmp_path / "runs/start")},
                   {"model": "open_clip:A", "pretrained": str(tmp_path / "w.pt"), "name": "base"},
                   {"model": "open_clip:A", "pretrained": "laion2b_s34b_b79k"},
                   {"model": f"local-dir:{tmp_path / 'exp'}"}]
    (tmp_path / "none.yaml").write_text("- {dataset: d, type: wds, task: zeroshot}\n")
    with pytest.raises(ConfigError, match="lists no models: give --model"):
        suite_models(str(tmp_path / "none.yaml"))


def test_embeddings_cache_under_the_model_fingerprint(tmp_path, oc_arch, oc_net):
    torch.save(oc_net.state_dict(), tmp_path / "w.pt")
    model = load_model(f"open_clip:{oc_arch}", pretrained=str(tmp_path / "w.pt"))
    from align.bench.datasets import open_dataset
    from align.bench.embed import embed_dataset
    data = open_dataset(classification_wds(tmp_path / "cls", n=8, n_classes=4), "wds", split="test")
    a = embed_dataset(model, data, "image", cache_dir=str(tmp_path / "c"), progress=False)
    b = embed_dataset(model, data, "image", cache_dir=str(tmp_path / "c"), progress=False)
    assert not a.cached and b.cached and np.array_equal(a.vectors, b.vectors)
    assert os.path.isdir(tmp_path / "c" / model.fingerprint())


def test_align_load_and_align_bench_go_through_one_factory(tmp_path, monkeypatch):
    """align.load, `align bench --model` and a suite's models all resolve a spec through
    align.bench.models.load_model and its MODEL_SOURCES registry (a plain path: the `align` source)."""
    import align
    from align.bench import models as bm
    from align.cli import main
    from tests.bench.conftest import FakeModel, classification_wds
    calls = []

    def source(scheme):
        def load(rest, pretrained=None, device="cpu"):
            calls.append((scheme, rest, pretrained))
            return FakeModel(name=f"{scheme}-{rest}")
        return load

    monkeypatch.setitem(bm.MODEL_SOURCES._items, "align", source("align"))
    monkeypatch.setitem(bm.MODEL_SOURCES._items, "fake", source("fake"))
    assert align.load("runs/x").name == "align-runs/x"
    assert align.load("fake:y", pretrained="tag").name == "fake-y"
    ds = classification_wds(tmp_path / "cls", n=12, n_classes=3)
    assert main(["bench", "zeroshot", "--model", "fake:z", "--dataset", ds, "--out", str(tmp_path / "r.json")]) == 0
    assert calls == [("align", "runs/x", None), ("fake", "y", "tag"), ("fake", "z", None)]


def test_align_load_takes_a_pathlib_path(tmp_path, monkeypatch):
    """align.load(Path(run)) loads the run (it was refused: 'a model is a string or a mapping ...; got PosixPath'),
    and align.embed takes a Path as the model to load."""
    import pathlib
    from align.bench import models as bm
    from tests.bench.conftest import FakeModel
    calls = []
    monkeypatch.setitem(bm.MODEL_SOURCES._items, "align",
                        lambda rest, pretrained=None, device="cpu": calls.append(rest) or FakeModel(name=rest))
    assert align.load(pathlib.Path("runs") / "x").name == os.path.join("runs", "x")
    monkeypatch.setattr("align.retrieval.embed.embed_corpus", lambda model, data, out, **kw: model.name)
    assert align.embed(pathlib.Path("runs/y"), "d", "o") == "runs/y"
    assert calls == [os.path.join("runs", "x"), "runs/y"]


def test_a_device_this_machine_lacks_is_one_line_before_the_model_loads(monkeypatch):
    """align.load(run, device="gpu") ended in torch's "Expected one of cpu, cuda, ... device type" traceback from
    model.to(), and device="cuda" on a machine without one in "Found no NVIDIA driver"; one ConfigError line
    naming the device, before any weights are read."""
    from align.bench import models as bm
    loaded = []
    monkeypatch.setitem(bm.MODEL_SOURCES._items, "align", lambda rest, pretrained=None, device="cpu": loaded.append(1))
    with pytest.raises(ConfigError, match="^device 'gpu' is not a torch device"):
        align.load("runs/x", device="gpu")
    with pytest.raises(ConfigError, match="^device cuda:999: this machine has (no|[0-9]+) CUDA device"):
        align.load("runs/x", device="cuda:999")
    assert loaded == []
    align.load("runs/x", device=torch.device("cpu"))
    assert loaded == [1]


def test_open_clip_models_refuse_what_align_models_refuse_in_one_line(oc_arch, oc_net):
    """align.load("local-dir:EXPORT") / open_clip:ARCH models: encode_text("a cat") failed with "'str' object has
    no attribute 'shape'", tokenize(["a", None]) with open_clip's "object of type 'NoneType' has no len()"; the same
    AlignError lines as an align model's (align.model.check_input, text_list)."""
    import open_clip
    model = OpenClipModel(oc_net, None, open_clip.get_tokenizer(oc_arch), oc_arch, None)
    for call, arg, message in [(model.encode_text, "a cat", "encode_text: expected a torch.Tensor batch, got str"),
                               (model.encode_text, torch.ones(1, 40, dtype=torch.long),
                                "encode_text: 40 tokens per text, over this model's context_length 12"),
                               (model.encode_image, torch.zeros(3, 16, 16), "encode_image: expected a float batch"),
                               (model.tokenize, ["a", None], r"tokenize: texts\[1\] is NoneType"),
                               (model.tokenize, ["a", "b\udfff"],
                                r"tokenize: texts\[1\]: lone surrogate at position 1")]:
        with pytest.raises(AlignError, match=message):
            call(arg)
    assert torch.equal(model.tokenize("a cat"), open_clip.get_tokenizer(oc_arch)(["a cat"]))


@pytest.mark.parametrize("custom_text", [False, True])
def test_text_features_skip_the_padding_and_match_open_clips_own(custom_text):
    """align embed / bench encode open_clip captions only up to the batch's last end-of-text token: the same
    features as open_clip's full-context encode_text (causal mask), for a fraction of the work."""
    from torch.utils.flop_counter import FlopCounterMode
    import open_clip
    torch.manual_seed(0)
    cls = open_clip.model.CustomTextCLIP if custom_text else open_clip.model.CLIP
    text_cfg = {**TINY_OPEN_CLIP["text_cfg"], "context_length": 40}
    net = cls(16, TINY_OPEN_CLIP["vision_cfg"], text_cfg).eval()
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=40)
    model = OpenClipModel(net, None, tok, "tiny", None)
    texts = ["a dog", "a red car on a long road", "", "one two three four five six seven eight nine ten eleven"]
    tokens = model.tokenize(texts)
    assert int(tokens.argmax(-1).max()) + 1 < tokens.shape[1] // 2      # the test needs padding to trim
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), F.normalize(net.encode_text(tokens), dim=-1),
                                   atol=1e-5, rtol=1e-5)
        for i in range(len(texts)):                                     # batch-of-one: other trim lengths
            torch.testing.assert_close(model.encode_text(tokens[i:i + 1]),
                                       F.normalize(net.encode_text(tokens[i:i + 1]), dim=-1), atol=1e-5, rtol=1e-5)
        with FlopCounterMode(display=False) as trimmed:
            model.encode_text(tokens)
        with FlopCounterMode(display=False) as full:
            net.encode_text(tokens)
        with FlopCounterMode(display=False) as bucketed:     # training's rounding: 16 positions here, not 13
            trimmed_text_forward(net.text if custom_text else net, tokens)
    assert trimmed.get_total_flops() < bucketed.get_total_flops() < 0.6 * full.get_total_flops()


def test_a_tag_open_clip_cannot_fetch_names_the_offline_way_out(monkeypatch, tmp_path):
    """Offline, open_clip's download error (cut at 300 characters) was all the line said: now it ends with the way
    out, a local weights file. A file that fails to load gets no such hint (it is not a download)."""
    import open_clip

    def offline(*a, **k):
        raise RuntimeError("Failed to download weights for tag 'openai': " + "x" * 400)
    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(AlignError, match=r"open_clip cannot load it: RuntimeError: Failed to download .*x "
                                         r"\(offline\? fetch the weights where a network is and pass the file: "
                                         r"--pretrained FILE\)$"):
        load_model("open_clip:RN50", pretrained="openai")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(AlignError) as e:
        load_model("open_clip:RN50", pretrained=str(tmp_path / "w.pt"))
    assert "offline" not in str(e.value)


def test_an_open_clip_tag_without_the_hub_is_read_from_the_cache_by_its_tag_or_is_one_line(no_hub, tmp_path,
                                                                                          monkeypatch):
    """Uncached: one line at once, no download tried (huggingface_hub retried 25-55 s before). Cached: open_clip is
    called with the tag (its quick_gelu and preprocessing apply) under huggingface_hub's offline flag, so it reads
    the cache without retrying the hub; the flag is restored after."""
    import huggingface_hub.constants as hc
    import align.bench.models as bm
    _, downloads = no_hub
    with pytest.raises(ConfigError, match=r"^model open_clip:ViT-B-32 pretrained 'laion2b_e16': cannot fetch it: "
                                          r"huggingface.co does not answer .*--pretrained FILE\)$"):
        load_model("open_clip:ViT-B-32", pretrained="laion2b_e16")
    assert downloads == []
    cache_file(tmp_path)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    seen = []
    monkeypatch.setattr(bm, "_build_open_clip", lambda name, pretrained, *a, **k: seen.append(
        (name, pretrained, hc.is_offline_mode())) or "model")
    assert bm.load_open_clip("ViT-B-32", "laion2b_e16") == "model"
    assert seen == [("ViT-B-32", "laion2b_e16", True)] and hc.is_offline_mode() is False


def test_an_open_clip_models_image_size_is_what_its_transform_makes(oc_arch, oc_net):
    """open_clip:ARCH / local-dir models refuse a batch of another size than image_transform makes in the same line
    as align models; without a transform (or one that keeps the aspect ratio) any size goes to open_clip."""
    import open_clip
    from PIL import Image

    from align.model import InputError
    transform = open_clip.image_transform(16, is_train=False)
    model = OpenClipModel(oc_net, transform, open_clip.get_tokenizer(oc_arch), oc_arch, None)
    assert model.image_shape() == (3, 16, 16) == tuple(transform(Image.new("RGB", (30, 9))).shape)
    with torch.no_grad():
        assert model.encode_image(torch.zeros(2, 3, 16, 16)).shape[0] == 2
        with pytest.raises(InputError, match=r"^encode_image: expected \[B, 3, 16, 16\].*got float32 \[2, 3, 8, 8\]$"):
            model.encode_image(torch.zeros(2, 3, 8, 8))
    assert OpenClipModel(oc_net, None, None, oc_arch, None).image_shape() is None
    keeps_ratio = OpenClipModel(oc_net, lambda im: torch.zeros(3, im.size[1], im.size[0]), None, oc_arch, None)
    assert keeps_ratio.image_shape() is None


def test_an_open_clip_file_of_an_hf_tokenizer_architecture_reads_the_tokenizer_beside_it(tmp_path, offline):
    """`open_clip:ARCH --pretrained FILE` for an architecture whose tokenizer is a Hugging Face one (SigLIP's config
    names timm/ViT-B-16-SigLIP): open_clip.get_tokenizer asked the Hub by that id, so the local form failed offline.
    The tokenizer files beside the file (as the download's folder holds them) are read; without them the line says
    where to put them."""
    import copy
    import json

    import open_clip
    from safetensors.torch import save_file
    from tests.towers.hf_tiny import save_tiny_tokenizer
    arch = "align-test-siglip-tokenizer"
    cfg = copy.deepcopy(open_clip.get_model_config("ViT-B-16-SigLIP"))
    cfg.update(embed_dim=16, vision_cfg=dict(TINY_OPEN_CLIP["vision_cfg"]))
    cfg["text_cfg"].update(context_length=8, vocab_size=16, width=32, heads=2, layers=1)
    if open_clip.get_model_config(arch) is None:
        (tmp_path / f"{arch}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(str(tmp_path / f"{arch}.json"))
    torch.manual_seed(0)
    net = open_clip.create_model(arch)
    os.makedirs(tmp_path / "dl")
    weights = str(tmp_path / "dl" / "open_clip_model.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    with pytest.raises(AlignError, match=rf"^open_clip:{arch} pretrained '.*': open_clip cannot load it: .* \(its "
                                         r"tokenizer timm/ViT-B-16-SigLIP is asked of the Hub: offline, put its files "
                                         rf"\(tokenizer.json or tokenizer_config.json\) beside the weights, in "
                                         rf"{tmp_path / 'dl'}\)$"):
        load_model({"model": f"open_clip:{arch}", "pretrained": weights})
    save_tiny_tokenizer(tmp_path / "dl")
    model = load_model({"model": f"open_clip:{arch}", "pretrained": weights})
    assert model.tokenize(["A photo of a dog."])[0].tolist() == [3, 4, 5, 3, 6, 1, 1, 1]
    assert offline[0] == []
