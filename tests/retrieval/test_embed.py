"""`align embed`: per-part .npy + Parquet for every modality, resumable, split across processes."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from align.cli import main
from align.retrieval.embed import embed_corpus, load_embeddings
from tests.retrieval.conftest import tri_shards

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(out):
    d = os.path.join(out, "parts")
    return sorted(f for f in os.listdir(d) if not f.endswith(".done.json"))


def _same_output(a, b):
    assert _files(a) == _files(b)
    for f in _files(a):
        pa, pb = os.path.join(a, "parts", f), os.path.join(b, "parts", f)
        if f.endswith(".npy"):
            np.testing.assert_array_equal(np.load(pa), np.load(pb))
        else:
            pd.testing.assert_frame_equal(pd.read_parquet(pa), pd.read_parquet(pb))


def test_embed_cli_writes_every_modality(tmp_path, capsys, tri_run):
    run, model = tri_run
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=4, broken=(1, 2))
    out = tmp_path / "emb"
    assert main(["embed", run, "--data", str(tmp_path / "shards"), "--out", str(out), "--batch-size", "3",
                 "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("embed: 2 part(s) (0 already done), 8 samples, vectors: image 7, audio 8, text 8, "
                           "1 skipped"), line
    assert "samples/s" in line
    img, rows = load_embeddings(str(out), "image")
    assert img.shape == (7, 16) and np.load(out / "parts" / "part-00000.image.npy").dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=2e-3)
    assert list(rows["key"]) == ["s00_000", "s00_001", "s00_002", "s00_003", "s01_000", "s01_001", "s01_003"]
    assert set(rows["modality"]) == {"image"} and list(rows["row"]) == [0, 1, 2, 3, 0, 1, 2]
    txt, trows = load_embeddings(str(out), "text")
    assert trows["caption"].iloc[5] == "a bird dog number 101" and (trows["media_offset"] == -1).all()
    # the stored byte range is the image member itself
    r = rows.iloc[4]
    with open(r["shard"], "rb") as f:
        f.seek(r["media_offset"])
        assert f.read(r["media_size"])[:2] == b"\xff\xd8"
    # vectors equal what the model gives for the same sample
    from align.bench.datasets import decode_image
    import torch
    with open(r["shard"], "rb") as f:
        f.seek(r["media_offset"])
        x = model.image_transform(decode_image(f.read(r["media_size"])))
    with torch.no_grad():
        z = model.encode_image(x[None]).numpy()[0]
    np.testing.assert_allclose(img[4], z, atol=2e-3)


class _Killed(Exception):
    pass


class _DiesAfter:
    """Wraps a model; encode_image raises after `n` calls (a kill in the middle of a run)."""

    def __init__(self, model, n):
        self.m, self.n = model, n

    def __getattr__(self, name):
        return getattr(self.m, name)

    def encode_image(self, x):
        self.n -= 1
        if self.n < 0:
            raise _Killed()
        return self.m.encode_image(x)


def test_resume_skips_finished_parts_and_matches_a_clean_run(tmp_path, tri_run):
    _, model = tri_run
    shards = tri_shards(tmp_path / "shards", n_shards=4, per_shard=3)
    data = str(tmp_path / "shards")
    with pytest.raises(_Killed):
        embed_corpus(_DiesAfter(model, 2), data, str(tmp_path / "a"), progress=False, batch_size=8)
    done = sorted(f for f in os.listdir(tmp_path / "a" / "parts") if f.endswith(".done.json"))
    assert done == ["part-00000.done.json", "part-00001.done.json"]
    # a half-written part (vectors, no marker) is redone, not trusted
    np.save(tmp_path / "a" / "parts" / "part-00002.image.npy", np.zeros((1, 16), np.float16))
    s = embed_corpus(model, data, str(tmp_path / "a"), progress=False, batch_size=8)
    assert (s.parts, s.done_before, s.items) == (4, 2, 6)
    embed_corpus(model, data, str(tmp_path / "b"), progress=False, batch_size=8)
    _same_output(tmp_path / "a", tmp_path / "b")
    # another model into the same folder is refused, not mixed in
    from align.errors import ConfigError
    with pytest.raises(ConfigError, match="embeddings of another run"):
        embed_corpus(model, shards[0], str(tmp_path / "a"), progress=False)



def test_bf16_vectors_are_recorded_and_never_mixed_with_fp32(tmp_path, tri_run):
    """--precision bf16 autocasts the encoders (other numbers than fp32, close to them); the manifest records the
    precision, and resuming an fp32 output in bf16 is refused instead of mixing the two."""
    from align.errors import ConfigError
    _, model = tri_run
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=4)
    data = str(tmp_path / "shards")
    embed_corpus(model, data, str(tmp_path / "fp32"), dtype="float32", progress=False, batch_size=8)
    embed_corpus(model, data, str(tmp_path / "bf16"), dtype="float32", progress=False, batch_size=8,
                 precision="bf16")
    man = json.load(open(tmp_path / "bf16" / "manifest.json"))
    assert (man["precision"], json.load(open(tmp_path / "fp32" / "manifest.json"))["precision"]) == ("bf16", "fp32")
    for mod in ("image", "audio", "text"):
        a, b = load_embeddings(str(tmp_path / "fp32"), mod)[0], load_embeddings(str(tmp_path / "bf16"), mod)[0]
        assert a.shape == b.shape == (8, 16)
        assert np.abs(a - b).max() > 0                      # autocast really ran in bfloat16
        assert (1.0 - np.sum(a * b, axis=1)).max() < 0.02    # and gives nearly the same directions
    with pytest.raises(ConfigError, match="precision differs"):
        embed_corpus(model, data, str(tmp_path / "fp32"), dtype="float32", progress=False, precision="bf16")
    # a manifest written before precision was recorded means fp32: resuming it in fp32 is allowed
    path = tmp_path / "fp32" / "manifest.json"
    old = json.load(open(path))
    del old["precision"]
    path.write_text(json.dumps(old))
    s = embed_corpus(model, data, str(tmp_path / "fp32"), dtype="float32", progress=False)
    assert (s.done_before, s.items) == (2, 0)


def test_a_launch_draws_one_progress_bar_process_0s(tmp_path, tri_run, monkeypatch, capsys):
    """Under `accelerate launch --num_processes 2` both processes drew their bar on the one terminal line, in turn
    (each its own count); process 0's is the one shown, and says whose share it counts."""
    _, model = tri_run
    tri_shards(tmp_path / "shards", n_shards=3, per_shard=2)
    monkeypatch.setenv("ALIGN_PROGRESS", "plain")
    said = []
    for rank in (0, 1):
        embed_corpus(model, str(tmp_path / "shards"), str(tmp_path / "e"), rank=rank, world_size=2, batch_size=8)
        said.append([line for line in capsys.readouterr().err.splitlines() if line.startswith("embed")])
    assert len(said[0]) == 1 and said[0][0].startswith("embed, process 0/2: 2/2 part (100%)")
    assert said[1] == []


def _eval_set(root, n_shards=2, per_shard=2):
    """A CLIP_benchmark-layout eval set (ROOT/test/{i}.tar + nshards.txt) of image+text+audio samples."""
    from tests.retrieval.conftest import tri_sample
    from tests.wds_helpers import write_shard
    (root / "test").mkdir(parents=True)
    for i in range(n_shards):
        write_shard(root / "test" / f"{i}.tar", [tri_sample(f"e{i}_{j}", 10 * i + j) for j in range(per_shard)])
    (root / "test" / "nshards.txt").write_text(f"{n_shards}\n")


def test_an_eval_set_named_relatively_is_stored_with_absolute_paths(tmp_path, monkeypatch, tri_run):
    """`align serve` started in another folder reads the media from rows.shard: a relative path would 404.
    `./evalset` and `evalset` are then the same shards, so a resume with either spelling matches."""
    _, model = tri_run
    _eval_set(tmp_path / "evalset")
    monkeypatch.chdir(tmp_path)
    embed_corpus(model, "evalset", "emb", modalities=["image", "text"], progress=False, batch_size=8)
    shards = json.load(open(tmp_path / "emb" / "manifest.json"))["shards"]
    assert shards == [str(tmp_path / "evalset" / "test" / f"{i}.tar") for i in range(2)]
    _, rows = load_embeddings("emb", "image")
    assert all(os.path.isabs(s) for s in rows["shard"]) and set(rows["shard"]) == set(shards)
    s = embed_corpus(model, "./evalset/", "emb", modalities=["image", "text"], progress=False, batch_size=8)
    assert (s.done_before, s.items) == (2, 0)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff\xfe"])
def test_an_unreadable_manifest_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, text):
    from align.retrieval import cli as rcli

    def no_model(a):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(rcli, "_load", no_model)
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "manifest.json").write_bytes(text.encode("latin-1"))
    assert main(["embed", "m", "--data", str(tmp_path), "--out", str(tmp_path / "emb"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("align: error: ") and len(err.splitlines()) == 1, err
    assert "manifest.json: not an `align embed` manifest" in err, err


def _cli(args, env_extra):
    env = dict(os.environ, PYTHONPATH=ROOT, **env_extra)
    return subprocess.run([sys.executable, "-m", "align.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow   # three interpreters start torch: ~60 s on the shared 2-core machine
def test_two_processes_split_the_parts_and_equal_one(tmp_path, tri_run):
    """RANK / WORLD_SIZE as accelerate launch sets them: each process takes every other part."""
    run, _ = tri_run
    tri_shards(tmp_path / "shards", n_shards=3, per_shard=3)
    base = ["embed", run, "--data", str(tmp_path / "shards"), "--no-progress"]
    one = _cli(base + ["--out", str(tmp_path / "one")], {})
    assert one.returncode == 0, one.stderr
    procs = [subprocess.Popen([sys.executable, "-m", "align.cli", *base, "--out", str(tmp_path / "two")],
                              env=dict(os.environ, PYTHONPATH=ROOT, RANK=str(r), WORLD_SIZE="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "process 0/2: 2 part(s)" in outs[0][0] and "process 1/2: 1 part(s)" in outs[1][0]
    _same_output(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_under_accelerate_launch(tmp_path, tri_run):
    """Two processes under `accelerate launch` split the parts and write what one process writes.
    `--cpu --num_processes 2` is not two processes: accelerate's simple launcher starts ONE (multi-CPU needs
    mpirun), which also writes the same output; `--multi_gpu` on a machine without GPUs starts two over torchrun.
    Hence the check that the one end line (process 0's) counts both processes' parts."""
    run, _ = tri_run
    tri_shards(tmp_path / "shards", n_shards=3, per_shard=2)
    base = ["embed", run, "--data", str(tmp_path / "shards"), "--no-progress"]
    assert _cli(base + ["--out", str(tmp_path / "one")], {}).returncode == 0
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "align.cli", *base, "--out",
                        str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    ends = [ln for ln in p.stdout.splitlines() if ln.startswith("embed:")]
    assert len(ends) == 1 and ends[0].startswith("embed: 2 processes: 3 part(s) (0 already done), 6 samples"), p.stdout
    _same_output(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("cmd", ["embed", "filter"])
def test_a_batch_size_below_one_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, cmd):
    from align.retrieval import cli as rcli
    monkeypatch.setattr(rcli, "_load", lambda a: pytest.fail("the model was loaded before --batch-size was checked"))
    args = (["embed", "m", "--data", str(tmp_path), "--out", str(tmp_path / "e")] if cmd == "embed" else
            ["data", "filter", str(tmp_path), "--model", "m", "--out", str(tmp_path / "f"), "--min-score", "0"])
    assert main(args + ["--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["align: error: --batch-size must be >= 1, got 0"]


def test_negative_workers_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """`align embed --num-workers -1` was torch's DataLoader ValueError traceback, after the model loaded."""
    from align.retrieval import cli as rcli
    monkeypatch.setattr(rcli, "_load", lambda a: pytest.fail("the model was loaded before --num-workers was checked"))
    assert main(["embed", "m", "--data", str(tmp_path), "--out", str(tmp_path / "e"), "--num-workers", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["align: error: --num-workers must be >= 0 (0 decodes in this process), got -1"]


def test_an_out_that_cannot_be_created_is_one_line(tmp_path, capsys, tri_run):
    """--out under a file (or a read-only place): one line naming it, not os.makedirs' traceback."""
    run, _ = tri_run
    tri_shards(tmp_path / "shards", n_shards=1, per_shard=2)
    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "emb"
    assert main(["embed", run, "--data", str(tmp_path / "shards"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"align: error: {out / 'parts'}: cannot create the embeddings folder (a file is on the way)"]
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="assumes no CUDA: fp16 is refused on the CPU")
@pytest.mark.parametrize("cmd", ["embed", "filter"])
def test_fp16_without_cuda_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, cmd):
    """--precision fp16 "needs CUDA" (its help; `align bench` refuses it so): on the CPU one line, exit 2, no model
    loaded and nothing written -- not a CPU fp16 run recorded as fp16 in the manifest."""
    from align.retrieval import cli as rcli
    monkeypatch.setattr(rcli, "_load", lambda a: pytest.fail("the model was loaded before --precision was checked"))
    args = (["embed", "m", "--data", str(tmp_path), "--out", str(tmp_path / "e")] if cmd == "embed" else
            ["data", "filter", str(tmp_path), "--model", "m", "--out", str(tmp_path / "e"), "--min-score", "0"])
    assert main(args + ["--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["align: error: --precision fp16 needs a CUDA device (this run is on cpu); use bf16 or fp32"]
    assert not (tmp_path / "e").exists()


def test_split_selects_an_eval_sets_split_and_is_refused_with_shards(tmp_path, capsys, monkeypatch, tri_run):
    """--split picks ROOT/SPLIT of an eval set (default test); with shards it selects nothing, so it is one line
    and exit 2 rather than ignored."""
    from align.retrieval.embed import source_shards
    tri_shards(tmp_path / "shards", n_shards=1, per_shard=2)
    for split in ("test", "val"):
        (tmp_path / "ev" / split).mkdir(parents=True)
        (tmp_path / "ev" / split / "nshards.txt").write_text("1")
    assert source_shards(str(tmp_path / "ev")) == [str(tmp_path / "ev" / "test" / "0.tar")]
    assert source_shards(str(tmp_path / "ev"), "val") == [str(tmp_path / "ev" / "val" / "0.tar")]
    from align.retrieval import cli as rcli
    monkeypatch.setattr(rcli, "_load", lambda a: tri_run[1])
    for data, split in ((tmp_path / "shards", "train"), (tmp_path / "ev", "train")):
        capsys.readouterr()
        assert main(["embed", "m", "--data", str(data), "--out", str(tmp_path / "e"), "--split", split]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"align: error: --split {split}: {data} is not an eval set"), err
    assert main(["embed", "m", "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 0


def test_a_part_cut_short_after_it_finished_is_named_when_read_and_redone_by_a_rerun(tmp_path, tri_run):
    """A finished part whose .npy was cut short (a copy interrupted, a damaged disk) was taken as done: `align index`
    died in a numpy traceback (mmap length) and a rerun of `align embed` skipped it."""
    from align.errors import DataError
    _, model = tri_run
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=3)
    out, data = str(tmp_path / "a"), str(tmp_path / "shards")
    embed_corpus(model, data, out, progress=False, batch_size=8)
    good = np.load(os.path.join(out, "parts", "part-00001.image.npy"))
    cut = os.path.join(out, "parts", "part-00001.image.npy")
    size = os.path.getsize(cut)
    os.truncate(cut, size - 8)
    with pytest.raises(DataError, match=f"^{cut}: {size - 8} bytes, {size} bytes when its part finished .*re-run "
                                        f"`align embed`"):
        load_embeddings(out, "image")
    s = embed_corpus(model, data, out, progress=False, batch_size=8)
    assert (s.done_before, s.items) == (1, 3)                             # the damaged part alone was redone
    np.testing.assert_array_equal(load_embeddings(out, "image")[0][3:], good.astype(np.float32) /
                                  np.linalg.norm(good.astype(np.float32), axis=1, keepdims=True))


def test_a_part_whose_bytes_changed_keeping_its_size_is_named_when_read_and_redone_by_a_rerun(tmp_path, tri_run):
    """A finished part's .npy with a block zeroed in place (what a crash can leave; same size, same header): its
    vectors were read as they were, by `align index` and `align data filter`, and a rerun skipped the part. Now
    the checksum in done.json names the file, `align index` refuses it, and a rerun redoes that part alone."""
    from align.errors import DataError
    from align.retrieval.index_build import build_indexes
    _, model = tri_run
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=3)
    out, data = str(tmp_path / "a"), str(tmp_path / "shards")
    embed_corpus(model, data, out, progress=False, batch_size=8)
    good = load_embeddings(out, "image")[0]
    hit = os.path.join(out, "parts", "part-00001.image.npy")
    raw = bytearray(open(hit, "rb").read())
    raw[-64:] = bytes(64)
    open(hit, "wb").write(bytes(raw))
    for read in (lambda: load_embeddings(out, "image"), lambda: build_indexes(out, str(tmp_path / "ix"))):
        with pytest.raises(DataError, match=f"^{hit}: its bytes changed since its part finished .*re-run `align "
                                            f"embed`"):
            read()
    s = embed_corpus(model, data, out, progress=False, batch_size=8)
    assert (s.done_before, s.items) == (1, 3)                             # the damaged part alone was redone
    np.testing.assert_array_equal(load_embeddings(out, "image")[0], good)


def test_a_full_disk_while_writing_a_part_is_one_line_and_leaves_no_partial_file(tmp_path, tri_run, monkeypatch,
                                                                                 capsys):
    """ENOSPC while a part's vectors were written: a traceback, and the half-written .npy.tmpPID stayed in parts/
    (as it did after a Ctrl-C in the middle of a write)."""
    import errno

    import align.retrieval.embed as E
    run, model = tri_run
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=3)
    out = str(tmp_path / "a")
    real, calls = np.save, []

    def save(f, a, *args, **kw):
        calls.append(1)
        if len(calls) == 4:                               # part 1's first .npy: part 0's three are written
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, a, *args, **kw)
    monkeypatch.setattr(E.np, "save", save)
    assert main(["embed", run, "--data", str(tmp_path / "shards"), "--out", out, "--no-progress"]) == 74
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"align: error: {out}/parts/part-00001.image.npy: No space left on "
                                               f"device (") and "partial files removed" in err[0], err
    part0 = [f"part-00000.{x}" for x in ("audio.npy", "done.json", "image.npy", "parquet", "text.npy")]
    assert sorted(os.listdir(os.path.join(out, "parts"))) == part0

    def interrupted(f, a, *args, **kw):                   # Ctrl-C in the middle of a write
        f.write(b"\0" * 100)
        raise KeyboardInterrupt
    monkeypatch.setattr(E.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(model, str(tmp_path / "shards"), out, progress=False)
    assert sorted(os.listdir(os.path.join(out, "parts"))) == part0


@pytest.mark.parametrize("command", ["embed", "index"])
def test_a_modalities_list_of_nothing_is_one_line_not_all(tmp_path, capsys, monkeypatch, command):
    """`--modalities ","` (or " ") read as "every modality"."""
    from align.retrieval import cli as rcli
    monkeypatch.setattr(rcli, "_load", lambda a: pytest.fail("the model was loaded before --modalities was checked"))
    args = (["embed", "m", "--data", str(tmp_path)] if command == "embed" else ["index", str(tmp_path)])
    assert main(args + ["--out", str(tmp_path / "o"), "--modalities", " , "]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["align: error: --modalities: a comma list of modalities (image, text, audio), got ' , '"]


def test_limit_decides_what_is_embedded_and_a_resume_under_other_limits_is_refused(tmp_path, capsys, tri_run):
    """`align embed` decoded with the default limits whatever the model's recipe said; the model's limits (here
    --limit over them) now decide, a skip names --limit, the manifest records them and a rerun into the same --out
    under other limits is refused rather than mixing two skip rules."""
    run, _ = tri_run
    tri_shards(tmp_path / "shards", n_shards=1, per_shard=3)          # 0.05 s clips
    cmd = ["embed", run, "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "emb"), "--no-progress"]
    assert main(cmd + ["--limit", "max_audio_seconds=0.01"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "vectors: image 3, text 3, 3 skipped" in line, line
    done = json.load(open(tmp_path / "emb" / "parts" / "part-00000.done.json"))
    first = done["errors"][0]
    assert "(--limit max_audio_seconds=VALUE accepts it)" in first and "data.limits" not in first
    assert json.load(open(tmp_path / "emb" / "manifest.json"))["limits"] == {"max_audio_seconds": 0.01}
    assert main(cmd) == 2                                              # the recipe's limits (the defaults here)
    assert "holds embeddings of another run (limits differs" in capsys.readouterr().err
    assert main(cmd[:-3] + ["--out", str(tmp_path / "emb2"), "--no-progress"]) == 0
    assert "vectors: image 3, audio 3, text 3, 0 skipped" in capsys.readouterr().out
    assert json.load(open(tmp_path / "emb2" / "manifest.json"))["limits"] == {}


def test_the_manifest_records_the_corpus_folder(tmp_path, tri_run):
    """`align serve` answers shard paths relative to it: an eval set's ROOT, a folder of shards, or for a pattern
    the deepest folder holding every shard."""
    from align.retrieval.embed import corpus_root
    shards = tri_shards(tmp_path / "a" / "shards", n_shards=2, per_shard=1)
    assert corpus_root(str(tmp_path / "a" / "shards"), shards) == str(tmp_path / "a" / "shards")
    assert corpus_root(str(tmp_path / "a" / "shards" / "shard-{000..001}.tar"), shards) == \
        str(tmp_path / "a" / "shards")
    other = tri_shards(tmp_path / "b", n_shards=1, per_shard=1)
    assert corpus_root("ignored-pattern", shards + other) == str(tmp_path)
    assert corpus_root(str(tmp_path / "b"), shards + other) == str(tmp_path)    # a folder not holding them all
    _, model = tri_run
    embed_corpus(model, str(tmp_path / "a" / "shards"), str(tmp_path / "emb"), progress=False)
    assert json.load(open(tmp_path / "emb" / "manifest.json"))["root"] == str(tmp_path / "a" / "shards")
    _eval_set(tmp_path / "evalset")                                    # ROOT/test/N.tar: ROOT
    embed_corpus(model, str(tmp_path / "evalset"), str(tmp_path / "emb2"), modalities=["text"], progress=False)
    assert json.load(open(tmp_path / "emb2" / "manifest.json"))["root"] == str(tmp_path / "evalset")


def _totals_worker(rank, port, out):
    import json as _json
    from align.retrieval.embed_summary import EmbedSummary, launch_totals
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    mine = EmbedSummary(parts=2 - rank, done_before=rank, items=10 + rank, vectors={"text": 3 + rank, "image": 1},
                        skipped=rank, seconds=1.0 + rank)
    total = launch_totals(mine, rank, 2)
    with open(f"{out}.{rank}", "w") as f:
        _json.dump(None if total is None else total.line("emb", rank, 2, launch=total is not mine), f)


def test_a_launch_prints_one_end_line_with_every_processs_totals(tmp_path):
    """Under `accelerate launch --num_processes 2` each process printed its own end line (two lines, each a share):
    the processes' counts are gathered over gloo and process 0 prints one line with the launch's totals."""
    import multiprocessing
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_totals_worker, args=(r, port, str(tmp_path / "said"))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    said = [json.load(open(tmp_path / f"said.{r}")) for r in (0, 1)]
    assert said[1] is None
    assert said[0] == ("embed: 2 processes: 3 part(s) (1 already done), 21 samples, vectors: image 2, text 7, "
                       "1 skipped, 10.5 samples/s, 2.0 s -> emb"), said[0]


def test_the_limits_line_is_said_by_process_0_of_a_launch_only(tmp_path, tri_run, monkeypatch, capsys):
    """`align embed --limit ...` under `accelerate launch --num_processes 2` printed `MODEL: media limits ...` once
    per process: process 0 says it."""
    run, _ = tri_run
    tri_shards(tmp_path / "shards", n_shards=2, per_shard=1)
    said = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main(["embed", run, "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "e"),
                     "--limit", "max_audio_seconds=1200"]) == 0
        said.append([ln for ln in capsys.readouterr().out.splitlines() if "media limits" in ln])
    assert len(said[0]) == 1 and "max_audio_seconds=1200" in said[0][0] and said[1] == [], said


def test_load_rows_and_write_rows_take_each_parts_rows_of_a_modality_in_vector_order(tmp_path):
    """load_rows (pandas) and write_rows (arrow, rows.parquet) filtered and sorted each part in two libraries; one
    reader of a part serves both: each part's rows of the modality, by `row`, whatever order the part stores them
    in, the table pandas gave."""
    from align.retrieval.embed import load_rows, write_rows
    from tests.retrieval.conftest import clustered, write_emb
    emb = write_emb(tmp_path / "emb", {"image": clustered(30, 4, seed=0), "text": clustered(20, 4, seed=1)},
                    per_part=12)
    parts = sorted(p for p in (tmp_path / "emb" / "parts").iterdir() if p.suffix == ".parquet")
    for i, p in enumerate(parts):                          # stored out of order, modalities mixed
        pd.read_parquet(p).sample(frac=1.0, random_state=i).to_parquet(p, index=False)
    for m in ("image", "text"):
        tables = [pd.read_parquet(p) for p in parts]
        want = pd.concat([t[t["modality"] == m].sort_values("row") for t in tables], ignore_index=True)
        assert list(want["key"]) == [f"k{i:06d}" for i in range(30 if m == "image" else 20)]
        pd.testing.assert_frame_equal(load_rows(emb, m), want)
        pd.testing.assert_frame_equal(load_rows(emb, m, columns=("shard", "key")), want[["shard", "key"]])
        assert write_rows(emb, m, str(tmp_path / f"{m}.parquet")) == len(want)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{m}.parquet"), want)
