"""One writer per directory: the lock a run (or a shard-writing job) holds on its output for its whole life.

Built on flufl.lock (GNU Mailman's lock): it takes the lock with link(2), which is atomic on NFS, where
flock(2) is not; it records the holder's host and pid; and each lock has a *lifetime* that the holder
refreshes (the heartbeat), after which any contender breaks it. That is what a requeued job on another
node needs. filelock was the other candidate: its FileLock is flock-based (unsafe on NFS) and its
SoftFileLock records no owner and never expires, so a SIGKILLed run would block its own requeue.

    with RunLock(run_dir, lifetime_s=300):        # raises DirectoryBusy with one line if a live run holds it
        ...                                       # a daemon thread refreshes the lock every lifetime/3

Taken over, with one line saying so: a lock whose holder ran on this host and whose pid is gone (a
SIGKILLed run: at once), and a lock whose heartbeat is older than its lifetime (another host: the
holder stopped refreshing). Beside the lock, `RUN/align.lock.json` says who holds it (host, pid,
since, command line, last heartbeat) for the refusal message and for people.

    created = missing_dirs(run_dir)   # before the lock makes run_dir: the folders this run creates
    remove_if_empty(created)          # after release: a run refused before its first file leaves no empty folder
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from align.errors import AlignError
from align.writes import write_text_whole

log = logging.getLogger("align")

LOCK_NAME = "align.lock"
INFO_NAME = "align.lock.json"
BUSY_WAIT_S = 3.0     # how long acquire() tries a held lock before refusing: flufl retries every 0.01-2 s


def is_lock_file(name: str) -> bool:
    """A file the lock itself keeps in the directory (the lock, flufl's claim files `align.lock|host|pid|n`,
    the holder info and its temporary copies): not the user's, never a reason to call a directory non-empty."""
    return name == LOCK_NAME or name.startswith(LOCK_NAME + "|") or name.startswith(INFO_NAME)


def live_holder(directory: str) -> str | None:
    """Who holds `directory`'s lock now ("host H pid P since ..."), or None when nobody live does: no lock, a
    holder on this host that is gone, or a lock past its lifetime (its heartbeat stopped)."""
    from flufl.lock import Lock, LockState

    path = os.path.join(os.path.abspath(directory), LOCK_NAME)
    if not os.path.exists(path):
        return None
    lock = Lock(path)
    try:
        if lock.state in (LockState.unlocked, LockState.stale) or lock.expiration.timestamp() < time.time():
            return None
    except OSError:           # released meanwhile
        return None
    return describe(read_holder(os.path.join(os.path.abspath(directory), INFO_NAME)))


def read_holder(info_path: str) -> dict:
    """The holder info a lock writes beside itself (host, pid, since, command, heartbeat); {} if none."""
    try:
        with open(info_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def heartbeat_mark(directory: str):
    """What changes while the holder of `directory`'s lock is alive: (its info file's heartbeat, the file's
    mtime in ns), or None when there is no info file (no holder, or a directory this host does not see). Compare
    two marks for a change, never a mark with this host's clock: the holder's clock may be another host's."""
    path = os.path.join(os.path.abspath(directory), INFO_NAME)
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return None
    return read_holder(path).get("heartbeat"), mtime


COMMAND_CHARS = 80      # of the holder's command line in a refusal (the whole of it is in the info file)


def describe(info: dict) -> str:
    """A holder in words: "host H pid P since 2026-12-02 19:00:00, last heartbeat 3 s ago (align train r.yaml)"."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"])) if "since" in info else "?"
    beat = f", last heartbeat {time.time() - info['heartbeat']:.0f} s ago" if "heartbeat" in info else ""
    command = str(info.get("command", "?"))
    if len(command) > COMMAND_CHARS:        # a launcher's command line can run to pages; the line stays one line
        command = command[:COMMAND_CHARS - 3] + "..."
    return f"host {info.get('host', '?')} pid {info.get('pid', '?')} since {since}{beat} ({command})"


class DirectoryBusy(AlignError):
    """Another live process holds the directory's lock."""


class RunLock:
    """The lock on `directory` (see module docstring). `what` names the holder kind in messages."""

    def __init__(self, directory: str, *, lifetime_s: float = 300.0, what: str = "run"):
        from flufl.lock import Lock

        self.directory = os.path.abspath(directory)
        self.lifetime_s = float(lifetime_s)
        self.what = what
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise AlignError(f"{directory}: exists and is not a folder; the {what} needs a folder there")
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            raise AlignError(f"{directory}: cannot create the {what}'s folder ({e.strerror or e})") from None
        self._lock = Lock(os.path.join(self.directory, LOCK_NAME), lifetime=timedelta(seconds=self.lifetime_s))
        self._info_path = os.path.join(self.directory, INFO_NAME)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: str | None = None   # the line said when a stale lock was taken over

    # ------------------------------------------------------------------ holder info
    def holder(self) -> dict:
        """Who holds (or last held) the lock, from the info file; {} when none was written."""
        return read_holder(self._info_path)

    def _write_info(self, started: float) -> None:
        info = {"host": self._lock.hostname, "pid": os.getpid(), "since": started, "heartbeat": time.time(),
                "command": " ".join(sys.argv)}
        # whole or not at all; a full disk is one line naming this file (a write's OSError names no file)
        write_text_whole(self._info_path, json.dumps(info), kept="nothing else was written")

    # ------------------------------------------------------------------ take / release
    def _break_if_stale(self) -> None:
        """Remove a lock whose holder is provably gone: flufl's `stale` state (this host, pid not running)."""
        from flufl.lock import LockState

        if self._lock.state != LockState.stale:
            return
        try:
            content = open(self._lock.lockfile).read()
            host, pid = self._lock.details[:2]
        except Exception:   # released meanwhile: nothing to break
            return
        info = self.holder()
        self.took_over = (f"{self.directory}: taking over the lock of a {self.what} that is gone "
                          f"({describe(info) if info else f'host {host} pid {pid}'}, no such process)")
        try:
            if open(self._lock.lockfile).read() == content:   # nobody took it meanwhile
                os.unlink(self._lock.lockfile)
        except OSError:
            pass

    def acquire(self) -> "RunLock":
        from flufl.lock import TimeOutError

        self._break_if_stale()
        info = self.holder()
        expired = "heartbeat" in info and time.time() - info["heartbeat"] > self.lifetime_s
        # flufl breaks a lock whose lifetime has passed on its own; BUSY_WAIT_S covers its retry interval.
        try:
            self._lock.lock(timeout=timedelta(seconds=BUSY_WAIT_S))
        except TimeOutError:
            raise DirectoryBusy(
                f"{self.directory}: another {self.what} holds this directory ({describe(info)}); "
                f"wait for it to end, or use another output directory") from None
        if expired and not self.took_over:
            self.took_over = (f"{self.directory}: taking over the lock of a {self.what} whose heartbeat stopped "
                              f"({describe(info)})")
        if self.took_over:
            log.warning(self.took_over)
        started = time.time()
        try:
            self._write_info(started)
        except BaseException:          # e.g. a full disk: the lock is not kept by a run that never started
            self._lock.unlock(unconditionally=True)
            raise
        self._thread = threading.Thread(target=self._heartbeat, args=(started,), daemon=True,
                                        name="align-lock-heartbeat")
        self._thread.start()
        return self

    def _heartbeat(self, started: float) -> None:
        every = max(0.05, min(30.0, self.lifetime_s / 3))
        while not self._stop.wait(every):
            try:
                self._lock.refresh()
                self._write_info(started)
            except Exception as exn:  # a full disk or a lost mount must not kill the run from a thread
                log.warning("%s: could not refresh the lock (%s)", self.directory, exn)
                try:   # a full disk: a new mtime needs no free block, so the holder still shows it is alive
                    os.utime(self._info_path)
                except OSError:
                    pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            os.unlink(self._info_path)
        except OSError:
            pass
        try:
            self._lock.unlock(unconditionally=True)
        except Exception:
            pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def missing_dirs(path) -> list:
    """`path` and those of its parents that do not exist yet, deepest first (what a run creates)."""
    path, out = Path(path), []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_if_empty(dirs: list) -> None:
    """Folders this run created, removed again when it ends having written nothing there (a recipe refused
    before its first file left an empty runs/NAME behind), deepest first; stops at the first that holds a file."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return
