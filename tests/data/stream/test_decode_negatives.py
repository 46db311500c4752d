"""SampleDecoder's hard negatives: a sample's neg.txt captions, tokenized, padded to K, with a mask."""
import pytest
import torch

from align.data.stream.decode import NEGATIVES_DROPPED, SampleDecoder
from align.data.stream.faults import SkipSample
from align.data.stream.build import build_train_loader
from align.errors import DataError
from tests.wds_helpers import L_TEXT, TRANSFORMS, image_text, text_tf, write_shard


def _raw(key, negs=None, seed=0):
    s = image_text(key, seed=seed)
    s = {k: (v.encode() if isinstance(v, str) else v) for k, v in s.items() if k != "__key__"}
    s["__key__"] = key
    if negs is not None:
        s["neg.txt"] = negs.encode() if isinstance(negs, str) else negs
    return s


def test_negatives_are_tokenized_truncated_to_k_and_masked():
    dec = SampleDecoder(["image", "text"], TRANSFORMS, train=True, hard_negatives=2)
    samples = [dec(_raw("a", "zebra\n\nyak\nwolf\n"), 0), dec(_raw("b"), 0), dec(_raw("c", "ox"), 0)]
    assert dec.take_noted() == {NEGATIVES_DROPPED: 1}       # "wolf": beyond K = 2
    batch = dec.collate(samples)
    assert batch["neg_text"].shape == (3, 2, L_TEXT) and batch["neg_text"].dtype == torch.long
    assert batch["neg_text_mask"].tolist() == [[True, True], [False, False], [True, False]]
    assert torch.equal(batch["neg_text"][0], text_tf(["zebra", "yak"]))
    assert torch.equal(batch["neg_text"][2, 0], text_tf(["ox"])[0])
    assert batch["neg_text"][1].abs().sum() == 0 and batch["neg_text"][2, 1].abs().sum() == 0


def test_without_hard_negatives_neg_txt_is_ignored():
    dec = SampleDecoder(["image", "text"], TRANSFORMS, train=False)
    batch = dec.collate([dec(_raw("a", "zebra"), 0)])
    assert "neg_text" not in batch and "neg_text_mask" not in batch


def test_bad_negatives_are_skipped_or_refused():
    dec = SampleDecoder(["image", "text"], TRANSFORMS, train=True, hard_negatives=1)
    with pytest.raises(SkipSample, match="neg.txt"):
        dec(_raw("a", b"\xff\xfe bad utf-8"), 0)
    with pytest.raises(DataError, match="'text' modality"):
        SampleDecoder(["image", "audio"], TRANSFORMS, train=True, hard_negatives=1)
    with pytest.raises(DataError, match="hard_negatives"):
        SampleDecoder(["image", "text"], TRANSFORMS, train=True, hard_negatives=-1)


def test_loader_carries_negatives_with_their_samples(tmp_path):
    samples = []
    for i in range(8):
        s = image_text(f"k{i}", seed=i, caption=f"c{i}")
        if i % 2:
            s["neg.txt"] = f"n{i}a\nn{i}b"
        samples.append(s)
    path = write_shard(tmp_path / "s-000.tar", samples)
    loader = build_train_loader(path, transforms=TRANSFORMS, batch_size=4, modalities=["image", "text"],
                                num_workers=0, shuffle_buffer=4, hard_negatives=3)
    seen = 0
    for batch in loader:
        for key, neg, mask in zip(batch["__key__"], batch["neg_text"], batch["neg_text_mask"]):
            i = int(key[1:])
            want = [f"n{i}a", f"n{i}b"] if i % 2 else []
            assert mask.tolist() == [True] * len(want) + [False] * (3 - len(want)), key
            if want:
                assert torch.equal(neg[:2], text_tf(want)), key
            seen += 1
    assert seen == 8
