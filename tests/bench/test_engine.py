"""`--engine onnxruntime` (align.bench.engine): image and audio encoders exported to ONNX on their first batch
and run by onnxruntime give the torch engine's embeddings; text stays in torch; the engines' outputs never mix;
bad settings are one line."""
import json

import numpy as np
import pytest
import torch

from align.bench.engine import OnnxRuntimeModel, with_engine
from align.cli import main
from align.errors import AlignError, ConfigError
from align.retrieval.embed import embed_corpus, load_embeddings
from tests.bench.conftest import classification_wds
from tests.retrieval.conftest import tri_run, tri_shards  # noqa: F401  (tri_run: the tiny three-tower run fixture)

pytest.importorskip("onnxruntime")


def test_embed_through_onnxruntime_equals_torch_for_every_modality(tmp_path, tri_run):
    run, model = tri_run                            # image (ViT) + text + audio (CNN on log-mel) towers
    data = str(tmp_path / "shards")
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=5)
    ort = with_engine(model, "onnxruntime")
    assert isinstance(ort, OnnxRuntimeModel) and ort.modalities == model.modalities
    embed_corpus(model, data, str(tmp_path / "torch"), dtype="float32", batch_size=4, progress=False)
    embed_corpus(ort, data, str(tmp_path / "ort"), dtype="float32", batch_size=4, progress=False)
    for mod in ("image", "audio", "text"):
        a, ra = load_embeddings(str(tmp_path / "torch"), mod)
        b, rb = load_embeddings(str(tmp_path / "ort"), mod)
        assert list(ra["key"]) == list(rb["key"]) and a.shape == b.shape == (10, 16)
        if mod == "text":
            np.testing.assert_array_equal(a, b)                  # text is torch's own forward
        else:
            np.testing.assert_allclose(a, b, atol=1e-5)
            assert np.abs(a - b).max() > 0 or mod == "audio"     # (a real second runtime, not a passthrough)
    # one export per modality and input shape (batches of 4, 4, 2 share it), each checked against torch
    assert sorted(k.split()[0] for k in ort.parity) == ["audio", "image"]
    assert all(d <= 1e-4 for d in ort.parity.values())
    # the engines' vectors are keyed apart: resuming the torch output with onnxruntime is refused, not mixed
    man, ref = (json.load(open(tmp_path / d / "manifest.json")) for d in ("ort", "torch"))
    assert (man["engine"], ref["engine"]) == ("onnxruntime", "torch")
    assert man["model_fingerprint"] == ref["model_fingerprint"]        # same weights: the same model searches both
    with pytest.raises(ConfigError, match="engine differs"):
        embed_corpus(model, data, str(tmp_path / "torch"), dtype="float32", progress=False, engine="onnxruntime")
    # the Python API takes the engine too
    import align
    s = align.embed(run, data, str(tmp_path / "api"), dtype="float32", progress=False, engine="onnxruntime")
    assert s.vectors == {"image": 10, "audio": 10, "text": 10}
    np.testing.assert_allclose(load_embeddings(str(tmp_path / "api"), "image")[0],
                               load_embeddings(str(tmp_path / "ort"), "image")[0], atol=1e-6)


def test_a_wrong_export_is_refused_in_one_line(tri_run):
    _, model = tri_run

    class Drifting:
        """encode_image changes between calls: the traced graph cannot match the next torch call."""
        calls = 0

        def __getattr__(self, name):
            return getattr(model, name)

        def encode_image(self, x, normalize=True):
            Drifting.calls += 1
            return model.encode_image(x) + Drifting.calls

    ort = with_engine(Drifting(), "onnxruntime")
    with pytest.raises(AlignError, match=r"exported image encoder differs from torch by .*use --engine torch"):
        ort.encode_image(torch.rand(3, 3, 16, 16))


def test_bad_engine_settings_are_config_errors(tri_run):
    _, model = tri_run
    for kw, msg in [(dict(engine="tensorrt"), "use one of onnxruntime, torch"),
                    (dict(engine="onnxruntime", device="cuda:0"), "runs on the CPU"),
                    (dict(engine="onnxruntime", precision="bf16"), "encodes in fp32")]:
        with pytest.raises(ConfigError, match=msg):
            with_engine(model, **kw)
    assert with_engine(model, "torch") is model
    ort = with_engine(model, "onnxruntime")
    assert with_engine(ort, "onnxruntime") is ort                    # never wrapped twice


def test_bench_zeroshot_and_embed_cli_take_the_engine(tmp_path, capsys, tri_run):
    run, _ = tri_run
    ds = classification_wds(tmp_path / "cls", n=12, n_classes=4)
    out = {}
    for e in ("torch", "onnxruntime"):
        assert main(["bench", "zeroshot", "--model", run, "--dataset", ds, "--num-workers", "0",
                     "--engine", e, "--out", str(tmp_path / f"{e}.json"), "--cache-dir", str(tmp_path / "c")]) == 0
        assert f"engine {e}," in capsys.readouterr().out
        out[e] = json.load(open(tmp_path / f"{e}.json"))
    assert out["torch"]["metrics"] == out["onnxruntime"]["metrics"] and out["torch"]["n"]["scored"] == 12
    keys = sorted(p.name for p in (tmp_path / "c").iterdir())           # each engine's embeddings cached apart
    assert len(keys) == 2 and keys[1] == f"{keys[0]}-onnxruntime", keys
    tri_shards(tmp_path / "shards", n_shards=1, per_shard=3)
    assert main(["embed", run, "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "emb"),
                 "--engine", "onnxruntime", "--no-progress"]) == 0
    assert "vectors: image 3, audio 3, text 3" in capsys.readouterr().out
    assert main(["embed", run, "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "emb2"),
                 "--engine", "onnxruntime", "--precision", "bf16", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--engine onnxruntime encodes in fp32" in err[0]
