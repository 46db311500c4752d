"""What clusters do to a run: preemption signals, and a peer that stops making progress.

Preemption: schedulers send SIGTERM (SLURM, Kubernetes, spot instances; SLURM's `--signal` sends
SIGUSR1 ahead of the end) and SIGKILL after a grace period. `Preemption` turns SIGTERM/SIGUSR1 into
a flag that the loop reads between steps; `agreed()` all-reduces it so that every rank stops after
the same step, writes one checkpoint and exits with PREEMPTED_EXIT (75, EX_TEMPFAIL: "try again").
A second signal while the checkpoint is written changes nothing: the write finishes, and the atomic
rename keeps the previous checkpoint whole if SIGKILL comes first.

A hung peer: a rank stopped by a stuck NFS read or a deadlocked data worker blocks every other rank
in the next collective, silently, until the process group's timeout. `Watchdog` is a thread on every
rank: each finished step writes `RUN/heartbeat/rank-N.json` (step, time, host); when this rank has
finished no step for `timeout_s`, it names the rank whose heartbeat is oldest (the one that stopped),
with its host and last step, in one line, and ends the process with HUNG_EXIT so that the launcher
tears the job down and a scheduler can restart it (`resume=auto` carries on from the last checkpoint).
Each rank also notes when it is at a collective (`fetched`: it holds its next batch; `collective()`): a rank
stalled there waits for the others, so the culprit is the rank furthest behind (step, then not at a
collective, then time). These marks stay in memory; the watchdog thread writes them every poll.

`StepWatch` is what the loop holds (multi-process runs; inert with one process): the watchdog, paused
through legitimately long work that is not a step (the first step's warm-up and loader start, evaluation,
checkpoint writes), and a second, gloo process group with a long timeout for the waits around work that
only some ranks do (rank 0 evaluates or writes the weights while the others wait). The default group's
collective timeout is train.dist_timeout_s, so such a wait on it would end the run falsely. A rank 0 that
stops during such a wait (SIGSTOP, a frozen node) would then hold the others for a day: while they wait, they
watch rank 0's run-dir lock (align.runlock), whose heartbeat thread refreshes it every train.lock_timeout_s / 3;
one that has not moved for train.lock_timeout_s (by this rank's own clock, so clock skew between hosts cannot
matter) ends the launch with one line, as a hung step does. Rank 0, waiting there for the others' parts of a
checkpoint, watches their heartbeat files in turn: each watchdog thread rewrites its file every poll, paused or
not, so one that has not changed for train.dist_timeout_s is a stopped process or a frozen node (ranks_alive).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from typing import Callable, Optional

from align.errors import AlignError

PREEMPTED_EXIT = 75      # EX_TEMPFAIL: preempted, checkpoint written, run the same command again
HUNG_EXIT = 70           # a rank made no progress for train.dist_timeout_s; resume=auto continues
HEARTBEAT_DIR = "heartbeat"
LONG_WAIT_S = 24 * 3600  # waits for one rank's evaluation or checkpoint write (StepWatch.barrier / any)


class Preemption:
    """SIGTERM / SIGUSR1 -> a flag read between steps (handlers restored by `restore`)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signal: Optional[int] = None
        self.peer_signal: Optional[int] = None    # another rank's, learnt in `agreed`
        self._previous = {}

    def install(self) -> "Preemption":
        if self._previous or threading.current_thread() is not threading.main_thread():
            return self          # installed already; signal handlers can only be set from the main thread
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signum

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def agreed(self, reduce_max: Optional[Callable] = None) -> bool:
        """True on every rank when any rank was signalled: `reduce_max(int) -> int` is the all-reduce (of the
        signal numbers, so that a rank that got none can say which one stopped the run)."""
        mine = int(self.signal or 0)
        got = reduce_max(mine) if reduce_max is not None else mine
        if got and not mine:
            self.peer_signal = got
        return bool(got)

    def name(self) -> str:
        if self.signal:
            return signal.Signals(self.signal).name
        if self.peer_signal:
            return f"{signal.Signals(self.peer_signal).name} to another rank"
        return "none"


class Preempted(AlignError):
    """The run stopped at a step boundary on SIGTERM/SIGUSR1, its checkpoint written (exit PREEMPTED_EXIT)."""


@contextlib.contextmanager
def catch_preemption():
    """Preemption installed for the block, the previous handlers restored after it.

    In a launch, ranks > 0 install it only when the loop calls `install()` once the process group exists:
    until then SIGTERM ends them at once (they hold nothing yet). Caught, it would leave a rank blocked in
    the rendezvous, e.g. for a rank 0 that was refused the run dir's lock, until the launcher's SIGKILL."""
    p = Preemption()
    if int(os.environ.get("RANK", "0")) == 0:
        p.install()
    try:
        yield p
    finally:
        p.restore()


def all_ranks_max(flag: int) -> int:
    """MAX of an int over the process group (the flag itself with one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    backend = dist.get_backend()
    t = torch.tensor([flag], device="cuda" if backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


class Watchdog:
    """Per-rank progress watchdog (see module docstring). `beat(step)` after each finished step."""

    def __init__(self, run_dir: str, *, rank: int, world_size: int, timeout_s: float,
                 on_hang: Callable[[str], None] = None, poll_s: Optional[float] = None):
        self.dir = os.path.join(run_dir, HEARTBEAT_DIR)
        os.makedirs(self.dir, exist_ok=True)
        self.rank, self.world_size = rank, world_size
        self.timeout_s = float(timeout_s)
        self.on_hang = on_hang or _exit_hung
        self.poll_s = poll_s if poll_s is not None else max(0.05, min(5.0, self.timeout_s / 10))
        self.host = socket.gethostname()
        self._last = time.time()          # when this rank last finished a step (the verdict's clock)
        self._ticks = 0                   # the thread's polls, in the heartbeat: "this process is not stopped"
        self._step = 0
        self._waiting = False             # at a collective: if it stalls here, it waits for another rank
        self._since = self._last          # when (step, waiting) last changed: the heartbeat's time
        self._io = threading.Lock()
        self._paused = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _path(self, rank: int) -> str:
        return os.path.join(self.dir, f"rank-{rank}.json")

    def beat(self, step: int) -> None:
        """Step `step` is finished (written at once: one small file a step)."""
        self._step, self._waiting, self._last = step, False, time.time()
        self._since = self._last
        self._flush()

    def waiting(self, on: bool = True) -> None:
        """This rank is (on) or no longer is at a collective. Kept in memory; the watchdog thread writes it
        within poll_s, so a rank's marks cost nothing in its step."""
        self._waiting, self._since = on, time.time()

    def fetched(self) -> None:
        """This rank holds the batch of its next step: from here on it waits for the others, if anyone."""
        self.waiting(True)

    @contextlib.contextmanager
    def collective(self):
        """Waiting for the other ranks during the block (e.g. the all-reduce that agrees on preemption)."""
        self.waiting(True)
        try:
            yield
        finally:
            self.waiting(False)

    def _flush(self) -> None:
        with self._io:
            tmp = f"{self._path(self.rank)}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"rank": self.rank, "host": self.host, "pid": os.getpid(), "step": self._step,
                           "waiting": self._waiting, "time": self._since, "alive": self._ticks}, f)
            os.replace(tmp, self._path(self.rank))

    @contextlib.contextmanager
    def paused(self):
        """No verdict during the block (long work that is not a step); the clock restarts after it."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self._last = time.time()

    def start(self, step: Optional[int] = None) -> "Watchdog":
        self.beat(self._step if step is None else step)
        self._thread = threading.Thread(target=self._watch, daemon=True, name="align-watchdog")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def culprit(self) -> str:
        """One line naming the rank furthest behind: lowest step, then not waiting at a collective, then oldest."""
        beats = []
        for r in range(self.world_size):
            try:
                with open(self._path(r)) as f:
                    beats.append(json.load(f))
            except (OSError, ValueError):
                beats.append({"rank": r, "host": "?", "step": "?", "time": 0.0})
        worst = min(beats, key=lambda b: (b["step"] if isinstance(b["step"], int) else -1,
                                          b.get("waiting", False), b["time"]))
        age = time.time() - worst["time"] if worst["time"] else float("inf")
        return (f"rank {worst['rank']} on host {worst['host']} made no progress for {age:.0f} s "
                f"(last step {worst['step']}); rank {self.rank} waited {time.time() - self._last:.0f} s "
                f"(train.dist_timeout_s={self.timeout_s:g}); stopping the launch, resume=auto continues")

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._ticks += 1          # every poll, paused or not: rank 0 waiting on this rank watches it
            try:
                self._flush()
            except OSError:           # a full disk or a lost mount: the verdict below still stands
                pass
            if not self._paused and time.time() - self._last > self.timeout_s:
                self.on_hang(self.culprit())
                return


def _exit_hung(line: str, cleanup: Optional[Callable[[], None]] = None) -> None:
    import sys

    print(f"align: error: {line}", file=sys.stderr, flush=True)
    if cleanup is not None:
        try:
            cleanup()       # e.g. release the run dir's lock, as an ordinary error would
        except Exception:
            pass
    os._exit(HUNG_EXIT)     # the main thread is stuck in a collective: only a hard exit ends it


class StepWatch:
    """The loop's guard against a hung peer (module docstring); every method is a no-op with one process.

    Made before the process group (it only reads RANK/WORLD_SIZE); `connect` once the group exists (the
    long-timeout group: waits on one rank's own work, e.g. the shards rank 0 writes before the first step);
    `start` before the first step, after which that step runs paused (warm-up, loader start) and each
    finished step beats.
    """

    def __init__(self, run_dir: str, timeout_s: float, cleanup: Optional[Callable[[], None]] = None,
                 lock_timeout_s: float = 300.0):
        self.run_dir, self.timeout_s, self.lock_timeout_s = run_dir, timeout_s, lock_timeout_s
        self.on_hang = lambda line: _exit_hung(line, cleanup)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.dog: Optional[Watchdog] = None
        self._group = None
        self._warmup = contextlib.nullcontext()
        self._final = None

    def connect(self) -> "StepWatch":
        """The long-timeout group, once the process group exists (every rank calls it, in the same place):
        for waits on one rank's own work before the first step too (share_object)."""
        if self.world > 1 and self._group is None:
            import torch.distributed as dist
            self._group = dist.new_group(backend="gloo", timeout=timedelta(seconds=LONG_WAIT_S))
        return self

    def start(self, step: int) -> "StepWatch":
        if self.world > 1:
            self.connect()
            self.dog = Watchdog(self.run_dir, rank=self.rank, world_size=self.world, timeout_s=self.timeout_s,
                                on_hang=self.on_hang).start(step)
            self._warmup = self.dog.paused()
            self._warmup.__enter__()        # until the first step of this process is finished
        return self

    def fetched(self) -> None:
        if self.dog is not None:
            self.dog.fetched()

    def collective(self):
        return self.dog.collective() if self.dog is not None else contextlib.nullcontext()

    def beat(self, step: int) -> None:
        if self.dog is not None:
            self._end_warmup()
            self.dog.beat(step)

    def _end_warmup(self) -> None:
        if self._warmup is not None:
            self._warmup.__exit__(None, None, None)
            self._warmup = None

    def paused(self):
        return self.dog.paused() if self.dog is not None else contextlib.nullcontext()

    def barrier(self) -> None:
        """Every rank here, however long one rank's own work took (not bound by train.dist_timeout_s)."""
        import torch.distributed as dist
        if self._group is not None:
            with self.others_alive("the others' own work (their part of a checkpoint, an evaluation)"):
                dist.barrier(group=self._group)
        elif self.world > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()           # not started yet: the default group

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any: after work that only some ranks did (long timeout)."""
        return bool(self.most(int(bool(flag))))

    def most(self, value: int) -> int:
        """The largest of the ranks' `value`s on every rank (a barrier too), however long the others' own work took:
        how a checkpoint write learns that some rank failed its part (align.train.checkpoint)."""
        if self._group is None:
            return all_ranks_max(int(value))      # not started: the default group, or one process
        import torch
        import torch.distributed as dist
        t = torch.tensor([int(value)])
        with self.others_alive("the other ranks' own work"):
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._group)
        return int(t.item())

    def share(self, value: Optional[float]) -> Optional[float]:
        """Rank 0's number (None: none) on every rank, over the long-timeout group: a result only rank 0 computed."""
        if self._group is None:
            return value
        import torch
        import torch.distributed as dist
        t = torch.tensor([float("nan") if value is None else float(value)], dtype=torch.float64)
        with self.others_alive("a result only rank 0 computes (an evaluation)"):
            dist.broadcast(t, src=0, group=self._group)
        x = float(t.item())
        return None if x != x else x

    def share_object(self, obj):
        """Rank 0's picklable `obj` on every rank, however long rank 0 took to make it (after connect)."""
        if self._group is None:
            return obj
        import torch.distributed as dist
        box = [obj]
        with self.others_alive("what rank 0 makes alone (e.g. the shards of a data.train table)"):
            dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def gather_object(self, obj) -> Optional[list]:
        """Every rank's picklable `obj`, in rank order, on rank 0 (None on the others), however long rank 0's own
        work before it took (its final evaluation): the end summary's counts of the whole launch."""
        if self._group is None:
            return [obj]
        import torch.distributed as dist
        box = [None] * self.world if self.rank == 0 else None
        with self.others_alive("the end summary's counts"):
            dist.gather_object(obj, box, dst=0, group=self._group)
        return box

    def others_alive(self, what: str):
        """Around a long wait on the long-timeout group: ranks > 0 watch rank 0 (rank0_alive), rank 0 watches
        the others (ranks_alive)."""
        return self.ranks_alive(what) if self.rank == 0 else self.rank0_alive(what)

    def rank0_alive(self, what: str):
        """Ranks > 0, during a long wait on rank 0: a thread that ends the launch with one line (on_hang) when
        rank 0's run-dir lock heartbeat (RUN/align.lock.json) has not changed for lock_timeout_s. Nothing on
        rank 0, and nothing to watch where the ranks do not share the run dir (no lock info file here)."""
        if self.rank == 0 or self.world == 1:
            return contextlib.nullcontext()
        from align.runlock import INFO_NAME, heartbeat_mark, read_holder

        def line(_rank, stalled_s, waited_s):
            info = read_holder(os.path.join(self.run_dir, INFO_NAME))
            return (f"rank 0 (host {info.get('host', '?')} pid {info.get('pid', '?')}) stopped refreshing the run "
                    f"dir's lock: no heartbeat for {stalled_s:.0f} s (train.lock_timeout_s={self.lock_timeout_s:g}) "
                    f"while rank {self.rank} waited {waited_s:.0f} s for {what}; it is stopped or its node is frozen; "
                    f"stopping the launch, resume=auto continues")
        return self._stall_watch({0: lambda: heartbeat_mark(self.run_dir)}, self.lock_timeout_s, line)

    def ranks_alive(self, what: str):
        """Rank 0, during a long wait on the others (their parts of a checkpoint: FSDP shards, RNG, data position):
        one line (on_hang) naming a rank whose watchdog thread has written no heartbeat for train.dist_timeout_s
        (a SIGSTOPped process or a frozen node: its threads stop too; long work of its own does not stop them).
        Nothing before the watchdog starts, nor for a rank whose heartbeat file this host does not see."""
        if self.rank != 0 or self.world == 1 or self.dog is None:
            return contextlib.nullcontext()

        def mark(r):
            try:
                with open(self.dog._path(r)) as f:
                    return f.read()
            except OSError:
                return None

        def line(r, stalled_s, waited_s):
            try:
                b = json.loads(mark(r) or "{}")
            except ValueError:
                b = {}
            return (f"rank {r} (host {b.get('host', '?')} pid {b.get('pid', '?')}) stopped: its watchdog wrote no "
                    f"heartbeat for {stalled_s:.0f} s (train.dist_timeout_s={self.timeout_s:g}) while rank 0 waited "
                    f"{waited_s:.0f} s for {what}; it is stopped or its node is frozen; stopping the launch, "
                    f"resume=auto continues")
        return self._stall_watch({r: (lambda r=r: mark(r)) for r in range(1, self.world)}, self.timeout_s, line)

    @contextlib.contextmanager
    def _stall_watch(self, marks: dict, limit_s: float, line: Callable):
        """A thread for the block: `marks[rank]()` read every poll; when one has not changed for limit_s (by this
        rank's clock: the writer's may be another host's), on_hang(line(rank, stalled s, waited s)). None: unseen."""
        stop = threading.Event()
        poll = max(0.05, min(5.0, limit_s / 10))
        waited_from = time.time()

        def watch() -> None:
            seen = {r: (None, time.time()) for r in marks}   # each rank's last mark, and when it last changed
            while not stop.wait(poll):
                for r, read in marks.items():
                    mark = read()
                    if mark is None or mark != seen[r][0]:
                        seen[r] = (mark, time.time())
                    elif time.time() - seen[r][1] > limit_s:
                        self.on_hang(line(r, time.time() - seen[r][1], time.time() - waited_from))
                        return

        t = threading.Thread(target=watch, daemon=True, name="align-peer-watch")
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(timeout=poll + 5)

    def finish(self) -> None:
        """The steps are over: no verdict from here on (the final checkpoint, an evaluation), while the watchdog
        thread still writes this rank's heartbeat, which rank 0's last waits watch (ranks_alive)."""
        if self.dog is not None:
            self._end_warmup()
            self._final = self.dog.paused()     # held (a dropped generator would end the pause at once)
            self._final.__enter__()             # for good: `stop` ends the thread

    def stop(self) -> None:
        if self.dog is not None:
            self.dog.stop()
            self.dog = None


def collective_timeout_s(dist_timeout_s: float) -> float:
    """The process group's timeout: a little longer than the watchdog's, so that its one line comes first."""
    return dist_timeout_s + min(60.0, dist_timeout_s)


class PeerLost(AlignError):
    """A collective failed because another rank is gone (SIGKILL, out of memory, a lost node)."""

    exit_code = HUNG_EXIT


# How gloo and NCCL word a collective whose peer process is gone.
PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited")


@contextlib.contextmanager
def watch_steps(run_dir: str, timeout_s: float, cleanup: Optional[Callable[[], None]] = None,
                lock_timeout_s: float = 300.0):
    """A StepWatch for the block, stopped when it ends, normally or by an error. In a multi-process launch, a
    collective that failed because another rank died is one line (PeerLost), not the backend's traceback."""
    w = StepWatch(run_dir, timeout_s, cleanup, lock_timeout_s)
    try:
        yield w
    except RuntimeError as exn:           # torch.distributed's DistError family
        word = next((g for g in PEER_GONE if g in str(exn)), None)
        if w.world == 1 or word is None:
            raise
        raise PeerLost(f"rank {w.rank} lost its connection to another rank ({word}): that rank died (killed, out "
                       f"of memory, or its node was lost; the launcher's report names it); resume=auto continues "
                       f"from the last complete checkpoint") from None
    finally:
        w.stop()
