"""align/train/manifest.py: a checkpoint's manifest catches a cut, a flipped byte and a missing file."""

import os

import pytest

from align.train.manifest import MANIFEST, has_manifest, verify, write_manifest


def _ckpt(tmp_path):
    d = tmp_path / "step-00000040"
    (d / "dcp").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(os.urandom(300_000))
    (d / "state.json").write_text('{"step": 40}')
    (d / "dcp" / "__0_0.distcp").write_bytes(os.urandom(1000))
    write_manifest(str(d))
    return d


def test_an_intact_checkpoint_verifies(tmp_path):
    d = _ckpt(tmp_path)
    assert has_manifest(str(d)) and verify(str(d)) is None


def test_a_file_cut_to_half_is_named_with_its_sizes(tmp_path):
    d = _ckpt(tmp_path)
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[:150_000])
    msg = verify(str(d))
    assert msg == f"{p}: 0.15 MB, expected 0.3 MB (damaged or cut short)"


def test_a_few_bytes_more_show_both_sizes_in_bytes(tmp_path):
    """`align checkpoints` said "34.1 MB, expected 34.1 MB" for a file 2 bytes longer: equal in MB, say bytes."""
    d = _ckpt(tmp_path)
    p = d / "model.safetensors"
    with open(p, "ab") as f:
        f.write(b"x\n")
    assert verify(str(d)) == f"{p}: 300,002 bytes, expected 300,000 bytes (damaged or cut short)"


def test_a_flipped_byte_of_the_same_size_fails_the_hash(tmp_path):
    d = _ckpt(tmp_path)
    p = d / "dcp" / "__0_0.distcp"
    b = bytearray(p.read_bytes())
    b[500] ^= 1
    p.write_bytes(bytes(b))
    assert verify(str(d)) == f"{p}: contents differ from the checkpoint's manifest (sha256 mismatch)"
    assert verify(str(d), hashes=False) is None          # the cheap check sees sizes only


def test_a_missing_file_and_an_unreadable_manifest_are_one_line_each(tmp_path):
    d = _ckpt(tmp_path)
    os.remove(d / "state.json")
    assert verify(str(d)) == f"{d / 'state.json'}: missing (the checkpoint's manifest lists it)"
    (d / MANIFEST).write_text("{not json")
    msg = verify(str(d))
    assert msg.startswith(f"{d / MANIFEST}: unreadable manifest") and "\n" not in msg


def test_a_checkpoint_without_a_manifest_is_taken_as_it_is(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"x")
    assert not has_manifest(str(d)) and verify(str(d)) is None


# -- through training, resume, align.load and `align checkpoints` ---------------------------------------------


def _trained(tiny_recipe, steps):
    from tests.train.test_train import _run
    tiny_recipe["train"]["max_steps"] = steps
    assert _run(tiny_recipe) == 0
    return tiny_recipe["output_dir"]


def test_resume_auto_falls_back_from_a_truncated_checkpoint_with_one_line(tiny_recipe, caplog, capsys):
    import json

    from align.cli import main
    from align.train import rundir
    from align.train.setup import resolve_resume
    from align.config import parse_recipe
    from tests.train.test_train import _run

    run = _trained(tiny_recipe, 6)                      # checkpoints at steps 3 and 6
    ckpts = rundir.list_checkpoints(rundir.checkpoints_dir(run))
    assert [has_manifest(c) for c in ckpts] == [True, True] and all(verify(c) is None for c in ckpts)
    newest = os.path.join(ckpts[-1], "model.safetensors")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    assert resolve_resume(parse_recipe(tiny_recipe)) == ckpts[0]
    lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(lines) == 1 and newest in lines[0] and ckpts[0] in lines[0] and "\n" not in lines[0]
    assert os.path.getsize(newest) > 0                  # left in place for inspection
    assert main(["checkpoints", run]) == 1              # `align checkpoints` names it too
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["step-00000003", "step", "3"] and out[0].endswith("ok")
    assert "DAMAGED" in out[1] and newest in out[1]
    tiny_recipe["train"]["max_steps"] = 8               # resume=auto carries on from step 3 and finishes
    assert _run(tiny_recipe) == 0
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    assert rows[-1]["step"] == 8


def test_align_load_of_a_damaged_checkpoint_names_the_file_in_one_line(tiny_recipe):
    import align
    from align.errors import AlignError
    from align.train import rundir

    run = _trained(tiny_recipe, 3)
    ckpt = rundir.list_checkpoints(rundir.checkpoints_dir(run))[-1]
    with open(os.path.join(ckpt, "state.json"), "a") as f:
        f.write(" ")                                    # one byte more than the manifest says
    with pytest.raises(AlignError) as e:
        align.load(run)
    assert "no intact checkpoint" in str(e.value) and "state.json" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AlignError, match="damaged checkpoint: .*state.json"):
        align.load(ckpt)


def test_resume_from_a_named_damaged_checkpoint_is_refused_and_align_checkpoints_checks_best(tiny_recipe, capsys):
    """resume=PATH trained on a checkpoint that `align checkpoints` called DAMAGED; and that command listed only
    the step-N folders, never `best/`, which `align export RUN` and align.load take by default."""
    import shutil

    from align.cli import main
    from align.config import parse_recipe
    from align.errors import AlignError
    from align.train import rundir
    from align.train.setup import resolve_resume

    run = _trained(tiny_recipe, 3)
    ckpt = rundir.list_checkpoints(rundir.checkpoints_dir(run))[-1]
    best = os.path.join(rundir.checkpoints_dir(run), rundir.BEST)
    shutil.copytree(ckpt, best)
    weights = os.path.join(ckpt, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[-1] ^= 0xFF                                    # same size, another hash
    open(weights, "wb").write(bytes(data))
    with pytest.raises(AlignError, match=r"resume=.*step-00000003: damaged checkpoint: .*model.safetensors"):
        resolve_resume(parse_recipe(dict(tiny_recipe, resume=ckpt)))
    assert main(["checkpoints", run]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("step-00000003") and "DAMAGED" in out[0]
    assert out[1].split()[:3] == ["best", "step", "3"] and out[1].endswith("ok")
