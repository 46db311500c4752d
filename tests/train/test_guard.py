"""align/train/guard.py: preemption signals become an agreed flag; a stalled rank is named by the watchdog."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from align.train.guard import HUNG_EXIT, Preemption, Watchdog
from tests.conftest import start_python

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


def test_a_rank_that_got_no_signal_names_the_one_another_rank_got():
    """SIGTERM to rank 1 only (as some schedulers do): rank 0's preemption line said "preempted (none)"."""
    ranks = [Preemption(), Preemption()]
    ranks[1].signal = signal.SIGTERM
    reduce_max = lambda n: max(int(r.signal or 0) for r in ranks)     # all_reduce(MAX) of the signal numbers
    assert [r.agreed(reduce_max) for r in ranks] == [True, True]
    assert [r.name() for r in ranks] == ["SIGTERM to another rank", "SIGTERM"]


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
    # beats every 0.1 s against a 3 s timeout: a loaded 2-core host stalled this process past a 0.3 s one once
    hung = []
    w = Watchdog(str(tmp_path), rank=0, world_size=1, timeout_s=3.0, on_hang=hung.append, poll_s=0.05).start()
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


def _stop_until_named(p, hung: list, watching) -> float:
    """SIGSTOP process p, then wait inside the block `watching()` opens until a line lands in `hung` (at most
    10 s); -> the seconds from the stop to the line."""
    os.kill(p.pid, signal.SIGSTOP)
    t0 = time.time()
    with watching():
        while not hung and time.time() - t0 < 10:
            time.sleep(0.05)
    return time.time() - t0


def test_a_rank_waiting_on_rank0_ends_the_launch_when_its_lock_heartbeat_stops_and_not_before(tmp_path, monkeypatch):
    """Rank 1's long wait watches rank 0's run-dir lock (a live holder process, heartbeat every 0.2 s): no
    verdict while it beats; SIGSTOP it and one line names its pid within train.lock_timeout_s (0.6 s)."""
    from align.train.guard import StepWatch
    from tests.test_runlock import _holder
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = tmp_path / "run"
    p = _holder(run, lifetime_s=0.6)
    try:
        w = StepWatch(str(run), 30.0, lock_timeout_s=0.6)
        hung = []
        w.on_hang = hung.append
        with w.rank0_alive("the shards"):
            time.sleep(2.0)                               # > 3 lock timeouts, the heartbeat moving
        assert hung == []
        took = _stop_until_named(p, hung, lambda: w.rank0_alive("the shards"))
        assert len(hung) == 1 and 0.6 <= took < 3, (hung, took)
        assert f"pid {p.pid}" in hung[0] and "stopped refreshing the run dir's lock" in hung[0]
        assert "rank 1 waited" in hung[0] and "the shards" in hung[0]
    finally:
        os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.wait()


def test_no_verdict_on_rank0_where_its_run_dir_is_not_seen_nor_on_rank0_itself(tmp_path, monkeypatch):
    """Ranks on hosts that do not share the run dir have no lock file to watch; rank 0 never watches itself."""
    from align.runlock import INFO_NAME
    from align.train.guard import StepWatch
    monkeypatch.setenv("WORLD_SIZE", "2")
    (tmp_path / "seen").mkdir()
    (tmp_path / "seen" / INFO_NAME).write_text('{"host": "h", "pid": 1, "heartbeat": 1.0}')    # never moves
    for rank, run in (("1", tmp_path / "unseen"), ("0", tmp_path / "seen")):
        monkeypatch.setenv("RANK", rank)
        w = StepWatch(str(run), 30.0, lock_timeout_s=0.1)
        hung = []
        w.on_hang = hung.append
        with w.rank0_alive("x"):
            time.sleep(0.5)
        assert hung == [], rank


def test_every_long_wait_of_a_step_watch_watches_rank0(tmp_path, monkeypatch):
    """share_object (the cache build), barrier (checkpoint writes), share (an evaluation) and any: each wait of
    a rank > 0 on the long-timeout group runs inside rank0_alive (the collectives stubbed: one process here)."""
    import contextlib
    import torch.distributed as dist
    from align.train.guard import StepWatch
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    w = StepWatch(str(tmp_path / "run"), 30.0)
    w._group = object()                                  # as after connect()
    inside, watched = [], []

    @contextlib.contextmanager
    def alive(what):
        watched.append(what)
        inside.append(True)
        yield
        inside.pop()

    def collective(name):
        def run(*a, **k):
            assert inside, f"{name} ran outside rank0_alive"
            watched.append(name)
        return run

    w.rank0_alive = alive
    for name in ("broadcast_object_list", "barrier", "broadcast", "all_reduce"):
        monkeypatch.setattr(dist, name, collective(name))
    assert w.share_object({"x": 1}) == {"x": 1}
    w.barrier()
    assert w.share(2.0) == 2.0
    w.any(False)
    assert watched[1::2] == ["broadcast_object_list", "barrier", "broadcast", "all_reduce"]
    assert "data.train table" in watched[0] and "checkpoint" in watched[2]


def _stepping_rank1(run):
    """A separate process with rank 1's watchdog, paused (as in a checkpoint write) until it is killed."""
    return start_python(f"""
        import time
        from align.train.guard import Watchdog
        dog = Watchdog({str(run)!r}, rank=1, world_size=2, timeout_s=0.5, poll_s=0.05).start(4)
        with dog.paused():
            print("started", flush=True)
            time.sleep(600)
    """, "started")


def test_rank0_waiting_on_the_others_ends_the_launch_when_one_is_stopped_and_not_before(tmp_path, monkeypatch):
    """Rank 0 in a long wait (the barrier of a checkpoint write) watches the other ranks' heartbeat files, which
    their watchdog threads rewrite every poll even while paused: a rank busy in its own part of the write is
    never named; SIGSTOP it and one line names its rank and pid within train.dist_timeout_s (0.5 s). Before,
    rank 0 waited there on the 24 h group for a stopped rank 1, silently."""
    from align.train.guard import StepWatch
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = tmp_path / "run"
    p = _stepping_rank1(run)
    try:
        w = StepWatch(str(run), 0.5)
        hung = []
        w.on_hang = hung.append
        w.dog = Watchdog(str(run), rank=0, world_size=2, timeout_s=0.5, on_hang=hung.append, poll_s=0.05)
        with w.dog.paused(), w.others_alive("a checkpoint write"):
            time.sleep(1.5)                                # > 3 timeouts, rank 1 alive (paused, not stopped)
        assert hung == []
        with w.dog.paused():
            took = _stop_until_named(p, hung, lambda: w.others_alive("a checkpoint write"))
        assert len(hung) == 1 and 0.5 <= took < 3, (hung, took)
        assert hung[0].startswith(f"rank 1 (host {socket.gethostname()} pid {p.pid}) stopped"), hung[0]
        assert "rank 0 waited" in hung[0] and "a checkpoint write" in hung[0] and "\n" not in hung[0]
    finally:
        os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.wait()


def test_every_long_wait_of_rank0_watches_the_other_ranks(tmp_path, monkeypatch):
    """The barrier of a checkpoint write (and the other long waits) of rank 0 runs inside ranks_alive."""
    import contextlib
    import torch.distributed as dist
    from align.train.guard import StepWatch
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    w = StepWatch(str(tmp_path / "run"), 30.0)
    w._group = object()
    inside = []

    @contextlib.contextmanager
    def alive(what):
        inside.append(what)
        yield

    w.ranks_alive = alive
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: None)
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: None)
    w.barrier()
    w.any(False)
    assert len(inside) == 2 and "checkpoint" in inside[0], inside


def test_after_the_last_step_the_watchdog_gives_no_verdict_but_keeps_writing_its_heartbeat(tmp_path, monkeypatch):
    """finish() (the final checkpoint and evaluation follow): no hang verdict, the heartbeat file still moves,
    so rank 0's last barrier can tell a stopped rank from a busy one."""
    from align.train.guard import StepWatch
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(StepWatch, "connect", lambda self: self)
    w = StepWatch(str(tmp_path), 0.3)
    hung = []
    w.on_hang = hung.append
    w.start(0)
    w.dog.poll_s = 0.05
    w.beat(1)
    w.finish()
    path = tmp_path / "heartbeat" / "rank-1.json"
    seen = set()
    for _ in range(20):
        time.sleep(0.05)
        seen.add(path.read_text())
    w.stop()
    assert hung == [] and len(seen) > 3, (hung, len(seen))


def test_a_collective_that_lost_its_peer_is_one_line_in_a_launch_and_unchanged_otherwise(tmp_path, monkeypatch):
    """Rank 1 SIGKILLed mid-checkpoint-write: rank 0 printed gloo's 30-line traceback ('Connection reset by peer')."""
    import pytest
    from align.train.guard import PeerLost, watch_steps
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                        "[127.0.0.1]:25290: Connection reset by peer. This is typically caused by ...")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PeerLost) as e:
        with watch_steps(str(tmp_path), 30.0):
            raise gloo
    assert str(e.value).startswith("rank 0 lost its connection to another rank (Connection reset by peer)")
    assert "\n" not in str(e.value) and e.value.exit_code == HUNG_EXIT
    with pytest.raises(RuntimeError, match="shape mismatch"):      # any other error passes unchanged
        with watch_steps(str(tmp_path), 30.0):
            raise RuntimeError("shape mismatch")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="Connection reset by peer"):
        with watch_steps(str(tmp_path), 30.0):
            raise gloo


def _collectives_worker(rank, world, init_file, out_path):
    """StepWatch's object and number collectives on a real 2-process gloo group; rank 0 saves what it got."""
    import torch
    import torch.distributed as dist

    from align.train.guard import StepWatch
    from align.train.metrics import mean_over_ranks
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    w = StepWatch(os.path.dirname(out_path), timeout_s=60).connect()
    mine = {"loss": 1.0 + 2 * rank, "loss/a-b": 4.0 * rank}
    got = {"gathered": w.gather_object({"rank": rank, "items": list(range(rank + 2)), "none": None}),
           "most": w.most(5 - 3 * rank), "any": [w.any(rank == 1), w.any(False)],
           "share": [w.share(2.5 if rank == 0 else 7.0), w.share(None if rank == 0 else 1.0)],
           "share_object": w.share_object({"from": rank}),
           "mean": mean_over_ranks(mine, w.gather_object(mine))}
    if rank == 0:
        torch.save(got, out_path)
    dist.destroy_process_group()


def test_the_step_watchs_collectives_on_two_gloo_processes_equal_their_plain_definitions(tmp_path):
    """gather_object: every rank's object in rank order; most: the max; any: or; share / share_object: rank 0's (its
    None as None); mean_over_ranks (the logged loss): the plain mean of the ranks' values."""
    from tests.losses.gloo import run_workers
    got = run_workers(_collectives_worker, tmp_path)
    assert got["gathered"] == [{"rank": r, "items": list(range(r + 2)), "none": None} for r in range(2)]
    assert got["most"] == max(5 - 3 * r for r in range(2)) == 5
    assert got["any"] == [True, False]
    assert got["share"] == [2.5, None] and got["share_object"] == {"from": 0}
    assert got["mean"] == {"loss": (1.0 + 3.0) / 2, "loss/a-b": (0.0 + 4.0) / 2}
