"""align/runlock.py: one live writer per directory; stale locks (dead pid, stopped heartbeat) taken over."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from align.runlock import INFO_NAME, LOCK_NAME, DirectoryBusy, RunLock
from tests.conftest import checkout_env, start_python


@pytest.fixture
def refuse_at_once(monkeypatch):
    """A held lock refused at the first try, not after runlock.BUSY_WAIT_S (3 s) of flufl's retries: the tests
    where a live holder must win (the refusal is the same line either way)."""
    import align.runlock
    monkeypatch.setattr(align.runlock, "BUSY_WAIT_S", 0.0)


def _holder(directory, lifetime_s=60.0):
    """A separate process that takes the lock, says so on stdout, and sleeps until killed."""
    return start_python(f"""
        import sys, time
        from align.runlock import RunLock
        lock = RunLock({str(directory)!r}, lifetime_s={lifetime_s}).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """, "locked")


def _content(path):
    """A file's bytes; the lock info file without its heartbeat, which the live holder itself refreshes every
    lifetime/3 (at most 30 s) -- on a busy machine the refused run can take longer than that."""
    data = open(path, "rb").read()
    if os.path.basename(path) == INFO_NAME:
        info = json.loads(data)
        assert isinstance(info.pop("heartbeat"), float)
        return info
    return data


def _snapshot(directory):
    """{path relative to directory: _content} of every file under it."""
    return {os.path.relpath(os.path.join(d, f), directory): _content(os.path.join(d, f))
            for d, _, fs in os.walk(directory) for f in fs}


def test_a_live_holder_refuses_a_second_writer_in_one_line_and_nothing_changes(tmp_path, refuse_at_once):
    (tmp_path / "metrics.jsonl").write_text('{"step": 20}\n')
    p = _holder(tmp_path)
    try:
        before = _snapshot(tmp_path)
        with pytest.raises(DirectoryBusy) as e:
            RunLock(str(tmp_path)).acquire()
        msg = str(e.value)
        assert "\n" not in msg and f"pid {p.pid}" in msg and RunLock(str(tmp_path)).holder()["host"] in msg and "since" in msg
        assert _snapshot(tmp_path) == before            # byte for byte: no claim file left, info untouched
    finally:
        p.kill()
        p.wait()


def test_a_sigkilled_holder_is_taken_over_at_once_with_one_line(tmp_path, caplog):
    p = _holder(tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # The lifetime is long: only the dead pid frees the lock, at once (a lock still held makes acquire() raise
    # DirectoryBusy after its 3 s try, so no clock is read here).
    lock = RunLock(str(tmp_path), lifetime_s=600).acquire()
    try:
        assert lock.took_over and f"pid {p.pid}" in lock.took_over and "gone" in lock.took_over
        assert any(lock.took_over == r.getMessage() for r in caplog.records)
        assert RunLock(str(tmp_path)).holder()["pid"] == os.getpid()
    finally:
        lock.release()


def _plant_foreign_lock(directory, age_s: float, lifetime_s: float):
    """A lock held by a process on another host, its expiry (mtime = last refresh + lifetime) set by hand."""
    claim = os.path.join(directory, f"{LOCK_NAME}|node-elsewhere|4242|1")
    with open(claim, "w") as f:
        f.write(claim)
    os.link(claim, os.path.join(directory, LOCK_NAME))
    expires = time.time() - age_s + lifetime_s
    os.utime(claim, (expires, expires))
    with open(os.path.join(directory, INFO_NAME), "w") as f:
        json.dump({"host": "node-elsewhere", "pid": 4242, "since": time.time() - 3600,
                   "heartbeat": time.time() - age_s, "command": "align train x"}, f)


def test_another_hosts_lock_is_respected_while_its_heartbeat_is_fresh(tmp_path, refuse_at_once):
    _plant_foreign_lock(str(tmp_path), age_s=5, lifetime_s=300)
    with pytest.raises(DirectoryBusy, match="host node-elsewhere pid 4242"):
        RunLock(str(tmp_path), lifetime_s=300).acquire()


def test_another_hosts_lock_with_a_stale_heartbeat_is_taken_over(tmp_path):
    _plant_foreign_lock(str(tmp_path), age_s=400, lifetime_s=300)   # flufl allows 10 s of clock slop
    lock = RunLock(str(tmp_path), lifetime_s=300).acquire()
    try:
        assert "heartbeat stopped" in lock.took_over and "node-elsewhere" in lock.took_over
    finally:
        lock.release()


def test_the_heartbeat_keeps_a_live_lock_past_its_lifetime(tmp_path, refuse_at_once):
    """Refused after 3 lifetimes alone proves nothing (flufl breaks an expired lock only 10 s past its expiry):
    the holder refreshed both the info file's heartbeat and the lock's expiry after its first lifetime."""
    from flufl.lock import Lock
    p = _holder(tmp_path, lifetime_s=0.6)
    try:
        since = RunLock(str(tmp_path)).holder()["since"]
        time.sleep(1.8)                                   # 3 lifetimes: only refreshes keep it
        info = RunLock(str(tmp_path)).holder()
        assert info["since"] == since and info["heartbeat"] > since + 0.6, info
        # flufl sets the expiry (the lock file's mtime) to the whole second below refresh time + lifetime: not
        # refreshed, it is at most since + 0.6; refreshed in the last 0.8 s (every 0.2 s), it is beyond that
        expires = Lock(str(tmp_path / LOCK_NAME)).expiration.timestamp()
        assert expires > since + 0.6, (expires, since)
        with pytest.raises(DirectoryBusy):
            RunLock(str(tmp_path), lifetime_s=0.6).acquire()
    finally:
        p.kill()
        p.wait()


def test_release_frees_the_directory_and_the_context_manager_releases_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with RunLock(str(tmp_path)):
            assert os.path.exists(tmp_path / LOCK_NAME)
            raise RuntimeError("boom")
    assert not os.path.exists(tmp_path / LOCK_NAME) and not os.path.exists(tmp_path / INFO_NAME)
    with RunLock(str(tmp_path)) as again:
        assert again.took_over is None


# -- through `align train` ------------------------------------------------------------------------------------


def test_align_train_on_a_live_run_dir_is_refused_and_changes_no_file(tiny_recipe, tmp_path, capsys,
                                                                     refuse_at_once):
    """`align train` in this process (main() returns the exit status; a traceback would raise here): the holder
    is another process. `python -m align` returning main()'s status is tests/test_cli.py's."""
    import yaml

    from align.cli import main
    from tests.train.test_train import _run
    run = tiny_recipe["output_dir"]
    assert _run(tiny_recipe) == 0
    p = _holder(run)                                  # a live run holds it now
    try:
        before = _snapshot(run)
        path = tmp_path / "again.yaml"
        tiny_recipe["train"]["max_steps"] = 9
        path.write_text(yaml.safe_dump(tiny_recipe))
        capsys.readouterr()
        assert main(["train", str(path), "--no-progress"]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("align: error: ") and f"pid {p.pid}" in last and "another run holds" in last
        assert _snapshot(run) == before
    finally:
        p.kill()
        p.wait()


def test_a_sigkilled_runs_lock_is_taken_over_and_resume_carries_on(tiny_recipe):
    from tests.train.test_train import _run
    run = tiny_recipe["output_dir"]
    assert _run(tiny_recipe, kill_at=3) != 0          # SIGKILLed after step 3: its lock stays behind
    assert os.path.exists(os.path.join(run, LOCK_NAME))
    assert _run(tiny_recipe) == 0                     # taken over (the pid is gone), resumed, finished
    assert [json.loads(l)["step"] for l in open(os.path.join(run, "metrics.jsonl"))][-1] == 6
    assert not os.path.exists(os.path.join(run, LOCK_NAME))   # released at the end


def test_live_holder_names_a_live_holder_only(tmp_path):
    from align.runlock import live_holder
    assert live_holder(str(tmp_path)) is None                     # never locked
    p = _holder(tmp_path)
    try:
        assert f"pid {p.pid}" in live_holder(str(tmp_path))
    finally:
        p.kill()
        p.wait()
    assert live_holder(str(tmp_path)) is None                     # SIGKILLed: its lock is stale
    with RunLock(str(tmp_path), lifetime_s=60):
        assert f"pid {os.getpid()}" in live_holder(str(tmp_path))
    assert live_holder(str(tmp_path)) is None                     # released


@pytest.mark.slow
def test_the_double_launch_of_the_issue_leaves_one_runs_metrics_with_strictly_increasing_steps(tiny_recipe, tmp_path):
    """Issue 25's reproduction: the same `align train` started twice, 3 s apart, on one output_dir. The second
    is refused with one line naming the first; metrics.jsonl holds the first run's steps once each, in order.
    Slow (a real training of about 30 s on 2 cores)."""
    import yaml
    run = tiny_recipe["output_dir"]
    tiny_recipe["train"].update(max_steps=2000, checkpoint_every=500, log_every=100)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    env = checkout_env()
    cmd = [sys.executable, "-m", "align.cli", "train", str(path), "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(3)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and "Traceback" not in second.stderr
    line = second.stderr.strip()
    assert "\n" not in line and "another run holds this directory" in line and f" pid {first.pid} " in line, line
    steps = [json.loads(ln)["step"] for ln in open(os.path.join(run, "metrics.jsonl")) if ln.strip()]
    assert steps == sorted(set(steps)) and steps[-1] == 2000, steps


def test_the_heartbeat_mark_still_moves_when_the_disk_is_full(tmp_path):
    """A full disk fails the lock's refresh and the info file's rewrite; the file's mtime (no free block
    needed) still moves, so ranks waiting on this holder (align.train.guard) do not take it for stopped."""
    from align.runlock import heartbeat_mark
    lock = RunLock(str(tmp_path), lifetime_s=0.3)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    lock.acquire()
    try:
        lock._write_info = full
        lock._lock.refresh = full
        first = heartbeat_mark(str(tmp_path))
        time.sleep(0.35)                                   # > 3 heartbeats of 0.1 s
        second = heartbeat_mark(str(tmp_path))
        assert first is not None and second is not None
        assert second[0] == first[0] and second[1] != first[1]     # the same heartbeat value, a newer mtime
    finally:
        lock.release()
    assert heartbeat_mark(str(tmp_path)) is None                 # released: nothing to watch


def test_a_full_disk_at_the_first_info_write_is_one_line_naming_it_and_keeps_no_lock(tmp_path, monkeypatch):
    """The holder's info file could not be written when the lock was taken: the OSError of a write names no file
    (the CLI said "a write: No space left on device") and the lock stayed taken by a run that never started. Now
    one StorageError line naming align.lock.json, no lock, no temporary file; with space the same lock is taken."""
    from align.writes import StorageError
    from tests.diskfull import files_under, full_disk
    full_disk(monkeypatch, INFO_NAME, free=0)
    with pytest.raises(StorageError) as e:
        RunLock(str(tmp_path)).acquire()
    assert str(e.value).startswith(f"{tmp_path / INFO_NAME}: No space left on device (") and "\n" not in str(e.value)
    assert files_under(tmp_path) == []                            # no lock, no info file, no temporary file
    monkeypatch.undo()                                             # space freed
    with RunLock(str(tmp_path)) as lock:
        assert lock.took_over is None and json.load(open(tmp_path / INFO_NAME))["pid"] == os.getpid()


def test_the_holder_in_words_cuts_a_long_command_line_and_keeps_a_short_one():
    from align.runlock import COMMAND_CHARS, describe
    long = "align train " + " ".join(f"model.towers.text.key{i}=value{i}" for i in range(40))
    line = describe({"host": "h", "pid": 7, "since": time.time(), "heartbeat": time.time(), "command": long})
    assert "\n" not in line and line.endswith(f" ({long[:COMMAND_CHARS - 3]}...)") and len(line) < 200
    short = describe({"host": "h", "pid": 7, "command": "align train r.yaml"})
    assert short.startswith("host h pid 7 since ?") and short.endswith("(align train r.yaml)")
