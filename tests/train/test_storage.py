"""align/train/storage.py: disk errors recognised through library wrappers, one line, metrics rows past a resume dropped;
a full disk at a checkpoint (on a small tmpfs where it may mount one), at a metrics line and at an export."""

import errno
import io
import json
import os
import subprocess

import pytest
import yaml

from align.errors import AlignError
from align.train.storage import resume_metrics, truncate_metrics, warn_if_tight
from align.writes import RESUME_WORDS, STORAGE_EXIT, StorageError, is_storage_error, storage_line
from tests.switch_helpers import final_weights, metrics, recipe, train_dict


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


def test_a_metrics_line_that_is_json_but_no_row_is_dropped_like_a_cut_line(tmp_path):
    """`3` or `[1]` (valid JSON, not an object) raised AttributeError: 'int' object has no attribute 'get'."""
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 10, "loss": 0.5}\n3\n[1]\n"x"\nnull\n{"step": 20, "loss": 0.25}\n{"step": 30}\n')
    assert resume_metrics(str(p), 20) == 0.25
    assert [json.loads(l)["step"] for l in p.read_text().splitlines()] == [10, 20]
    p.write_text('{"step": 10}\n[{"step": 40}]\n')
    assert truncate_metrics(str(p), 10) == 1 and p.read_text() == '{"step": 10}\n'
    p.write_bytes(b'{"step": 10, "loss": 0.5}\n{"st\xff\xfe\x00ep": 15}\n')     # bytes a damaged disk left
    assert resume_metrics(str(p), 10) == 0.5
    assert p.read_text() == '{"step": 10, "loss": 0.5}\n'



def _peak_bytes(fn) -> int:
    """The most bytes Python allocated at once while fn() ran (tracemalloc: allocations counted, not RSS)."""
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_resume_reads_a_long_metrics_log_one_row_at_a_time(tmp_path):
    """resume_metrics held every line and every parsed row of metrics.jsonl (~1.7 KB a row: 1.6 GB for a run of a
    million logged steps, each resume); what it allocates no longer grows with the rows (500 vs 5,000 rows)."""
    def peak(n: int) -> int:
        p = tmp_path / f"metrics{n}.jsonl"
        p.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "skipped_by_reason": {"x": s}}) + "\n"
                             for s in range(1, n + 1)))
        got = []
        size = _peak_bytes(lambda: got.append(resume_metrics(str(p), n - 1)))
        assert got == [1.0 / (n - 1)] and len(p.read_text().splitlines()) == n - 1     # the last row dropped
        return size
    small, big = peak(500), peak(5000)
    assert big < 2 * small + 100_000, (small, big)

# -- a full disk in a run and an export: one line, partial files removed, the intact checkpoint resumes -------------
TRAIN = {"max_steps": 6, "checkpoint_every": 2, "log_every": 1}


def _tmpfs(path, size: int) -> bool:
    """Mount a tmpfs of `size` bytes at `path` (root only; CI runs as root); False where it may not."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size) -> a folder on a tmpfs of that size, or None where mounting is not allowed (the test
    then fakes ENOSPC); .grow(size) frees space by resizing it. Unmounted at the end."""
    mounted = []

    class Disk:
        def __call__(self, size):
            d = tmp_path / "disk"
            if not _tmpfs(d, size):
                return None
            mounted.append(d)
            return d

        def grow(self, size):
            subprocess.run(["mount", "-o", f"remount,size={size}", str(mounted[0])], check=True)

    yield Disk()
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _align(args, capfd):
    """`align ARGS` in this process (a child would spend ~10 s importing torch and open_clip): its exit status and
    everything it wrote to stderr, at the file-descriptor level (safetensors' and torch's own messages included)."""
    from align.cli import main
    capfd.readouterr()
    rc = main(args)
    return rc, capfd.readouterr().err


def _fail_writes_into(monkeypatch, module, marker: str):
    """Fake ENOSPC as safetensors raises it: the write of any file whose path contains `marker` leaves half a
    file, then fails."""
    real = module.save_file

    def save_file(tensors, path, *a, **k):
        if marker in str(path):
            with open(path, "wb") as f:
                f.write(b"\0" * 1000)
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                               "message: \"No space left on device\" })")
        return real(tensors, path, *a, **k)
    monkeypatch.setattr(module, "save_file", save_file)
    return real


def _check_the_line(line: str, run_dir: str) -> None:
    ckpts = os.path.join(run_dir, "checkpoints")
    assert "\n" not in line and f"{ckpts}/step-00000004: No space left on device (needs about " in line, line
    assert " free); partial files removed; the intact checkpoint is " + f"{ckpts}/step-00000002" in line, line
    assert sorted(os.listdir(ckpts)) == ["step-00000002"]                   # no .step-00000004.tmp left
    from align.train.manifest import verify
    from align.train.checkpoint import load_checkpoint
    assert verify(os.path.join(ckpts, "step-00000002")) is None
    assert load_checkpoint(os.path.join(ckpts, "step-00000002"), restore_rng=False)["step"] == 2


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_resume_logs_no_step_twice(tmp_path, small_disk,
                                                                                    monkeypatch, capfd):
    """On a tmpfs that holds one checkpoint and a half: the write of the second fails. (Without mount rights:
    the same with ENOSPC faked at the write.)"""
    ref = recipe(tmp_path, "ref", train=TRAIN, resume="auto")
    train_dict(ref)
    ckpt_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                     os.walk(os.path.join(ref["output_dir"], "checkpoints", "step-00000002")) for f in fs)
    disk = small_disk(int(ckpt_bytes * 1.5) + (1 << 20))          # + 1 MB for the logs
    if disk is None:                                               # no mount rights: fake ENOSPC in process
        import align.train.checkpoint as ck
        r = recipe(tmp_path, "run", train=TRAIN, resume="auto")
        real = _fail_writes_into(monkeypatch, ck, ".step-00000004.tmp")
        with pytest.raises(StorageError) as e:
            train_dict(r)
        _check_the_line(str(e.value), r["output_dir"])
        monkeypatch.setattr(ck, "save_file", real)                 # space freed
        train_dict(r)
    else:
        r = recipe(disk, "run", train=TRAIN, resume="auto")
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(r))
        rc, err = _align(["train", str(tmp_path / "run.yaml"), "--no-progress"], capfd)
        assert rc == STORAGE_EXIT, err[-3000:]
        assert "Traceback" not in err and "SafetensorError" not in err, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("align: ")]
        assert len(lines) == 1 and lines[0].startswith("align: error: "), err[-3000:]
        _check_the_line(lines[0], r["output_dir"])
        assert "will not fit" in err                               # said ahead, before the write
        assert [row["step"] for row in metrics(r["output_dir"])] == [1, 2, 3, 4]
        small_disk.grow(ckpt_bytes * 4 + (4 << 20))                    # space freed
        train_dict(r)                                              # the same recipe resumes
    assert [row["step"] for row in metrics(r["output_dir"])] == [1, 2, 3, 4, 5, 6]     # no step twice
    a, b = final_weights(ref["output_dir"]), final_weights(r["output_dir"])
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_a_full_disk_at_the_manifest_after_every_part_is_written_removes_the_partial_checkpoint(tmp_path,
                                                                                            monkeypatch):
    """The last write of a checkpoint (rank 0's manifest, after the parts): save_checkpoint's own clean-up covers
    only a failed part, so here checkpoint_write's guard is what removes .step-00000004.tmp and says the line."""
    import errno
    import align.train.checkpoint as ck
    real = ck.write_manifest

    def manifest(tmp):
        if tmp.endswith(".step-00000004.tmp"):
            with open(os.path.join(tmp, "manifest.json"), "wb") as f:
                f.write(b"{")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(tmp, "manifest.json"))
        return real(tmp)
    monkeypatch.setattr(ck, "write_manifest", manifest)
    r = recipe(tmp_path, "run", train=TRAIN, resume="auto")
    with pytest.raises(StorageError) as e:
        train_dict(r)
    _check_the_line(str(e.value), r["output_dir"])
    monkeypatch.setattr(ck, "write_manifest", real)                 # space freed
    train_dict(r)
    assert [row["step"] for row in metrics(r["output_dir"])] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("resume", ["auto", "none"])
def test_a_full_disk_at_a_metrics_line_is_one_line_and_cuts_the_file_back_to_whole_lines(tmp_path, monkeypatch,
                                                                                          resume):
    """Its line says what resumes: the same command under resume=auto (the default); under resume=none the same
    command is refused (the run dir holds checkpoints), so the line names resume=auto."""
    import align.train.metrics as m

    class FullAtStep5(io.FileIO):
        def write(self, data):
            if b'"step": 5,' in bytes(data):
                super().write(bytes(data)[:7])                     # half the row reached the disk
                raise OSError(28, "No space left on device")
            return super().write(data)

    def full_open(path, mode="r", buffering=-1, **kw):
        if not (str(path).endswith("metrics.jsonl") and "a" in mode):
            return open(path, mode, buffering, **kw)
        raw = FullAtStep5(path, "ab")                              # the file as the RunLogger opens it
        if "b" in mode:
            return raw if buffering == 0 else io.BufferedWriter(raw)
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")
    r = recipe(tmp_path, "run", train=TRAIN, resume=resume)
    monkeypatch.setattr(m, "open", full_open, raising=False)
    with pytest.raises(StorageError) as e:
        train_dict(r)
    path = os.path.join(r["output_dir"], "metrics.jsonl")
    line = str(e.value)
    assert line.startswith(f"{path}: No space left on device (needs about ") and "\n" not in line, line
    words = ("run the same command to resume" if resume == "auto" else
             "run the same command with resume=auto to resume (resume=none would not)")
    assert line.endswith(f"the intact checkpoint is {r['output_dir']}/checkpoints/step-00000004; free space and "
                         f"{words}"), line
    assert [row["step"] for row in metrics(r["output_dir"])] == [1, 2, 3, 4]        # the cut row removed
    assert RESUME_WORDS.get() == "run the same command to resume"                 # the run's words end with it
    monkeypatch.undo()
    if resume == "none":                                  # as the line says: the same command would not resume
        with pytest.raises(AlignError, match="resume=auto"):
            train_dict(r)
        r["resume"] = "auto"
    train_dict(r)
    assert [row["step"] for row in metrics(r["output_dir"])] == [1, 2, 3, 4, 5, 6]


def test_an_export_to_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, small_disk, monkeypatch, capfd):
    r = recipe(tmp_path, "run", train={"max_steps": 1})
    train_dict(r)
    disk = small_disk(256 << 10)                                   # 256 KB: not even the align weights fit
    if disk is not None:
        rc, err = _align(["export", r["output_dir"], "--out", str(disk / "exp"), "--format", "open_clip"], capfd)
        assert rc == STORAGE_EXIT, err[-3000:]
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("align: ")]
        assert len(lines) == 1, err[-3000:]
        line = lines[0].removeprefix("align: error: ")
        out = disk
    else:                                                          # no mount rights: fake ENOSPC in process
        import safetensors.torch

        from align.export import export
        out = tmp_path / "exports"
        out.mkdir()
        _fail_writes_into(monkeypatch, safetensors.torch, "align_model.safetensors")
        with pytest.raises(StorageError) as e:
            export(r["output_dir"], str(out / "exp"), fmt="open_clip", progress=False)
        line = str(e.value)
    assert line.startswith(f"{out / 'exp'}: No space left on device (needs about ") and "\n" not in line, line
    assert "nothing was written to" in line and "free space and run the same command again" in line, line
    assert os.listdir(out) == []                                   # the temporary sibling folder removed


@pytest.mark.parametrize("full_at", ["loss.png", "summary.json"])
def test_a_full_disk_at_the_runs_end_files_is_one_line_and_the_rerun_writes_them(tmp_path, monkeypatch, full_at):
    """ENOSPC at summary.json or loss.png, after the final checkpoint: a traceback, and an empty summary.json (or
    half a PNG) under its name. Now one line naming the file and the final checkpoint, nothing partial, and the
    same command (resume=auto) writes both; loss.png comes before summary.json, which marks the run finished."""
    from PIL import Image

    from tests.diskfull import files_under, full_disk
    r = recipe(tmp_path, "run", train={"max_steps": 2, "checkpoint_every": 2}, resume="auto")
    disk = full_disk(monkeypatch, full_at, free=10)
    with pytest.raises(StorageError) as e:
        train_dict(r)
    path, final = os.path.join(r["output_dir"], full_at), f"{r['output_dir']}/checkpoints/step-00000002"
    assert disk.failed[0].startswith(path + ".tmp")
    line = str(e.value)
    assert line.startswith(f"{path}: No space left on device (") and "\n" not in line, line
    assert f"the intact checkpoint is {final}; free space and run the same command to resume" in line, line
    assert not [f for f in files_under(r["output_dir"]) if ".tmp" in f] and not os.path.exists(path)
    assert not os.path.exists(os.path.join(r["output_dir"], "summary.json"))    # the run is not taken as finished
    monkeypatch.undo()                                                            # space freed
    assert train_dict(r)["steps"] == 2
    assert json.load(open(os.path.join(r["output_dir"], "summary.json")))["steps"] == 2
    assert Image.open(os.path.join(r["output_dir"], "loss.png")).size[0] > 0
    assert [row["step"] for row in metrics(r["output_dir"])] == [1, 2]


def test_a_full_disk_at_the_runs_config_is_one_line_and_leaves_no_cut_config(tmp_path, monkeypatch):
    """config.yaml (what align.load and export read) was written in place: a full disk left it cut, and a traceback."""
    from tests.diskfull import files_under, full_disk
    r = recipe(tmp_path, "run", train={"max_steps": 1}, resume="auto")
    disk = full_disk(monkeypatch, "config.yaml", free=100)
    with pytest.raises(StorageError) as e:
        train_dict(r)
    path = os.path.join(r["output_dir"], "config.yaml")
    assert disk.failed[0].startswith(path + ".tmp") and str(e.value).startswith(f"{path}: No space left on device (")
    assert "the run's checkpoints are untouched" in str(e.value)
    assert not [f for f in files_under(r["output_dir"]) if "config" in f]
    monkeypatch.undo()
    assert train_dict(r)["steps"] == 1 and yaml.safe_load(open(path))["output_dir"] == r["output_dir"]


def test_a_full_disk_at_an_eval_row_is_one_line_and_leaves_whole_rows(tmp_path, monkeypatch):
    """eval.jsonl rows were appended with a plain write: a full disk left half a row and a traceback. Now they go
    through append_line, as metrics rows do: one line naming the file and the intact checkpoint, the file cut back
    to its whole rows, and the resumed run logs its evaluations."""
    from tests.diskfull import full_disk
    from tests.train.test_train_switches import _val_dir
    r = recipe(tmp_path, "run", data={"val": _val_dir(tmp_path / "val")}, resume="auto",
               train={"max_steps": 4, "checkpoint_every": 2}, eval={"every": 2, "tasks": ["zeroshot"]})
    disk = full_disk(monkeypatch, "eval.jsonl", free=0)
    with pytest.raises(StorageError) as e:
        train_dict(r)
    path = os.path.join(r["output_dir"], "eval.jsonl")
    assert disk.failed == [path] and str(e.value).startswith(f"{path}: No space left on device (needs about ")
    assert "free space and run the same command to resume" in str(e.value) and "\n" not in str(e.value)
    assert open(path).read() == ""                                         # the cut row removed
    monkeypatch.undo()
    train_dict(r)
    rows = [json.loads(line) for line in open(path)]
    assert rows and rows[-1]["step"] == 4 and all(isinstance(row, dict) for row in rows)
