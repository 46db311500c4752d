"""align/train/guard.py: preemption signals become an agreed flag; a stalled rank is named by the watchdog."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from align.train.guard import HUNG_EXIT, Preemption, Watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigterm_and_sigusr1_set_the_flag_instead_of_killing_and_restore_puts_handlers_back():
    before = signal.getsignal(signal.SIGTERM)
    p = Preemption().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert p.requested and p.name() == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)          # a second signal keeps the first
        assert p.name() == "SIGUSR1"
    finally:
        p.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_every_rank_agrees_when_any_rank_was_signalled():
    ranks = [Preemption(), Preemption()]
    ranks[1].signal = signal.SIGTERM
    reduce_max = lambda flag: max(int(r.requested) for r in ranks)   # what all_reduce(MAX) returns
    assert [r.agreed(reduce_max) for r in ranks] == [True, True]
    ranks[1].signal = None
    assert [r.agreed(reduce_max) for r in ranks] == [False, False]


def test_the_watchdog_names_the_rank_whose_heartbeat_stopped(tmp_path):
    hung = []
    r0 = Watchdog(str(tmp_path), rank=0, world_size=2, timeout_s=0.5, on_hang=hung.append, poll_s=0.05)
    r1 = Watchdog(str(tmp_path), rank=1, world_size=2, timeout_s=0.5, on_hang=lambda line: None)
    r1.beat(119)                       # rank 1 finished step 119, then stopped (SIGSTOP)
    time.sleep(0.2)
    r0.beat(120)
    r0.start()                         # rank 0 now waits in a collective for rank 1
    deadline = time.time() + 5
    while not hung and time.time() < deadline:
        time.sleep(0.05)
    r0.stop()
    assert len(hung) == 1 and "\n" not in hung[0]
    assert hung[0].startswith("rank 1 on host ") and "(last step 119)" in hung[0] and "dist_timeout_s=0.5" in hung[0]


def test_a_rank_that_keeps_stepping_is_never_stopped(tmp_path):
    hung = []
    w = Watchdog(str(tmp_path), rank=0, world_size=1, timeout_s=0.3, on_hang=hung.append, poll_s=0.05).start()
    for step in range(10):
        time.sleep(0.1)
        w.beat(step)
    w.stop()
    assert hung == []


def test_a_hung_process_exits_with_the_documented_code_and_one_line(tmp_path):
    code = textwrap.dedent(f"""
        import time
        from align.train.guard import Watchdog
        Watchdog({str(tmp_path)!r}, rank=0, world_size=1, timeout_s=0.3, poll_s=0.05).start()
        time.sleep(60)     # stands for a collective that never returns
    """)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == HUNG_EXIT and time.time() - t0 < 15
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("align: error: rank 0 on host")


def test_the_rank_furthest_behind_is_named_not_one_that_waits_with_its_batch(tmp_path):
    """Both ranks finished step 5 at about the same time; rank 0 then holds its next batch (it waits in a
    collective), rank 1 does not (stuck reading): rank 1 is named even though its heartbeat is newer."""
    hung = []
    r0 = Watchdog(str(tmp_path), rank=0, world_size=2, timeout_s=0.3, on_hang=hung.append, poll_s=0.05)
    r1 = Watchdog(str(tmp_path), rank=1, world_size=2, timeout_s=0.3, on_hang=lambda line: None)
    r0.start(5)
    r0.fetched()                       # rank 0's heartbeat is the older one
    time.sleep(0.05)
    r1.beat(5)
    deadline = time.time() + 5
    while not hung and time.time() < deadline:
        time.sleep(0.05)
    r0.stop()
    assert len(hung) == 1 and hung[0].startswith("rank 1 on host ") and "(last step 5)" in hung[0]


def test_a_paused_watchdog_gives_no_verdict_and_restarts_its_clock(tmp_path):
    hung = []
    w = Watchdog(str(tmp_path), rank=0, world_size=1, timeout_s=0.2, on_hang=hung.append, poll_s=0.02).start()
    with w.paused():                   # an evaluation or checkpoint write longer than the timeout
        time.sleep(0.5)
    time.sleep(0.1)                    # less than the timeout since the pause ended
    assert hung == []
    time.sleep(0.4)
    w.stop()
    assert len(hung) == 1


def test_a_step_watch_with_one_process_does_nothing(tmp_path, monkeypatch):
    from align.train.guard import StepWatch
    monkeypatch.setenv("WORLD_SIZE", "1")
    w = StepWatch(str(tmp_path / "run"), 0.01).start(0)
    w.fetched()
    w.beat(1)
    with w.paused():
        pass
    w.barrier()
    assert w.any(True) and not w.any(False)
    w.stop()
    assert not os.path.exists(tmp_path / "run")         # no heartbeat files for a single process
