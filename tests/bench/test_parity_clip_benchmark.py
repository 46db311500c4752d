"""align's zero-shot and retrieval metrics equal CLIP_benchmark's own code on the same data and model.

Both sides read the same CLIP_benchmark-layout webdataset with the same fake model:
CLIP_benchmark through `build_wds_dataset` + its `evaluate` functions (as its CLI wires
them), align through `zeroshot_classification` / `retrieval` on FAISS.

numpy >= 2.4: CLIP_benchmark 1.6.2's `zeroshot_classification.accuracy` ends with
`float(t.sum(0, keepdim=True).cpu().numpy())`, i.e. `float()` of a shape-(1,) ndarray.
numpy deprecated converting ndim > 0 arrays to Python scalars in 1.25 and 2.4 made it a
TypeError ("only 0-dimensional arrays can be converted to Python scalars"), so every
single-label classification run fails there. The test shadows the builtin `float` inside
that one module with a version that accepts size-1 arrays (what numpy < 2.4 did), leaving
CLIP_benchmark's own code and site-packages unchanged.
"""
import builtins

import numpy as np
import pytest
import torch

from align.bench.datasets import open_dataset
from align.bench.retrieval import retrieval
from align.bench.zeroshot import zeroshot_classification
from tests.bench.conftest import FakeModel, classification_wds, retrieval_wds

pytestmark = pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle")

cb_zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
cb_zsr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
cb_builder = pytest.importorskip("clip_benchmark.datasets.builder")  # imports `requests` (undeclared dependency)


def _float_np24(x=0.0):
    """float() that, like numpy < 2.4, accepts a size-1 ndarray of any ndim."""
    if isinstance(x, np.ndarray) and x.size == 1:
        return builtins.float(x.reshape(()))
    return builtins.float(x)


@pytest.fixture
def cb_numpy_compat(monkeypatch):
    monkeypatch.setattr(cb_zsc, "float", _float_np24, raising=False)


def test_numpy_scalar_conversion_is_what_breaks_clip_benchmark(monkeypatch):
    """Documents the cause: TypeError on numpy >= 2.4 without the shim; the right numbers with it."""
    logits = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    target = torch.arange(40) % 6
    if tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4):
        with pytest.raises(TypeError, match="0-dimensional"):
            cb_zsc.accuracy(logits, target, topk=(1,))
    monkeypatch.setattr(cb_zsc, "float", _float_np24, raising=False)
    acc1, acc5 = cb_zsc.accuracy(logits, target, topk=(1, 5))
    top5 = np.argsort(-logits.numpy(), axis=1)[:, :5]
    assert acc1 == pytest.approx(np.mean(top5[:, 0] == target.numpy()))
    assert acc5 == pytest.approx(np.mean((top5 == target.numpy()[:, None]).any(1)))


def _cb_loader(root, transform, bs):
    ds = cb_builder.build_wds_dataset("wds/parity", transform=transform, split="test", data_dir=str(root))
    # exactly how clip_benchmark's CLI builds loaders for wds/ datasets
    return ds, torch.utils.data.DataLoader(ds.batched(bs), batch_size=None, shuffle=False, num_workers=0)


@pytest.mark.parametrize("n_classes", [7, 3])
def test_zeroshot_classification_parity(tmp_path, cb_numpy_compat, n_classes):
    root = classification_wds(tmp_path / "cls", n=60, n_classes=n_classes, per_shard=16)
    model = FakeModel(dim=24, seed=3)
    ds, loader = _cb_loader(root, model.image_transform, bs=16)
    ref = cb_zsc.evaluate(model, loader, model.tokenize, ds.classes, ds.templates, device="cpu", amp=False)

    ours = zeroshot_classification(model, open_dataset(root, "wds"), progress=False)["metrics"]
    assert ours["acc1"] == pytest.approx(ref["acc1"], abs=1e-6)
    assert ours["mean_per_class_recall"] == pytest.approx(ref["mean_per_class_recall"], abs=1e-6)
    if n_classes >= 5:
        assert ours["acc5"] == pytest.approx(ref["acc5"], abs=1e-6)
    else:  # CLIP_benchmark writes NaN; align leaves the key out
        assert np.isnan(ref["acc5"]) and "acc5" not in ours
    assert 0 < ref["acc1"] < 1  # non-degenerate data, so equality means something


def test_zeroshot_retrieval_parity(tmp_path):
    root = retrieval_wds(tmp_path / "ret", n=40, caps=(1, 4), per_shard=12)
    model = FakeModel(dim=12, seed=5)
    _, loader = _cb_loader(root, model.image_transform, bs=8)
    ref = cb_zsr.evaluate(model, loader, model.tokenize, device="cpu", amp=False, recall_k_list=[1, 5, 10])

    ours = retrieval(model, open_dataset(root, "wds"), query_modality="text", gallery_modality="image",
                     progress=False)["metrics"]
    assert set(ours) == set(ref)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
    for d in ("image", "text"):  # non-degenerate: recall grows with k and is not saturated
        assert ref[f"{d}_retrieval_recall@1"] < ref[f"{d}_retrieval_recall@10"] < 1
    assert ref["text_retrieval_recall@1"] + ref["image_retrieval_recall@1"] > 0
