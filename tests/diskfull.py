"""A full disk induced in process: files opened for writing whose path holds a marker share `free` bytes; the write
that passes them writes what fits, then raises ENOSPC (as the OS does). Undo (monkeypatch.undo) frees the space.

    disk = full_disk(monkeypatch, str(tmp_path / "out"), free=1000)     # every writer under out/ shares 1000 bytes
    ...                                                                  # the command: one line, exit 74
    monkeypatch.undo()                                                   # space freed: the rerun completes

It patches builtins.open (and io.open, pathlib's), the lowest-level write most writers share (json, csv, tar via
webdataset, np.save to a file, matplotlib's savefig to a file); align.writes.atomic_write's temporary file goes
through it too. Writes in other processes (shard workers, a child `align`) are not affected.
"""
import builtins
import errno
import io
import os


class Disk:
    """The bytes left (`free`), and the paths whose write failed (`failed`)."""

    def __init__(self, free: int):
        self.free, self.failed = free, []


class _FullFileIO(io.FileIO):
    def __init__(self, path, mode, disk: Disk):
        super().__init__(path, mode)
        self.disk = disk

    def write(self, data):
        data = bytes(data)
        if len(data) <= self.disk.free:
            self.disk.free -= len(data)
            return super().write(data)
        fits, self.disk.free = data[:self.disk.free], 0
        super().write(fits)                                      # what fitted reached the disk: a partial file
        self.disk.failed.append(os.fspath(self.name))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full_disk(monkeypatch, marker: str, free: int = 0) -> Disk:
    """builtins.open patched: writing (w/a/x/+) a path containing `marker` counts against `free` bytes."""
    real = builtins.open
    disk = Disk(free)

    def open_(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
        if not (isinstance(file, (str, os.PathLike)) and marker in os.fspath(file) and set(mode) & set("wax+")):
            return real(file, mode, buffering, encoding, errors, newline, closefd, opener)
        raw = _FullFileIO(file, mode.replace("t", ""), disk)
        if "b" in mode and buffering == 0:
            return raw                                           # (a buffer made and dropped would close it)
        buffered = io.BufferedRandom(raw) if "+" in mode else io.BufferedWriter(raw)
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors, newline=newline)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)                       # pathlib's write_text/write_bytes open with it
    return disk


def files_under(root) -> list:
    """Every file under `root`, relative, sorted (lock files included: a test names what it ignores)."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
