"""The loss inputs beyond the pair embeddings, through `train()` on real shards written here:
loss.hard_negatives (neg.txt captions join their sample's row) and loss.distill (a frozen teacher, online or
stored in reinforced shards). Each test compares the loss the run logged at step 1 with a plain reference
computed from what the model saw, so it fails when the loop drops the key."""
import glob
import math

import pytest
import torch
import torch.nn.functional as F

from align.errors import ConfigError
from tests.losses.loss_reference import ref_hard_negative_clip
from tests.losses.test_distill import ref_distill
from tests.switch_helpers import metrics, recipe, train_dict
from tests.wds_helpers import image_text, write_shard

NEGS = ["a drawing of a cat", "a blue car", "three birds"]


def _shards(root, negatives: bool):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        samples = []
        for j in range(8):
            s = image_text(f"s{i}_{j:02d}", seed=i * 100 + j)
            if negatives and j % 3:                          # some samples have 1 or 2 negatives, some none
                s["neg.txt"] = "\n".join(NEGS[(i + j) % 3:][:1 + j % 2])
            samples.append(s)
        write_shard(root / f"s-{i:03d}.tar", samples)
    return str(root / "s-{000..001}.tar")


class Capture:
    """The first training forward of AlignModel: its batch and outputs, and the negatives embedded by an
    independent call of the text tower (weights as at step 1)."""

    def __init__(self, monkeypatch):
        from align.model import AlignModel
        real, self.calls = AlignModel.forward, []
        cap = self

        def forward(model, batch):
            out = real(model, batch)
            if model.training and torch.is_grad_enabled() and not cap.calls:
                rec = {"out": {k: v.detach().clone() for k, v in out.items()},
                       "batch": {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}}
                if "neg_text" in batch:
                    with torch.no_grad():
                        n = batch["neg_text"]
                        z = model.towers["text"](n.reshape(-1, n.shape[-1]))
                        rec["neg_ref"] = F.normalize(z, dim=-1).reshape(n.shape[0], n.shape[1], -1)
                cap.calls.append(rec)
            return out
        monkeypatch.setattr(AlignModel, "forward", forward)


def test_hard_negatives_join_the_loss_at_step_1(tmp_path, monkeypatch):
    """loss.hard_negatives=2: the step-1 loss is the plain reference on the step's embeddings with each row's
    neg.txt captions (embedded by the text tower) as extra negatives; it differs from plain CLIP."""
    pattern = _shards(tmp_path / "shards", negatives=True)
    r = recipe(tmp_path, "hn", data={"train": pattern, "shuffle_buffer": 1},
               loss={"type": "hard_negative_clip", "hard_negatives": 2}, train={"max_steps": 1})
    cap = Capture(monkeypatch)
    train_dict(r)
    rec = cap.calls[0]
    assert "neg_text" in rec["batch"], "the loader gave no negatives: loss.hard_negatives was ignored"
    mask = rec["batch"]["neg_text_mask"]
    assert mask.shape == (8, 2) and mask.any() and not mask.all()
    out = rec["out"]
    assert torch.allclose(out["neg_text"], rec["neg_ref"], atol=1e-6)
    s = float(out["logit_scale"])
    want = ref_hard_negative_clip(out["image"].double(), out["text"].double(), rec["neg_ref"].double(), mask, s)
    plain = ref_hard_negative_clip(out["image"].double(), out["text"].double(), rec["neg_ref"].double(),
                                   torch.zeros_like(mask), s)
    got = metrics(r["output_dir"])[0]["loss"]
    # equal to the reference to ~1e-7 (float32 step vs float64 reference); the negatives move it by ~1e-3 at
    # this random init (7e-4 .. 2e-3 between tower inits), so 1e-4 separates "joined" from "ignored"
    assert abs(got - want.item()) < 1e-5 and abs(got - plain.item()) > 1e-4


def test_hard_negatives_need_a_loss_that_takes_them(tmp_path):
    from align.config import parse_recipe
    r = recipe(tmp_path, "x", data={"train": "shards/s-000.tar"}, loss={"hard_negatives": 2})
    with pytest.raises(ConfigError, match=r"^loss.hard_negatives: loss.type=clip takes no hard negatives"):
        parse_recipe(r)
    r = recipe(tmp_path, "x", loss={"distill": {"teacher": "stored"}})
    with pytest.raises(ConfigError, match=r"^loss.distill: loss.type=clip takes no teacher"):
        parse_recipe(r)
    r = recipe(tmp_path, "x", loss={"type": "distill_clip"})
    with pytest.raises(ConfigError, match=r"^loss.type=distill_clip: set loss.distill.teacher"):
        parse_recipe(r)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A tiny trained align run (the teacher), 2 steps on synthetic data."""
    tmp = tmp_path_factory.mktemp("teacher")
    r = recipe(tmp, "teacher", train={"max_steps": 2})
    train_dict(r)
    return r["output_dir"]


# the student's train crops equal the teacher's eval view on these square images (a whole-image crop)
WHOLE = {"towers": {"image": {"aug_cfg": {"scale": [1.0, 1.0]}}}}


def _student(tmp_path, name, pattern, teacher):
    return recipe(tmp_path, name, data={"train": pattern, "shuffle_buffer": 1},
                  loss={"type": "distill_clip", "distill": {"teacher": teacher, "weight": 0.5}},
                  train={"max_steps": 1}, model=WHOLE)


def test_distill_online_and_stored_teachers_give_the_reference_loss_at_step_1(tmp_path, monkeypatch, teacher_run):
    """loss.distill with the teacher run online (on the student's inputs) and with its embeddings stored in
    reinforced shards (align data reinforce's writer): the same step-1 loss, equal to the plain reference
    (CLIP + 0.5 * KL in both directions, temperature = the teacher's 1/logit_scale)."""
    import align
    from align.data.write.reinforce import teacher_encoders, write_reinforced
    pattern = _shards(tmp_path / "shards", negatives=False)
    teacher = align.load(teacher_run)
    scale = float(teacher.logit_scale.detach().exp())
    counts = write_reinforced(sorted(glob.glob(str(tmp_path / "shards" / "*.tar"))), str(tmp_path / "reinforced"),
                              teacher_encoders(teacher), {"teacher": teacher_run, "logit_scale": scale})
    assert counts == {"samples": 16, "shards": 2, "skipped": 0}

    cap = Capture(monkeypatch)
    online = _student(tmp_path, "online", pattern, teacher_run)
    model_cfg = dict(online["model"])
    train_dict(online)
    rec = cap.calls[0]
    with torch.no_grad():
        ta = teacher.encode_image(rec["batch"]["image"]).double()
        tb = teacher.encode_text(rec["batch"]["text"]).double()
    out = rec["out"]
    want = ref_distill(out["image"].double(), out["text"].double(), ta, tb, float(out["logit_scale"]), 1 / scale, 0.5)
    got_online = metrics(online["output_dir"])[0]["loss"]
    assert abs(got_online - want.item()) < 1e-4

    cap.calls.clear()
    stored = _student(tmp_path, "stored", str(tmp_path / "reinforced" / "s-{000..001}.tar"), "stored")
    assert stored["model"] == model_cfg
    train_dict(stored)
    assert torch.allclose(cap.calls[0]["batch"]["teacher_image"].double(), ta, atol=1e-5)
    got_stored = metrics(stored["output_dir"])[0]["loss"]
    assert abs(got_stored - got_online) < 1e-4
    # the teacher matters: a plain CLIP student starts elsewhere
    clip = ref_distill(out["image"].double(), out["text"].double(), ta, tb, float(out["logit_scale"]), 1 / scale, 0.0)
    assert abs(got_online - clip.item()) > 1e-3 and math.isfinite(got_online)


def test_hard_negatives_under_gradcache_give_the_same_step_1_loss(tmp_path):
    """train.accum_steps=2 x batch 4 (GradCache: the neg embeddings and their [b, K] masks concatenated over
    micro-batches) logs the loss of batch 8 in one piece."""
    pattern = _shards(tmp_path / "shards", negatives=True)
    losses = []
    for name, batch, accum in (("one", 8, 1), ("gc", 4, 2)):
        r = recipe(tmp_path, name, data={"train": pattern, "shuffle_buffer": 1},
                   loss={"type": "hard_negative_clip", "hard_negatives": 2},
                   train={"max_steps": 1, "batch_size": batch, "accum_steps": accum})
        train_dict(r)
        losses.append(metrics(r["output_dir"])[0]["loss"])
    assert abs(losses[0] - losses[1]) < 1e-5


def test_an_open_clip_teacher_needs_a_local_file_and_nothing_downloads(tmp_path):
    """teacher: open_clip:ARCH with a tag (or nothing) is refused in one line before open_clip is asked."""
    from align.config import DistillConfig
    from align.train.teacher import build_teacher
    for pretrained in (None, "openai", str(tmp_path / "missing.safetensors")):
        cfg = DistillConfig(teacher="open_clip:ViT-B-32", pretrained=pretrained)
        with pytest.raises(ConfigError, match=r"^loss.distill.teacher=open_clip:ViT-B-32: give loss.distill.pretrained"):
            build_teacher(cfg, [["image", "text"]], "cpu")
