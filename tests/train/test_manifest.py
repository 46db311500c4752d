"""align/train/manifest.py: a checkpoint's manifest catches a cut, a flipped byte and a missing file."""

import os

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
