"""WiSE-FT export: (1 - alpha) * start + alpha * fine-tuned, against a plain per-tensor reference."""
import math
import os

import pytest
import torch

from align.api import load
from align.cli import main
from align.errors import AlignError
from align.export import export
from align.export.wise_ft import interpolate_state, parse_alphas
from tests.export.conftest import TINY_AUDIO_CNN, make_run


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A start (image-text, exported to open_clip layout) and a fine-tuned model with an added audio tower."""
    root = tmp_path_factory.mktemp("wise")
    start_run, start = make_run(root / "a", seed=1)
    export(start_run, str(root / "start"), fmt="open_clip", progress=False)
    ft_run, ft = make_run(root / "b", seed=2, towers={"audio": dict(TINY_AUDIO_CNN)})
    return {"root": root, "start": str(root / "start"), "ft_run": ft_run, "s": start.state_dict(),
            "f": ft.state_dict()}


def test_interpolate_state_reference():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=g), "n": torch.tensor(5), "only": torch.randn(2, generator=g)}
    b = {"w": torch.randn(3, 4, generator=g), "n": torch.tensor(7)}
    out, rep = interpolate_state(a, b, 0.25)
    for i in range(3):
        for j in range(4):
            assert math.isclose(float(out["w"][i, j]), 0.75 * float(b["w"][i, j]) + 0.25 * float(a["w"][i, j]),
                                rel_tol=1e-6, abs_tol=1e-7)
    assert int(out["n"]) == 5 and torch.equal(out["only"], a["only"])     # integer buffers: fine-tuned value
    assert rep == {"interpolated": 1, "kept_finetuned": ["only"], "counters": 1}   # n is kept, not interpolated
    with pytest.raises(AlignError, match="tensor 'w' has shape"):
        interpolate_state(a, {"w": torch.zeros(4, 3)}, 0.5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_export_interpolates_towers_and_temperature(pair, alpha, tmp_path):
    out = str(tmp_path / "wise")
    res = export(pair["ft_run"], out, fmt="open_clip", interpolate_with=pair["start"], alpha=alpha, progress=False)
    sd = load(out).state_dict()
    for k, v in sd.items():
        if k.startswith("towers.audio."):
            assert torch.equal(v, pair["f"][k]), k                   # not in the start: kept as fine-tuned
        elif v.is_floating_point():
            want = (1 - alpha) * pair["s"][k] + alpha * pair["f"][k]
            torch.testing.assert_close(v, want, atol=1e-6, rtol=1e-6, msg=k)
    assert res["wise_ft"]["alpha"] == alpha and any("WiSE-FT" in n for n in res["notes"])
    assert "open_clip" in res["formats"]                            # still loads in open_clip, parity checked


def test_cli_alpha_list_writes_one_export_per_alpha(pair, tmp_path, capsys):
    out = str(tmp_path / "curve")
    assert main(["export", pair["ft_run"], "--out", out, "--format", "open_clip", "--interpolate-with",
                 pair["start"], "--alpha", "0,0.5,1"]) == 0
    assert sorted(os.listdir(out)) == ["alpha-0", "alpha-0.5", "alpha-1"]
    k = "towers.image.net.proj"
    mid = load(os.path.join(out, "alpha-0.5")).state_dict()[k]
    torch.testing.assert_close(mid, 0.5 * pair["s"][k] + 0.5 * pair["f"][k])
    assert capsys.readouterr().out.count("WiSE-FT") == 3
    assert main(["export", pair["ft_run"], "--out", str(tmp_path / "x"), "--alpha", "0.5"]) == 2
    assert "needs --interpolate-with" in capsys.readouterr().err


def test_bad_alpha():
    assert parse_alphas("0,0.25,1") == [0.0, 0.25, 1.0]
    for bad in ("1.5", "a", ""):
        with pytest.raises(AlignError, match="--alpha"):
            parse_alphas(bad)


def test_cli_alpha_list_checks_every_target_before_writing_any(pair, tmp_path, capsys):
    """A busy alpha-0.5 stopped the command after alpha-0 was written, and the rerun then failed on alpha-0."""
    out = tmp_path / "curve"
    (out / "alpha-0.5").mkdir(parents=True)
    (out / "alpha-0.5" / "mine.txt").write_text("keep")
    assert main(["export", pair["ft_run"], "--out", str(out), "--format", "open_clip", "--interpolate-with",
                 pair["start"], "--alpha", "0,0.5,1"]) == 2
    assert "alpha-0.5 exists and is not empty" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["alpha-0.5"]                          # nothing written
