"""Several captions per sample (issue 22 item 1) and captions cut at the context length (item 6).

data.text_keys draws a sample's caption source by weight (align.data.stream.decode.keyed_captions /
pick_text_key), then one of its captions, seeded per (seed, epoch, shard, key): the same whatever the worker
layout, and over epochs each caption about equally often. Captions the tokenizer cuts are counted and reach the
run summary through the loader's `noted` totals.
"""
import json
from collections import Counter

import pytest
import torch

from align.data.stream.decode import CAPTION_TRUNCATED, SampleDecoder, keyed_captions, pick_text_key
from align.data.stream.build import build_train_loader
from tests.wds_helpers import L_TEXT, image_tf, image_text, write_shard


def text16(captions):        # [str] -> long [n, 16] of char codes (wds_helpers' text_tf keeps only 4)
    out = torch.zeros(len(captions), 16, dtype=torch.long)
    for i, c in enumerate(captions):
        out[i, :len(c[:16])] = torch.tensor([ord(ch) for ch in c[:16]])
    return out


TRANSFORMS = {"image": image_tf, "text": text16}


def _raw(key, txt, extra=None):
    s = image_text(key)
    s["txt"] = txt.encode()
    if extra is not None:
        s["json"] = json.dumps({"extra": extra}).encode()
    s["__url__"] = "shard.tar"
    return s


def _caption(batch_row) -> str:
    return "".join(chr(c) for c in batch_row.tolist() if c)


def test_a_key_is_a_member_or_a_json_path_and_a_missing_key_is_none():
    raw = _raw("k", "one\ntwo", {"long": "a long caption", "many": ["x", " ", "y"], "n": 3})
    assert keyed_captions(raw, "txt") == ["one", "two"]
    assert keyed_captions(raw, "json:extra.long") == ["a long caption"]
    assert keyed_captions(raw, "json:extra.many") == ["x", "y"]
    assert keyed_captions(raw, "json:extra.n") is None and keyed_captions(raw, "json:extra.nope") is None
    assert keyed_captions(raw, "alt.txt") is None
    assert pick_text_key(raw, [("alt.txt", 1.0), ("json:extra.long", 1.0)], None)[0] == "json:extra.long"
    assert pick_text_key(raw, [("json:extra.long", 0.0), ("txt", 1.0)], None)[0] == "txt"         # weight 0: never
    assert pick_text_key(raw, [("alt.txt", 1.0)], None) == (None, None)


def test_keys_are_drawn_by_weight_and_captions_equally_over_epochs():
    """3:1 weights over 400 epochs of one sample; then 5 captions of one key, each ~1/5 of the draws."""
    dec = SampleDecoder(["image", "text"], TRANSFORMS, train=True, text_keys={"txt": 3, "json:extra.long": 1})
    raw = _raw("k", "short", {"long": "LONG"})
    got = Counter(_caption(dec(raw, epoch)["text"]) for epoch in range(400))
    assert set(got) == {"short", "LONG"} and 0.68 < got["short"] / 400 < 0.82
    five = SampleDecoder(["image", "text"], TRANSFORMS, train=True)
    raw5 = _raw("k5", "\n".join(f"caption {i}" for i in range(5)))
    counts = Counter(_caption(five(raw5, epoch)["text"]) for epoch in range(500))
    assert len(counts) == 5 and all(70 <= c <= 130 for c in counts.values()), counts
    ev = SampleDecoder(["image", "text"], TRANSFORMS, train=False, text_keys={"json:extra.long": 1, "txt": 5})
    assert _caption(ev(raw, 0)["text"]) == "LONG"            # evaluation: the first key present, every time


def test_the_drawn_caption_never_depends_on_the_worker_layout(tmp_path):
    samples = []
    for i in range(24):
        s = image_text(f"k{i:02d}", seed=i)
        s["txt"] = "\n".join(f"c{i}-{j}" for j in range(5))
        s["json"] = json.dumps({"extra": {"long": f"L{i}"}})
        samples.append(s)
    paths = [write_shard(tmp_path / f"s{j}.tar", samples[j::3]) for j in range(3)]

    def captions(workers):
        loader = build_train_loader(paths, transforms=TRANSFORMS, batch_size=4, modalities=["image", "text"],
                                    num_workers=workers, shuffle_buffer=5, text_keys={"txt": 1, "json:extra.long": 1})
        out = {}
        for epoch in range(2):
            loader.set_epoch(epoch)
            for b in loader:
                out.update({(epoch, k): _caption(row) for k, row in zip(b["__key__"], b["text"])})
        return out

    a, b = captions(0), captions(2)
    assert a == b and len(a) == 48
    assert {c[0] for c in a.values()} == {"c", "L"}                              # both sources drawn


def test_captions_cut_at_the_context_length_are_counted_in_the_run_summary(tmp_path, capsys):
    from align.model import AlignModel  # noqa: F401  (the transform wrapper below is what models hand out)
    from align.towers.base import CachedTokenize

    def count(texts):
        return [len(t.split()) + 2 for t in texts]                 # "tokens": words + start/end
    tf = CachedTokenize(lambda texts: torch.zeros(len(texts), L_TEXT, dtype=torch.long) + 1, count_tokens=count,
                        context_length=6)
    dec = SampleDecoder(["image", "text"], dict(TRANSFORMS, text=tf), train=True)
    dec(_raw("a", "one two three four"), 0)                          # 6 tokens: fits
    dec(_raw("b", "one two three four five"), 0)                    # 7: cut
    assert dec.take_noted() == {CAPTION_TRUNCATED: 1} and dec.take_noted() == {}

    from tests.switch_helpers import recipe, train_dict
    long_caption = " ".join(["word"] * 30)                           # > the tiny tower's 12 tokens
    samples = [image_text(f"k{i}", seed=i, caption=long_caption if i % 4 == 0 else f"short {i}") for i in range(16)]
    pattern = write_shard(tmp_path / "s.tar", samples)
    r = recipe(tmp_path, "run", data={"train": pattern, "num_workers": 2, "shuffle_buffer": 0},
               train={"batch_size": 4, "max_steps": 4})
    summary = train_dict(r)
    assert summary["noted"] == {CAPTION_TRUNCATED: 4}               # one epoch of 16: 4 long captions
    assert f"4 {CAPTION_TRUNCATED}" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [{}, {"txt": -1}, {"txt": 0}, {"json:": 1}, {"txt": True}])
def test_bad_text_keys_are_one_line(bad, tiny_recipe):
    from align.config import parse_recipe
    from align.errors import ConfigError
    tiny_recipe["data"]["text_keys"] = bad
    with pytest.raises(ConfigError, match="data.text_keys"):
        parse_recipe(tiny_recipe)


def test_the_recipe_key_reaches_the_training_stream(tmp_path):
    """data.text_keys through align.train.feed.build_loader: the stream draws from the json key."""
    from align.config import parse_recipe
    from align.model import build_model
    from align.train.feed import build_loader
    from tests.switch_helpers import recipe
    s = image_text("k0")
    s["txt"] = b"plain"
    s["json"] = json.dumps({"extra": {"long": "from json"}}).encode()
    pattern = write_shard(tmp_path / "s.tar", [s] * 1)
    r = parse_recipe(recipe(tmp_path, "run", data={"train": pattern, "num_workers": 0, "shuffle_buffer": 0,
                                                   "text_keys": {"json:extra.long": 1.0}}, train={"batch_size": 1}))
    model = build_model(r.model)
    loader = build_loader(r, model, 0, 1, None)
    batch = next(iter(loader))
    assert torch.equal(batch["text"][0], model.transforms(train=True)["text"](["from json"])[0])
