"""align/train/storage.py: disk errors recognised through library wrappers, one line, metrics rows past a resume dropped."""

import errno
import json

from align.train.storage import is_storage_error, storage_line, truncate_metrics, warn_if_tight


class SafetensorError(Exception):
    """Stands for safetensors' own error type, which carries the OS message as text."""


def test_storage_errors_are_recognised_directly_through_causes_and_by_message():
    assert is_storage_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_error(SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                            "message: \"No space left on device\" })"))
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as e:
            raise RuntimeError("torch.save failed") from e
    except RuntimeError as wrapped:
        assert is_storage_error(wrapped)
    assert not is_storage_error(ValueError("bad value")) and not is_storage_error(FileNotFoundError(2, "x"))


def test_the_line_names_path_space_and_the_intact_checkpoint(tmp_path):
    line = storage_line(OSError(errno.ENOSPC, "No space left on device"), str(tmp_path / "ckpt" / "step-40"),
                        42_000_000, str(tmp_path / "ckpt" / "step-20"))
    assert "\n" not in line and line.startswith(f"{tmp_path}/ckpt/step-40: No space left on device")
    assert "needs about 42.0 MB" in line and " free" in line and f"intact checkpoint is {tmp_path}/ckpt/step-20" in line
    assert "no intact checkpoint" in storage_line(OSError(errno.ENOSPC, "x"), "p", None, None)


def test_warn_if_tight_says_it_once_when_the_next_write_cannot_fit(tmp_path, caplog):
    assert not warn_if_tight(str(tmp_path), 10)
    assert warn_if_tight(str(tmp_path), 10 ** 18)
    assert sum("will not fit" in r.getMessage() for r in caplog.records) == 1


def test_truncate_metrics_keeps_rows_up_to_the_resume_step_and_drops_a_cut_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in (10, 20, 30, 40)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5')
    assert truncate_metrics(str(p), 20) == 3
    assert [json.loads(l)["step"] for l in p.read_text().splitlines()] == [10, 20]
    assert truncate_metrics(str(p), 20) == 0
