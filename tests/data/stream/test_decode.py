"""align.data.stream.decode: data.limits reach the tar reader and the decoders; captions read from txt members."""
from types import SimpleNamespace

from align.config import parse_recipe
from align.train.loop import build_loader
from tests.conftest import TINY_OPEN_CLIP
from tests.wds_helpers import TRANSFORMS, image_text, wav_claiming, write_shard


def _loader(tmp_path, limits: dict, **kw):
    """The training stream exactly as `align train` builds it (align.train.loop.build_loader) for a recipe
    with these data.limits, over one shard of 4 ordinary samples and 3 that only some limits refuse."""
    samples = [image_text(f"g{i}", i) for i in range(4)] + [
        dict(image_text("longcap", 9), txt="a caption " * 30),                           # 300 bytes
        {"__key__": "slowrate", "wav": wav_claiming(4000, frames=400), "txt": "a low rate"},
        dict(image_text("bigjson", 8), json="[" + "0," * 400 + "0]"),                   # 803 bytes
    ]
    write_shard(tmp_path / "s-0.tar", samples)
    r = parse_recipe({"model": {"open_clip": dict(TINY_OPEN_CLIP), "towers": {"audio": {"type": "audio"}}},
                      "loss": {"pairs": [["image", "text"], ["audio", "text"]]}, "output_dir": str(tmp_path / "run"),
                      "data": {"train": str(tmp_path / "s-0.tar"), "num_workers": 0, "shuffle_buffer": 0,
                               "limits": limits},
                      "train": {"batch_size": 1, "max_steps": 1}})
    model = SimpleNamespace(transforms=lambda train: TRANSFORMS, modalities=["image", "text", "audio"])
    return build_loader(r, model, 0, 1, None, **kw)


def test_recipe_limits_reach_the_reader_and_the_decoders(tmp_path):
    loader = _loader(tmp_path, {})
    assert sorted(k for b in loader for k in b["__key__"]) == ["bigjson", "g0", "g1", "g2", "g3", "longcap", "slowrate"]
    loader = _loader(tmp_path, {"max_text_bytes": 200, "min_sample_rate": 8000, "max_json_bytes": 500})
    assert sorted(k for b in loader for k in b["__key__"]) == ["g0", "g1", "g2", "g3"]
    assert dict(loader.skipped) == {"caption too long": 1, "audio sample rate out of range": 1, "json too large": 1}


def test_align_train_on_a_folder_with_issue_24s_shard_beside_good_ones_exits_0(tmp_path):
    """Issue 24's table through `align train` (image, text and audio towers, audio resampled to 16 kHz):
    a 50 GB size field after a good sample, a 2,147,483,647 Hz and a 1 Hz WAV, a 20000x20000 PNG; the run
    finishes every step with exit 0 and counts each under its reason (was: MemoryError, or 43 GB asked for)."""
    import json

    import yaml

    from tests.conftest import fork_main
    from tests.wds_helpers import audio_text, png_claiming, set_member_size

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        write_shard(data / f"good-{i}.tar", [image_text(f"i{i}{j}", j) for j in range(4)]
                    + [audio_text(f"a{i}{j}", j) for j in range(4)])
    bad = write_shard(data / "bad.tar", [
        image_text("before", 1),
        {"__key__": "fast", "wav": wav_claiming(2_147_483_647), "txt": "a fast one"},
        {"__key__": "slow", "wav": wav_claiming(1, frames=1600), "txt": "a slow one"},
        {"__key__": "bomb", "png": png_claiming(20000, 20000), "txt": "a bomb"},
        image_text("flipped", 2), image_text("after", 3)])
    set_member_size(bad, "flipped.jpg", 50 * 2 ** 30)
    recipe = {"output_dir": str(tmp_path / "run"), "model": {"embed_dim": 16, "open_clip": dict(TINY_OPEN_CLIP),
              "towers": {"audio": {"type": "audio_cnn", "clip_seconds": 0.5, "n_mels": 16, "channels": [4, 8]}}},
              "loss": {"pairs": [["image", "text"], ["audio", "text"]]},
              "data": {"train": str(data), "num_workers": 0, "shuffle_buffer": 0},
              # 26 usable samples: an epoch is 6 batches of 4; step 7 starts the next, so the first is all read
              "train": {"batch_size": 4, "max_steps": 7, "log_every": 1, "num_threads": 1}, "eval": {"every": 0}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    p = fork_main(["train", str(tmp_path / "r.yaml"), "--no-progress"], timeout=600)   # its own process: a
    assert p.returncode == 0, p.stderr[-3000:]                                         # MemoryError ends only it
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["steps"] == 7 and "Traceback" not in p.stderr
    skipped = summary["skipped"]   # the first epoch's counts, and the second's if step 7 read the bad shard
    assert set(skipped) == {"audio sample rate out of range", "image too large", "corrupt tar"}
    assert skipped["audio sample rate out of range"] == 2 * skipped["image too large"] == 2 * skipped["corrupt tar"]


def test_a_key_with_undecodable_name_bytes_is_seeded_not_a_crash():
    """A tar name with bytes that are not UTF-8 becomes a key with surrogates (the reader decodes with
    surrogateescape); the per-sample seeds hash it instead of failing on str.encode() (found by the slow fuzz test)."""
    import hashlib
    import random

    from align.data.stream.augment import sample_seed
    from align.data.stream.decode import decode_raw, transform_seed
    key = b"k\x80".decode("utf-8", "surrogateescape")
    assert transform_seed(0, 1, "u", key) != transform_seed(0, 1, "u", "k")
    assert sample_seed(0, 1, "u", key) != sample_seed(0, 1, "u", "k")
    # plain keys keep their seeds: the same bytes as str.encode()
    want = int.from_bytes(hashlib.blake2b(b"align:transforms:0:1:u:k", digest_size=8).digest(), "little") >> 2
    assert transform_seed(0, 1, "u", "k") == want
    raw = {"__key__": key, "txt": b"one\ntwo\nthree", "jpg": b"x"}
    out = decode_raw(raw, ["text"], 1, caption_seed=f"align:caption:0:0:u:{key}")
    assert out["text"][0] in ("one", "two", "three")
    assert random.Random(b"abc").random() == random.Random("abc").random()


def test_an_audio_decoder_imports_the_resampler_before_workers_fork():
    """Workers are forked per epoch: a resampler imported lazily in each cost 21 % of a demo worker's CPU.
    Building an audio decoder imports it in the parent (a fresh interpreter: pytest's may hold it already)."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from align.data.stream.decode import SampleDecoder\n"
            "SampleDecoder(['image', 'text'], {'image': str, 'text': str}, train=True)\n"
            "print('scipy.signal' in sys.modules)\n"
            "SampleDecoder(['audio', 'text'], {'audio': str, 'text': str}, train=True)\n"
            "print('scipy.signal' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_pinned_batches_for_a_cuda_run_reach_the_dataloader_and_change_no_batch(tmp_path, monkeypatch):
    """align train on CUDA asks build_loader for page-locked batches (train.loop: pin_memory when the device is
    cuda); the flag must reach torch's DataLoader, and the batches stay the same (here, without an accelerator,
    torch leaves them unpinned)."""
    import warnings

    import torch
    from align.data.stream import loader as stream_loader
    seen = []

    class SpyLoader(torch.utils.data.DataLoader):
        def __init__(self, *a, **k):
            seen.append(k.get("pin_memory"))
            super().__init__(*a, **k)
    monkeypatch.setattr(stream_loader, "DataLoader", SpyLoader)
    plain = [b["__key__"] for b in _loader(tmp_path, {})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # torch: "no accelerator is found" (this machine)
        pinned = [b["__key__"] for b in _loader(tmp_path, {}, pin_memory=True)]
    assert seen == [False, True] and pinned == plain and len(plain) == 7


def test_a_txt_member_with_a_byte_order_mark_reads_as_without():
    """A txt saved by Notepad or Excel starts with a BOM: it stayed in the first caption, and a JSON list of
    captions behind it was trained on as its literal text ('\\ufeff["кіт", "猫"]')."""
    from align.data.stream.decode import captions, decode_raw
    bom = "\ufeff".encode("utf-8")
    assert captions(bom + '["кіт на килимку", "猫"]'.encode("utf-8")) == ["кіт на килимку", "猫"]
    assert captions(bom + "বিড়াল\nقطة".encode("utf-8")) == ["বিড়াল", "قطة"]
    raw = {"__key__": "k", "txt": bom + '["a cat"]'.encode("utf-8"), "neg.txt": bom + b"a dog\na car"}
    out = decode_raw(raw, ["text"], 1, negatives=True)
    assert out["text"] == ["a cat"] and out["neg"] == ["a dog", "a car"]


def test_a_json_list_of_captions_with_a_gap_keeps_its_captions():
    """json.dumps of a row's captions padded with None / NaN: the whole list used to be the caption, its
    literal text (Cyrillic as '\\u043a\\u0456\\u0442' escapes); its strings are the captions, as for a json: key."""
    import json

    from align.data.stream.decode import captions, decode_raw
    assert captions(json.dumps(["кіт", None, float("nan"), " 猫 ", ""]).encode()) == ["кіт", "猫"]
    assert captions(b"[1, 2]") == ["[1, 2]"]                     # no string in it: a caption of its own
    raw = {"__key__": "k", "txt": json.dumps([None, "বিড়াল"]).encode()}
    assert decode_raw(raw, ["text"], 1, caption_seed="s")["text"] == ["বিড়াল"]


def test_a_line_separator_inside_a_caption_is_no_line_end():
    """A txt member is one caption per line: \\n, \\r\\n or \\r end one. str.splitlines also cut at U+2028, U+2029,
    U+0085, \\x0b, \\x0c and \\x1c-\\x1e, so 'a photo<U+2028>of a cat' was two captions, one drawn per visit."""
    from align.data.stream.decode import captions, decode_raw
    whole = "a photo\u2028of a\u2029cat\x85on\x0bthe\x0cmat\x1cand\x1da\x1edog"
    assert captions(f"{whole}\nsecond\r\nthird\rfourth\n".encode()) == [whole, "second", "third", "fourth"]
    raw = {"__key__": "k", "txt": whole.encode()}
    assert {decode_raw(raw, ["text"], 1, caption_seed=f"s{i}")["text"][0] for i in range(8)} == {whole}


def test_a_caption_with_a_lone_surrogate_skips_its_sample_and_names_it(tmp_path, caplog):
    """JSON's "\\ud800" escape gives a caption no tokenizer reads (a Hugging Face tokenizer raised a TypeError,
    open_clip's read U+FFFD): the sample is skipped and counted as undecodable text, one line naming its key and
    the position, in the txt member, in a data.text_keys json: key (whichever key a visit draws) and in neg.txt."""
    import json
    import logging

    import pytest

    from align.data.stream.decode import decode_raw
    from align.data.stream.faults import UNDECODABLE_TEXT, SkipSample
    bad = json.dumps(["fine", "a photo \ud800 of a cat"]).encode()           # ASCII: the escape, as JSON writes it
    with pytest.raises(SkipSample) as e:
        decode_raw({"__key__": "k", "txt": bad}, ["text"], 1)
    assert e.value.reason == UNDECODABLE_TEXT
    assert e.value.detail == "txt: lone surrogate at position 8 (caption 2 of 2)"
    meta = json.dumps({"short": "fine", "long": ["x", "\udc80 y"]}).encode()
    for seed in ("a", "b", "c", "d"):                                          # every draw of the key skips it
        with pytest.raises(SkipSample, match="lone surrogate at position 0"):
            decode_raw({"__key__": "k", "json": meta}, ["text"], 1, caption_seed=seed,
                       text_keys=[("json:short", 1.0), ("json:long", 1.0)])
    with pytest.raises(SkipSample, match=r"neg.txt: lone surrogate at position 1 \(caption 1 of 1\)"):
        decode_raw({"__key__": "k", "txt": b"a cat", "neg.txt": b'["a\\udfff dog"]'}, ["text"], 1, negatives=True)
    samples = [image_text(f"g{i}", i) for i in range(3)] + [dict(image_text("surr", 5), txt=bad.decode())]
    write_shard(tmp_path / "s-0.tar", samples)
    r = parse_recipe({"model": {"open_clip": dict(TINY_OPEN_CLIP)}, "output_dir": str(tmp_path / "run"),
                      "data": {"train": str(tmp_path / "s-0.tar"), "num_workers": 0, "shuffle_buffer": 0},
                      "train": {"batch_size": 1, "max_steps": 1}})
    model = SimpleNamespace(transforms=lambda train: TRANSFORMS, modalities=["image", "text"])
    loader = build_loader(r, model, 0, 1, None)
    with caplog.at_level(logging.WARNING, logger="align.data"):
        keys = sorted(k for b in loader for k in b["__key__"])
    assert keys == ["g0", "g1", "g2"] and dict(loader.skipped) == {UNDECODABLE_TEXT: 1}
    said = [r.getMessage() for r in caplog.records if "lone surrogate" in r.getMessage()]
    assert len(said) == 1 and "surr" in said[0] and "lone surrogate at position 8" in said[0]


def test_a_sample_in_no_loss_pair_is_skipped_before_its_media_are_decoded():
    """decode_raw(pairs=...): a sample without both modalities of any pair raises SkipSample(`no pair of
    loss.pairs`) naming what it has, before decoding (a broken image is not what it is skipped for); a caption
    from data.text_keys counts as its text."""
    import pytest

    from align.data.stream.decode import decode_raw
    from align.data.stream.faults import NO_LOSS_PAIR, SkipSample
    from tests.wds_helpers import audio_text
    pairs = [("image", "text"), ("audio", "text")]
    mods = ["image", "text", "audio"]
    with pytest.raises(SkipSample) as e:
        decode_raw({"__key__": "k", "jpg": b"not an image", "flac": b"nor audio"}, mods, pairs=pairs)
    assert e.value.reason == NO_LOSS_PAIR and e.value.detail == "has audio+image; loss.pairs: image-text, audio-text"
    a = dict(audio_text("k"), txt=b"a sound k")
    assert decode_raw(a, mods, pairs=pairs)["text"] == ["a sound k"]
    keyed = {"__key__": "k", "flac": a["flac"], "json": b'{"c": "a keyed caption"}'}
    assert decode_raw(keyed, mods, pairs=pairs, text_keys=[("json:c", 1.0)])["text"] == ["a keyed caption"]
    assert set(decode_raw(keyed, mods, pairs=[("audio", "text")], text_keys=[("json:c", 1.0)])) >= {"audio"}
    with pytest.raises(SkipSample, match="no pair of loss.pairs"):
        decode_raw(keyed, mods, pairs=[("image", "text")], text_keys=[("json:c", 1.0)])
