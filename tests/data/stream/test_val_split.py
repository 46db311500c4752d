"""align/data/stream/val_split.py: unseen groups carved out of the training shards (data.val_split)."""
import json
import os
import re

import pytest

from align.data.stream.val_split import ValSplit, name_field, write_val_set
from align.errors import ConfigError, DataError
from tests.wds_helpers import image_text, write_shard

SPEAKERS = [f"spk{i}" for i in range(10)]


def _sample(key, speaker, seed):
    s = image_text(key, seed=seed)
    s["json"] = json.dumps({"key": key, "source": {"image": f"{speaker}_take{seed}.jpg"},
                            "extra": {"speaker": speaker}})
    return s


def _shards(root, per_speaker=4):
    """2 shards, 10 speakers x per_speaker samples, speakers mixed across the shards; -> (paths, {key: speaker})."""
    root.mkdir(parents=True, exist_ok=True)
    samples = [_sample(f"k{sp}{j}", f"spk{sp}", sp * 100 + j) for j in range(per_speaker) for sp in range(10)]
    half = len(samples) // 2
    paths = [write_shard(root / "a.tar", samples[:half]), write_shard(root / "b.tar", samples[half:])]
    return paths, {s["__key__"]: json.loads(s["json"])["extra"]["speaker"] for s in samples}


def test_config_mistakes_are_one_line_each():
    for cfg, msg in [({"groups": ["a"]}, "needs groups_from"), ({"groups_from": "s", "groups": []}, "non-empty"),
                     ({"groups_from": "s", "groups": ["a"], "frac": 0.1}, "not both"), ({"frac": 1.5}, r"\(0, 1\)"),
                     ({"frac": True}, r"\(0, 1\)"), ({"group_from": "s"}, "unknown key"), ({"groups_from": ""}, "field")]:
        with pytest.raises(ConfigError, match=msg):
            ValSplit.from_config(cfg, 0)
    assert ValSplit.from_config({"groups_from": "speaker"}, 0).frac == 0.1          # default: 10% of groups


def test_the_group_comes_from_the_json_extra_a_file_name_field_or_the_key():
    raw = _sample("spk3_x_7", "spk3", 7)
    assert ValSplit("speaker").group_of(raw) == "spk3"                            # extra.speaker
    assert ValSplit("image:0").group_of(raw) == "spk3"                            # field 0 of source.image's name
    assert ValSplit("image:-1").group_of(raw) == "take7"                          # extension dropped
    assert ValSplit("key:0").group_of(raw) == "spk3" and ValSplit("key:2").group_of(raw) == "7"
    assert ValSplit("nosuch").group_of(raw) is None
    assert ValSplit("speaker").group_of({"__key__": "k", "json": b"{broken"}) is None
    assert name_field("a/b_c-d.wav", 1) == "b" and name_field("x", 5) is None


def test_a_fraction_of_groups_holds_out_whole_groups_the_same_in_every_process(tmp_path):
    paths, speaker = _shards(tmp_path / "s")
    split = ValSplit.from_config({"groups_from": "speaker", "frac": 0.3}, seed=1)
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import shard_samples
    raws = [r for p in paths for r in shard_samples(p, FaultCounter())]
    sides = {}
    for r in raws:
        sides.setdefault(speaker[r["__key__"]], set()).add(split.side(r))
    assert all(len(v) == 1 for v in sides.values())                   # a speaker is wholly on one side
    held = {g for g, v in sides.items() if v == {True}}
    assert 0 < len(held) < 10
    again = ValSplit.from_config({"groups_from": "speaker", "frac": 0.3}, seed=1)
    assert {g for g in SPEAKERS if again.side(_sample("z", g, 0))} == held            # seeded, stable
    other = ValSplit.from_config({"groups_from": "speaker", "frac": 0.3}, seed=2)
    assert {g for g in SPEAKERS if other.side(_sample("z", g, 0))} != held or len(held) in (0, 10)
    kept = [r["__key__"] for r in split.train_filter(raws)]
    assert kept and all(speaker[k] not in held for k in kept) and len(kept) + 4 * len(held) == len(raws)


def test_write_val_set_copies_exactly_the_held_out_groups_and_reuses_itself(tmp_path):
    paths, speaker = _shards(tmp_path / "s")
    split = ValSplit.from_config({"groups_from": "speaker", "groups": ["spk2", "spk7"]}, 0)
    out = tmp_path / "val"
    counts = write_val_set(split, paths, str(out), classnames=["zero", "one"])
    assert counts["held_out"] == 8 and counts["trained"] == 32 and counts["groups"] == {"held_out": 2, "trained": 8}
    from align.bench.datasets import open_wds
    ds = open_wds(str(out), split="test")
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import shard_samples
    keys = {r["__key__"] for p in sorted(out.glob("test/*.tar")) for r in shard_samples(str(p), FaultCounter())}
    assert keys == {k for k, s in speaker.items() if s in ("spk2", "spk7")}
    assert ds.classnames == ["zero", "one"] and (out / "test" / "nshards.txt").read_text().strip() == "1"
    mtime = os.path.getmtime(out / "test" / "0.tar")
    assert write_val_set(split, paths, str(out)) == counts and os.path.getmtime(out / "test" / "0.tar") == mtime


def test_groups_the_shards_lack_or_an_empty_side_are_one_line(tmp_path):
    paths, _ = _shards(tmp_path / "s")
    with pytest.raises(DataError, match=r"groups nope not found in 'speaker' \(10 groups: spk0"):
        write_val_set(ValSplit("speaker", frozenset({"spk1", "nope"})), paths, str(tmp_path / "v1"))
    with pytest.raises(DataError, match="holds out every sample"):
        write_val_set(ValSplit("speaker", frozenset(SPEAKERS)), paths, str(tmp_path / "v2"))
    with pytest.raises(DataError, match="holds out no sample; 40 samples have no 'writer'"):
        write_val_set(ValSplit("writer", frac=0.5), paths, str(tmp_path / "v3"))


def test_training_never_sees_a_held_out_group_and_evaluates_on_it(tmp_path, capsys):
    """A real run with data.val_split: the recorded training keys hold no sample of the held-out speakers,
    RUN/val_split holds exactly those, the periodic eval (retrieval: no class names) ran on them, the summary
    line and loss.png show the held-out metric, and `align export RUN` takes the best checkpoint by it."""
    from tests.switch_helpers import recipe, train_dict
    paths, speaker = _shards(tmp_path / "s")
    keys_log = str(tmp_path / "keys")
    os.environ["ALIGN_TEST_RECORD_KEYS"] = keys_log
    try:
        r = recipe(tmp_path, "run", data={"train": paths, "num_workers": 0, "shuffle_buffer": 4,
                                          "val_split": {"groups_from": "speaker", "groups": ["spk2", "spk7"]}},
                   train={"batch_size": 4, "max_steps": 12, "log_every": 4, "checkpoint_every": 6},
                   eval={"every": 3, "batch_size": 8, "best_metric": "text-image/retrieval/image_retrieval_recall@5"})
        summary = train_dict(r)
    finally:
        del os.environ["ALIGN_TEST_RECORD_KEYS"]
    seen = {k for line in open(keys_log + ".rank0.jsonl") for k in json.loads(line)["keys"]}
    assert len(seen) == 32 and not {speaker[k] for k in seen} & {"spk2", "spk7"}
    assert (tmp_path / "run" / "val_split" / "test" / "0.tar").is_file()
    rows = [json.loads(x) for x in open(tmp_path / "run" / "eval.jsonl")]
    assert rows and any("text-image/retrieval" in k for k in rows[-1]), rows[-1]
    assert any(k.startswith("text-image/retrieval") for k in summary["metrics"])
    end = capsys.readouterr().out
    assert "val text-image/retrieval/image_retrieval_recall@5" in end
    # README quotes this end line ("the end line names it (`held-out audio/...`)" after the code said val)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md"), encoding="utf-8").read()
    quoted = re.search(r"the\s+end\s+line\s+names\s+it\s+\(`([^`]+)`", readme).group(1)
    assert f", {quoted.split()[0]} text-image/retrieval/image_retrieval_recall@5 " in end, quoted
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    from align.export import export
    from align.train import rundir
    best = tmp_path / "run" / "checkpoints" / "best"
    state = rundir.read_state(str(best))
    # evaluated at 3, 6, 9 and at the end (12): the final model may be the best (align.train.loop's keep_if_best)
    assert state["best_metric"] == "text-image/retrieval/image_retrieval_recall@5" and state["step"] in (3, 6, 9, 12)
    export(str(tmp_path / "run"), str(tmp_path / "exp"), fmt="open_clip", progress=False)
    said = capsys.readouterr().out
    assert f"exporting its best checkpoint by text-image/retrieval/image_retrieval_recall@5 (step {state['step']}" in said
    import align
    from tests.train.test_rundir import _same
    _same(align.load(str(tmp_path / "exp")), align.load(str(best)))


def test_a_held_out_sample_over_a_limit_is_skipped_and_counted_not_a_crash(tmp_path):
    """The tar reader hands a member over its limit as a marker, never its bytes: copying that into the val
    set crashed the run before training (`txt doesn't map to a bytes`). It is skipped and counted instead."""
    paths, speaker = _shards(tmp_path / "s")
    big = _sample("kbig", "spk2", 999)
    big["txt"] = "x" * 70_000                                          # over max_text_bytes (65,536)
    paths.append(write_shard(tmp_path / "s" / "c.tar", [big]))
    split = ValSplit.from_config({"groups_from": "speaker", "groups": ["spk2"]}, 0)
    counts = write_val_set(split, paths, str(tmp_path / "val"))
    assert counts["held_out"] == 5 and counts["skipped"] == {"caption too long": 1}
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import shard_samples
    keys = {r["__key__"] for p in sorted((tmp_path / "val").glob("test/*.tar"))
            for r in shard_samples(str(p), FaultCounter())}
    assert keys == {k for k, s in speaker.items() if s == "spk2"}      # the four good ones, copied


def test_a_draw_over_few_groups_that_takes_none_says_how_to_name_them(tmp_path):
    # each group is held out with probability frac: 3 speakers at frac 0.05 usually give none; the line says
    # how many groups there are and how to name the held-out ones
    paths = [write_shard(tmp_path / "s.tar", [_sample(f"k{i}", f"spk{i % 3}", i) for i in range(6)])]
    seed = next(s for s in range(100) if not any(ValSplit("speaker", frac=0.05, seed=s).side(
        {"json": json.dumps({"speaker": f"spk{g}"})}) for g in range(3)))
    with pytest.raises(DataError, match=re.escape(
            "holds out no sample; the seeded draw over its 3 groups (spk0, spk1, spk2) took 0: name the held-out "
            "ones, e.g. data.val_split={groups_from: speaker, groups: [spk0]}")):
        write_val_set(ValSplit("speaker", frac=0.05, seed=seed), paths, str(tmp_path / "v"))


def test_group_ids_that_differ_only_by_case_unicode_form_or_a_numbers_spelling_are_listed(tmp_path):
    """'Alice'/'ALICE', NFC/NFD 'José' and 7/'07'/7.0 are separate groups (ids compared as written, stripped):
    with groups [alice] the other spellings trained, silently. write_val_set now lists each such set (for the
    run's warning) and names the held-out groups in val_split.json (a frac draw recorded only how many)."""
    import unicodedata
    names = ["Alice", "alice ", "ALICE", unicodedata.normalize("NFC", "José"), unicodedata.normalize("NFD", "José"),
             7, "07", 7.0, "bob", "", None]
    samples = []
    for i, n in enumerate(names):
        for j in range(2):
            s = image_text(f"k{i}{j}", seed=i * 10 + j)
            s["json"] = json.dumps({"key": f"k{i}{j}", "extra": {"speaker": n}})
            samples.append(s)
    paths = [write_shard(tmp_path / "a.tar", samples)]
    nfc = unicodedata.normalize("NFC", "José")
    split = ValSplit.from_config({"groups_from": "speaker", "groups": ["alice", nfc, "07"]}, 0)
    counts = write_val_set(split, paths, str(tmp_path / "v"))
    assert counts["no_group"] == 4 and counts["held_out"] == 6                 # '' and None: neither side
    assert counts["held_out_groups"] == ["07", nfc, "alice"]
    assert counts["lookalike_groups"] == sorted([["07 (held out)", "7", "7.0"],
                                                 ["ALICE", "Alice", "alice (held out)"],
                                                 [unicodedata.normalize("NFD", "José"), f"{nfc} (held out)"]])
    saved = json.loads((tmp_path / "v" / "val_split.json").read_text())["counts"]
    assert saved["held_out_groups"] == counts["held_out_groups"]
    drawn = write_val_set(ValSplit("speaker", frac=0.5, seed=3), paths, str(tmp_path / "w"))
    assert drawn["held_out_groups"] and len(drawn["held_out_groups"]) == drawn["groups"]["held_out"]


def _val_keys(out):
    from align.data.stream.faults import FaultCounter
    from align.data.stream.sources import shard_samples
    return [r["__key__"] for p in sorted(out.glob("test/*.tar")) for r in shard_samples(str(p), FaultCounter())]


def test_a_held_out_sample_whose_image_bytes_a_trained_sample_has_is_left_out_and_counted(tmp_path):
    """One image filed under two speakers (a held-out one and a trained one) was copied into the val set: the
    held-out figure included an item trained on. Such samples are left out (the trained copy read before or after
    it), counted, and one pair named; a member of the same size with other bytes is kept; a split whose every
    held-out sample is such a copy is one line."""
    from align.data.stream.val_split import COPY_OF_TRAINED
    paths, speaker = _shards(tmp_path / "s")                       # k50 (spk5) and k61 (spk6) are in a.tar
    first = _sample("kfirst", "spk2", 601)                         # k61's image, read before k61
    later = _sample("kcopy", "spk2", 500)                          # k50's image, read after k50
    odd = _sample("ksize", "spk7", 302)                            # k32's image less one bit: same size
    odd["jpg"] = odd["jpg"][:-1] + bytes([odd["jpg"][-1] ^ 1])
    paths = [write_shard(tmp_path / "s" / "0.tar", [first])] + paths + [write_shard(tmp_path / "s" / "c.tar",
                                                                                   [later, odd])]
    split = ValSplit.from_config({"groups_from": "speaker", "groups": ["spk2", "spk7"]}, 0)
    out = tmp_path / "val"
    counts = write_val_set(split, paths, str(out), per_shard=3)
    assert counts["held_out"] == 11 and counts["trained"] == 32
    assert counts["skipped"] == {COPY_OF_TRAINED: 2}
    assert counts["copies_of_trained"] == {"count": 2, "example": [f"{paths[-1]}:kcopy", f"{paths[1]}:k50"]}
    keys = _val_keys(out)
    assert sorted(keys) == sorted([k for k, s in speaker.items() if s in ("spk2", "spk7")] + ["ksize"])
    assert (out / "test" / "nshards.txt").read_text().strip() == "3" and len(list(out.glob("test/*.tar"))) == 3
    assert not (out / "test.kept").exists()
    assert write_val_set(split, paths, str(out), per_shard=3) == counts                     # reused as it is
    twins = [_sample(f"d{i}", "dup", i) for i in (0, 100)]         # k00's and k10's images, under another speaker
    paths.append(write_shard(tmp_path / "s" / "d.tar", twins))
    with pytest.raises(DataError, match=r"each of its 2 held-out samples has an image or audio member "
                                        r"byte-identical to a trained sample's \(e\.g\. .*d\.tar:d0 and .*a\.tar:k00"):
        write_val_set(ValSplit("speaker", frozenset({"dup"})), paths, str(tmp_path / "v2"))
