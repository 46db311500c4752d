"""model.init_from: weights-only starts from align runs/exports and open_clip checkpoints (files and folders)."""
import json
import math
import os
import shutil

import pytest
import torch

from align.config import parse_recipe
from align.errors import ConfigError
from align.train.init_from import apply_init_from, load_source, open_clip_to_align
from align.model import build_model
from tests.conftest import TINY_OPEN_CLIP
from tests.export.conftest import TINY_AUDIO_CNN, make_run
from tests.test_open_clip_files import no_hub  # noqa: F401  (offline uses it)
from tests.towers.test_open_clip_towers import offline  # noqa: F401  (a fixture)

SCALE = math.log(1 / 0.031)      # a temperature no fresh model has


def _model(embed_dim=16, towers=None, **model):
    d = {"model": {"embed_dim": embed_dim, "open_clip": json.loads(json.dumps(TINY_OPEN_CLIP)), **model},
         "train": {"max_steps": 1}}
    if towers:
        d["model"]["towers"] = towers
    return build_model(parse_recipe(d).model)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained-looking align run with a distinct temperature, its export, and an open_clip-only folder."""
    from align.export import export
    from align.train.checkpoint import save_checkpoint
    root = tmp_path_factory.mktemp("src")
    run, model = make_run(root, seed=3)
    with torch.no_grad():
        model.logit_scale.fill_(SCALE)
    save_checkpoint(os.path.join(run, "checkpoints"), "step-00000002", model.state_dict(), state={"step": 2})
    exp = str(root / "export")
    export(run, exp, fmt="open_clip", progress=False)
    oc = root / "open_clip_only"
    oc.mkdir()
    for f in ("open_clip_config.json", "open_clip_model.safetensors"):
        shutil.copy(os.path.join(exp, f), oc / f)
    return {"run": run, "model": model, "export": exp, "oc": str(oc), "root": root}


def _assert_same_towers(a, b, towers=("image", "text")):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if k.split(".")[1] in towers if k.startswith("towers.") else False:
            assert torch.equal(sa[k], sb[k]), k


def test_open_clip_folder_restores_weights_and_temperature(source, capsys):
    import open_clip
    m = _model()
    rep = apply_init_from(m, "local-dir:" + source["oc"])
    _assert_same_towers(m, source["model"])
    assert float(m.logit_scale.detach()) == pytest.approx(SCALE, abs=1e-6)
    assert rep["ignored"] == [] and rep["new_towers"] == []
    # the same folder through open_clip itself has this temperature
    oc = open_clip.create_model("local-dir:" + source["oc"])
    assert float(oc.logit_scale.detach()) == pytest.approx(float(m.logit_scale.detach()), abs=0)
    out = capsys.readouterr().out
    assert "open_clip folder" in out and "matched" in out


def test_added_audio_tower_starts_new_and_is_listed(source, capsys):
    m = _model(towers={"audio": dict(TINY_AUDIO_CNN)})
    before = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("towers.audio.")}
    rep = apply_init_from(m, source["export"])     # align export: align keys
    assert rep["new_towers"] == ["audio"]
    for k, v in before.items():
        assert torch.equal(m.state_dict()[k], v)
    _assert_same_towers(m, source["model"])
    table = capsys.readouterr().out
    assert "audio" in table and "new tower" in table


def test_align_run_and_checkpoint(source):
    for path in (source["run"], os.path.join(source["run"], "checkpoints", "step-00000002")):
        m = _model()
        apply_init_from(m, path, printer=None)
        _assert_same_towers(m, source["model"])
        assert float(m.logit_scale.detach()) == pytest.approx(SCALE, abs=1e-6)


def _open_clip_model(source):
    import open_clip
    return open_clip.create_model("local-dir:" + source["oc"])


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_open_clip_train_checkpoint_files(source, tmp_path, suffix):
    """open_clip_train saves {"epoch", "name", "state_dict", "optimizer"}, with `module.` under DDP."""
    sd = _open_clip_model(source).state_dict()
    path = str(tmp_path / f"epoch_3{suffix}")
    if suffix == ".pt":
        torch.save({"epoch": 3, "name": "x", "state_dict": {"module." + k: v for k, v in sd.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}, path)
    elif suffix == ".bin":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    m = _model()
    rep = apply_init_from(m, path, printer=None)
    _assert_same_towers(m, source["model"])
    assert float(m.logit_scale.detach()) == pytest.approx(SCALE, abs=1e-6) and rep["ignored"] == []


def test_plain_clip_state_dict_maps_text_keys(source):
    """open_clip's CLIP class keeps the text tower at top level (token_embedding, transformer.*, ...)."""
    from open_clip.model import CLIP
    cfg = json.load(open(os.path.join(source["oc"], "open_clip_config.json")))["model_cfg"]
    clip = CLIP(embed_dim=16, vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])
    sd = clip.state_dict()
    assert "token_embedding.weight" in sd and "transformer.resblocks.0.attn.in_proj_weight" in sd
    mapped = open_clip_to_align(sd)
    m = _model()
    own = m.state_dict()
    assert {k for k in mapped if k.startswith("towers.")} <= set(own)
    assert "towers.text.net.token_embedding.weight" in mapped and "towers.image.net.conv1.weight" in mapped


def test_shape_mismatch_fails_naming_the_tensor(source):
    m = _model(embed_dim=8)
    with pytest.raises(ConfigError, match=r"tensor 'towers\.image\.net\.proj' has shape \[32, 16\].*\[32, 8\]"):
        apply_init_from(m, source["export"], printer=None)


def test_pickle_with_code_is_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": _Evil()}, path)
    with pytest.raises(ConfigError, match="holds Python objects besides tensors") as e:
        load_source(path)
    # torch's own message opens with advice to re-run with weights_only=False, i.e. to run the file's code
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


class _Evil:
    pass


def test_missing_source_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        load_source(str(tmp_path / "nope"))


def test_first_logged_temperature_equals_the_exports(source, tiny_recipe):
    """Fine-tune through train(): the step-0 row of metrics.jsonl has the export's temperature, and
    training starts at step 1 with a fresh optimizer."""
    from tests.train.test_train import _run
    r = dict(tiny_recipe)
    r["model"] = dict(r["model"], init_from=source["export"])
    r["train"] = dict(r["train"], max_steps=2, log_every=1, checkpoint_every=0)
    r["data"] = dict(r["data"], synthetic_caption="a new caption set")
    assert _run(r) == 0
    rows = [json.loads(l) for l in open(os.path.join(r["output_dir"], "metrics.jsonl"))]
    assert [x["step"] for x in rows] == [0, 1, 2]
    assert rows[0]["logit_scale"] == pytest.approx(math.exp(SCALE), rel=1e-6)
    assert rows[0]["init_from"] == source["export"]
    assert rows[1]["logit_scale"] != rows[0]["logit_scale"]           # it trains from there
    assert abs(math.log(rows[1]["logit_scale"]) - SCALE) < 0.01


def test_open_clip_tower_pretrained_builds_only_its_tower(source, monkeypatch):
    """Per-tower `pretrained` from a local file / folder: no full open_clip model is created."""
    import open_clip
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("built a whole open_clip model"))
    oc = source["oc"]
    towers = {m: {"type": "open_clip", "config": json.loads(json.dumps(dict(TINY_OPEN_CLIP, embed_dim=16))),
                  "pretrained": ("local-dir:" + oc) if m == "image" else
                  os.path.join(oc, "open_clip_model.safetensors"),
                  "pretrained_temperature": m == "image"} for m in ("image", "text")}
    d = {"model": {"embed_dim": 16, "towers": towers}, "train": {"max_steps": 1}}
    r = parse_recipe(d)
    m = build_model(r.model)
    _assert_same_towers(m, source["model"])
    from align.train.init_from import apply_tower_temperature
    assert apply_tower_temperature(m, r.model) == "image"
    assert float(m.logit_scale.detach()) == pytest.approx(SCALE, abs=1e-6)


def test_open_clip_tower_pretrained_errors(source, tmp_path):
    base = {"type": "open_clip", "config": json.loads(json.dumps(TINY_OPEN_CLIP))}   # no embed_dim of its own
    from align.towers import build_tower
    with pytest.raises(ConfigError, match=r"no such file or folder 'no_such_tag' \(an open_clip tag needs the "
                                          r"architecture's name in model.towers.image.model\)"):
        build_tower(dict(base, pretrained="no_such_tag"), "image", 16)
    from align.towers.open_clip_towers import pretrained_file
    with pytest.raises(ConfigError, match="'no_such_tag' is neither a file, a folder nor an open_clip tag of 'RN50'"):
        pretrained_file("RN50", "no_such_tag", "model.towers.image")
    with pytest.raises(ConfigError, match=r"tensor 'proj' has shape \[32, 16\] in the checkpoint but \[32, 8\]"):
        build_tower(dict(base, pretrained="local-dir:" + source["oc"]), "image", 8)


def _recaption(src_dir, dst_dir):
    """The demo's train shards with a new caption set ("a handwritten seven." -> "the digit seven")."""
    import glob
    import io
    import tarfile
    os.makedirs(dst_dir, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(src_dir, "*.tar"))):
        with tarfile.open(path) as tin, tarfile.open(os.path.join(dst_dir, os.path.basename(path)), "w") as tout:
            for m in tin.getmembers():
                data = tin.extractfile(m).read()
                if m.name.endswith(".txt"):
                    data = ("the digit " + data.decode().strip().rstrip(".").split()[-1]).encode()
                info = tarfile.TarInfo(m.name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))


@pytest.mark.slow
def test_demo_export_is_the_start_of_a_finetune(tmp_path, capsys):
    """The README's fine-tuning workflow on the real demo: train, export to open_clip layout, fine-tune on a new
    caption set from it (first logged temperature = the export's), bench before/after side by side, WiSE-FT."""
    import open_clip
    from align.cli import main
    from align.demo.data import build_demo
    data = str(tmp_path / "data")
    build_demo(data, seed=0, limit=400, progress=False)
    run, exp, ft = str(tmp_path / "run"), str(tmp_path / "export"), str(tmp_path / "ft")
    assert main(["train", "demo", f"output_dir={run}", f"data.train={data}/train", f"data.val={data}/val",
                 "train.max_steps=60", "train.warmup_steps=10", "data.num_workers=1", "train.checkpoint_every=0", "--no-progress"]) == 0
    assert main(["export", run, "--out", exp, "--format", "open_clip"]) == 0
    want = float(open_clip.create_model("local-dir:" + exp).logit_scale.detach().exp())
    _recaption(os.path.join(data, "train"), str(tmp_path / "captions"))
    assert main(["train", "finetune-demo", f"output_dir={ft}", f"data.train={tmp_path / 'captions'}",
                 f"model.init_from=local-dir:{exp}", "train.max_steps=20", "data.num_workers=1",
                 "--no-progress"]) == 0
    rows = [json.loads(l) for l in open(os.path.join(ft, "metrics.jsonl"))]
    assert rows[0]["step"] == 0 and rows[0]["logit_scale"] == pytest.approx(want, rel=1e-6)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"benchmarks:\n  - {{dataset: {data}/val, type: wds, task: zeroshot, modality: image}}\n")
    capsys.readouterr()
    assert main(["bench", "suite", str(suite), "--model", exp, "--model", ft, "--out", str(tmp_path / "b")]) == 0
    table = capsys.readouterr().out
    assert "export" in table and "ft" in table
    assert main(["export", ft, "--out", str(tmp_path / "wise"), "--format", "open_clip",
                 "--interpolate-with", "local-dir:" + exp, "--alpha", "0,0.5,1"]) == 0
    assert sorted(os.listdir(tmp_path / "wise")) == ["alpha-0", "alpha-0.5", "alpha-1"]


def test_open_clip_tower_pretrained_tag_goes_through_open_clip(source, monkeypatch, tmp_path):
    """A tag is resolved by open_clip (get_pretrained_cfg -> download_pretrained, the path a network feeds);
    offline, the download is replaced by the local file it would have written."""
    import open_clip
    import open_clip.pretrained as ocp
    cfg_file = tmp_path / "tiny-align-test.json"
    cfg_file.write_text(json.dumps(dict(TINY_OPEN_CLIP, embed_dim=16)))
    open_clip.add_model_config(str(cfg_file))
    seen = {}
    monkeypatch.setattr(ocp, "get_pretrained_cfg", lambda name, tag: {"hf_hub": f"x/{name}-{tag}/"}
                        if (name, tag) == ("tiny-align-test", "mytag") else {})

    def fake_download(cfg, **kw):
        seen["cfg"] = cfg
        return os.path.join(source["oc"], "open_clip_model.safetensors")
    monkeypatch.setattr(ocp, "download_pretrained", fake_download)
    from align.towers import build_tower
    t = build_tower({"type": "open_clip", "model": "tiny-align-test", "pretrained": "mytag"}, "text", 16)
    assert seen["cfg"] == {"hf_hub": "x/tiny-align-test-mytag/"}
    for k, v in t.net.state_dict().items():
        assert torch.equal(v, source["model"].towers.text.net.state_dict()[k]), k


def test_siglip_bias_and_bin_folder(tmp_path):
    """An open_clip folder holding open_clip_pytorch_model.bin; SigLIP's logit_bias comes along."""
    from align.export import export
    run, src = make_run(tmp_path / "s", logit_bias=-7.5)
    export(run, str(tmp_path / "e"), fmt="open_clip", progress=False)
    from safetensors.torch import load_file
    sd = load_file(str(tmp_path / "e" / "open_clip_model.safetensors"))
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(sd, folder / "open_clip_pytorch_model.bin")
    shutil.copy(tmp_path / "e" / "open_clip_config.json", folder / "open_clip_config.json")
    m = _model(init_logit_bias=-10.0)
    apply_init_from(m, str(folder), printer=None)
    assert float(m.logit_bias.detach()) == pytest.approx(float(src.logit_bias.detach()), abs=1e-6)
    _assert_same_towers(m, src)


def test_siglip_bias_is_restored_from_the_source_bias_not_its_scale(source, tmp_path):
    """A SigLIP source holds logit_bias != logit_scale: both paths restore each from its own tensor.
    pretrained_temperature: an open_clip tower's checkpoint with a bias; init_from: an align SigLIP run."""
    from safetensors.torch import load_file, save_file
    from align.train.init_from import apply_tower_temperature
    bias, scale = -3.75, 2.5
    sd = load_file(os.path.join(source["oc"], "open_clip_model.safetensors"))
    sd["logit_scale"], sd["logit_bias"] = torch.tensor(scale), torch.tensor(bias)
    weights = str(tmp_path / "siglip.safetensors")
    save_file(sd, weights)
    towers = {m: {"type": "open_clip", "config": json.loads(json.dumps(dict(TINY_OPEN_CLIP, embed_dim=16))),
                  "pretrained": weights, "pretrained_temperature": m == "image"} for m in ("image", "text")}
    r = parse_recipe({"model": {"embed_dim": 16, "towers": towers, "init_logit_bias": -10.0},
                      "loss": {"type": "siglip"}, "train": {"max_steps": 1}})
    m = build_model(r.model)
    assert apply_tower_temperature(m, r.model) == "image"
    assert float(m.logit_scale.detach()) == scale and float(m.logit_bias.detach()) == bias

    run, src = make_run(tmp_path / "run", logit_bias=bias, seed=4)
    with torch.no_grad():                              # make_run perturbed both
        src.logit_scale.fill_(scale)
        src.logit_bias.fill_(bias)
    from align.train.checkpoint import save_checkpoint
    save_checkpoint(os.path.join(run, "checkpoints"), "step-00000002", src.state_dict(), state={"step": 2})
    fresh = _model(init_logit_bias=-10.0)
    apply_init_from(fresh, run, printer=None)
    assert float(fresh.logit_scale.detach()) == scale and float(fresh.logit_bias.detach()) == bias


def test_a_source_with_no_tensor_for_any_tower_is_an_error_not_a_fresh_start(tmp_path):
    """A Hugging Face model file or another framework's checkpoint matched nothing, and training went on from
    random weights with exit 0 while the user asked for a pretrained start."""
    path = str(tmp_path / "hf_like.bin")
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(4, 2), "logit_scale": torch.tensor(1.0)}, path)
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match=r"no tensor of open_clip weights .*hf_like.bin fits this model's towers "
                                          r"\(1 source tensors, e.g. bert.embeddings.*a Hugging Face model folder "
                                          r"is a tower of its own: \{type: hf \| hf_image \| hf_audio, model: "):
        apply_init_from(m, path, printer=None)      # (it said: goes in a tower's `pretrained`, which refuses it)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items() if k.startswith("towers."))


def test_an_open_clip_folder_trained_with_another_activation_is_refused(source, tmp_path):
    """Every tensor fits whatever quick_gelu says, so only the config can tell: open_clip warns, align refuses."""
    folder = tmp_path / "qg"
    shutil.copytree(source["oc"], folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="trained with quick_gelu=true but tower 'image' uses quick_gelu=false"):
        apply_init_from(_model(), "local-dir:" + str(folder), printer=None)
    apply_init_from(_model_quick(), "local-dir:" + str(folder), printer=None)


def test_a_towers_pretrained_open_clip_folder_trained_with_another_activation_is_refused(source, tmp_path):
    """A tower's `pretrained` folder took weights trained with quick_gelu into a GELU tower without a word (its
    features differ; init_from refuses the same folder)."""
    from align.towers import build_tower
    folder = tmp_path / "qg"
    shutil.copytree(source["oc"], folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    base = {"type": "open_clip", "config": json.loads(json.dumps(TINY_OPEN_CLIP))}
    for pretrained in (str(folder), "local-dir:" + str(folder)):
        with pytest.raises(ConfigError, match=r"model.towers.text.pretrained: .*qg was trained with quick_gelu=true "
                                              r"but this tower uses quick_gelu=false; set model.towers.text.quick_"):
            build_tower(dict(base, pretrained=pretrained), "text", 16)
    tower = build_tower(dict(base, pretrained=str(folder), quick_gelu=True), "text", 16)
    for k, v in tower.net.state_dict().items():
        assert torch.equal(v, source["model"].towers.text.net.state_dict()[k]), k


def _model_quick():
    tiny = json.loads(json.dumps(TINY_OPEN_CLIP))
    tiny["quick_gelu"] = True
    d = {"model": {"embed_dim": 16, "open_clip": tiny}, "train": {"max_steps": 1}}
    return build_model(parse_recipe(d).model)


def test_a_resumed_run_reads_its_weights_from_the_checkpoint_not_its_towers_pretrained(source, tiny_recipe, tmp_path):
    """A run started from a tower's `pretrained` file could not resume once the file had moved (or, for a tag,
    downloaded it again): the checkpoint holds the weights. A fresh start still needs the file, in one line."""
    from align.train.loop import train
    weights = str(tmp_path / "start.safetensors")
    shutil.copy(os.path.join(source["oc"], "open_clip_model.safetensors"), weights)
    tiny_recipe["model"]["towers"] = {"image": {"pretrained": weights}}
    tiny_recipe["train"].update(max_steps=2, checkpoint_every=2)
    train(parse_recipe(tiny_recipe), progress=False)
    os.remove(weights)
    tiny_recipe["train"].update(max_steps=3)
    train(parse_recipe(tiny_recipe), progress=False)
    assert os.path.isdir(os.path.join(tiny_recipe["output_dir"], "checkpoints", "step-00000003"))
    tiny_recipe.update(output_dir=str(tmp_path / "fresh"))
    with pytest.raises(ConfigError, match=r"model.towers.image.pretrained: no such file or folder .*start.safetensors"):
        train(parse_recipe(tiny_recipe), progress=False)


def test_an_open_clip_folder_copied_without_its_weights_says_so(tmp_path):
    """The line read 'not an align run ... but an open_clip folder: load it as local-dir:DIR' for the folder given
    as local-dir:DIR, with no word of the missing weights file."""
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {}}')
    for given in (str(tmp_path), f"local-dir:{tmp_path}"):
        with pytest.raises(ConfigError, match=rf"^model.init_from: {tmp_path} holds open_clip_config.json but no "
                                              r"weights file \(open_clip_model.safetensors or "
                                              r"open_clip_pytorch_model.bin\) beside it$"):
            load_source(given)


def test_init_from_a_hub_folder_gives_a_named_architectures_tokenizer_without_the_hub(tmp_path, tiny_recipe, offline,
                                                                                     monkeypatch):
    """`model.open_clip: ViT-B-16-SigLIP` (its config names the Hub tokenizer timm/ViT-B-16-SigLIP) with
    `model.init_from: DIR` (a hub download copied by hand) asked the Hub for the tokenizer, one error line offline,
    though DIR held its files, as `pretrained: DIR` reads them. They are read from DIR, and the run loads with them."""
    import align
    from align.train.loop import train
    from tests.towers.hf_tiny import save_tiny_tokenizer
    from tests.towers.test_open_clip_towers import _hub_folder, tiny_siglip
    d, _ = _hub_folder(tmp_path, tiny_siglip(monkeypatch), {})
    save_tiny_tokenizer(d)
    tiny_recipe["model"] = {"embed_dim": 16, "open_clip": "ViT-B-16-SigLIP", "init_from": str(d)}
    tiny_recipe["train"].update(max_steps=1, checkpoint_every=1)
    train(parse_recipe(tiny_recipe), progress=False)
    want = [3, 4, 5, 3, 6, 1, 1, 1]                                         # a photo of a dog [PAD]...
    assert align.load(tiny_recipe["output_dir"]).tokenize(["a photo of a dog"])[0].tolist() == want
    assert offline[0] == []


def test_init_from_a_run_passes_on_the_tokenizer_folder_that_run_recorded(tmp_path, tiny_recipe, offline,
                                                                          monkeypatch):
    """`model.init_from: RUN` (a run started from a hub folder, its tokenizer_folder recorded in RUN/config.yaml)
    did not pass that folder on: the new run asked the Hub for `timm/ViT-B-16-SigLIP`'s tokenizer (one error line
    offline). It takes the folder the run recorded, and loads with it too."""
    import yaml
    import align
    from align.train.loop import train
    from tests.towers.hf_tiny import save_tiny_tokenizer
    from tests.towers.test_open_clip_towers import _hub_folder, tiny_siglip
    d, _ = _hub_folder(tmp_path, tiny_siglip(monkeypatch), {})
    save_tiny_tokenizer(d)
    tiny_recipe["model"] = {"embed_dim": 16, "open_clip": "ViT-B-16-SigLIP", "init_from": str(d)}
    tiny_recipe["train"].update(max_steps=1, checkpoint_every=1)
    first = tiny_recipe["output_dir"]
    train(parse_recipe(tiny_recipe), progress=False)
    for start in (first, os.path.join(first, "checkpoints", "step-00000001")):   # a run dir, a checkpoint dir
        tiny_recipe.update(output_dir=str(tmp_path / f"second{len(start)}"))
        tiny_recipe["model"]["init_from"] = start
        train(parse_recipe(tiny_recipe), progress=False)
        with open(os.path.join(tiny_recipe["output_dir"], "config.yaml")) as f:
            text = yaml.safe_load(f)["model"]["towers"]["text"]
        assert text["tokenizer_folder"] == str(d), text
        assert align.load(tiny_recipe["output_dir"]).tokenize(["a photo of a dog"])[0].tolist() == [3, 4, 5, 3, 6,
                                                                                                   1, 1, 1]
    assert offline[0] == []
