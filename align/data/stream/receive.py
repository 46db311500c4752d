"""The training process's side of the data workers' items (align.data.stream.loader): received, held, in order.

    torch DataLoader iterator (the workers' items, in the order they arrive)
      -> [with workers] a receiver thread takes each item off torch's queue: the unpickling and the shared-memory
         handshake of its batch (~1 ms a batch) happen beside the training step, not in the loop's wait
      -> `Items.take(epoch, lw)`: logical worker lw's next item of that epoch; items of other workers or of the
         next epoch that come first are held, and the workers' gate (align.data.stream.worker.may_send) says
         whether more of the next epoch may come

With 0 workers there is no thread: the samples are decoded inside `next()`, which must run on the training
thread (its RNG save/restore, align.data.stream.decode.rng_preserving).
"""
from __future__ import annotations

import queue
import threading
from collections import deque

from align.data.stream.keys import EPOCH, IDLE, WORKER

# Items the receiver holds ready beyond torch's own prefetch queue.
RECEIVE_DEPTH = 2


class Receiver(threading.Thread):
    """Takes a DataLoader iterator's items on its own thread into a queue of `depth` (an error, or the end of
    the iterator, travels the same way); `stop()` lets it end and drop the iterator, which shuts its workers."""

    def __init__(self, items, depth: int = RECEIVE_DEPTH):
        super().__init__(name="align-data-receiver", daemon=True)
        self._items, self.q, self._halt = items, queue.Queue(depth), threading.Event()

    def run(self) -> None:
        try:
            for item in self._items:
                if IDLE not in item and not self._put(("item", item)):
                    return
                del item                       # a batch handed out is freed by its consumer, not here later
            self._put(("end", None))
        except BaseException as exn:           # e.g. torch's "DataLoader worker ... exited unexpectedly"
            self._put(("error", exn))
        finally:
            self._items = None                 # the iterator goes (its workers shut down) with this thread

    def _put(self, entry) -> bool:
        while not self._halt.is_set():
            try:
                self.q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def get(self):
        """The next item, or None at the end; re-raises the iterator's error here."""
        kind, value = self.q.get()
        if kind == "error":
            raise value
        return value

    def stop(self) -> None:
        self._halt.set()


class Items:
    """One DataLoader iterator over a plan (received on a Receiver thread when `threaded`), and the items it
    delivered before their turn.

    `take(epoch, lw)` returns logical worker `lw`'s next item of `epoch`.  Items of other workers or of the
    next epoch that arrive first are held; the gate tells the workers (align.data.stream.worker.may_send)
    whether the next epoch's items may keep coming (fewer than `ahead_cap` held)."""

    def __init__(self, items, gate, ahead_cap: int, threaded: bool):
        self.gate, self.ahead_cap = gate, ahead_cap
        self.receiver = Receiver(items) if threaded else None
        self.items = None if threaded else items
        if self.receiver is not None:
            self.receiver.start()
        self.held: dict[tuple[int, int], deque] = {}
        self.ahead = 0               # held items of later epochs than the one being taken
        self.ahead_max = 0           # the most ever held (tests check the gate bounds it)

    def _next(self):
        if self.receiver is not None:
            return self.receiver.get()
        while True:
            item = next(self.items, None)
            if item is None or IDLE not in item:
                return item

    def take(self, epoch: int, lw: int) -> dict:
        q = self.held.get((epoch, lw))
        while not q:
            item = self._next()
            if item is None:
                raise RuntimeError(f"data loader: the workers ended before logical worker {lw}'s epoch {epoch} did")
            key = (item[EPOCH], item[WORKER])
            self.held.setdefault(key, deque()).append(item)
            if key[0] > epoch:
                self.open_gate(epoch)
            q = self.held.get((epoch, lw))
        item = q.popleft()
        if not q:
            del self.held[(epoch, lw)]
        return item

    def open_gate(self, epoch: int) -> None:
        """Tell the workers which epoch is being taken, and whether more of the next may come."""
        self.ahead = sum(len(q) for (e, _), q in self.held.items() if e > epoch)
        self.ahead_max = max(self.ahead_max, self.ahead)
        if self.gate is not None:
            self.gate[0], self.gate[1] = epoch, int(self.ahead < self.ahead_cap)

    def finish(self):
        """This epoch was the iterator's last: the thread that lets it run to its end (torch then joins the
        workers, ~50 ms, off the training thread), or None when that was done here (0 workers)."""
        if self.receiver is not None:
            return self.receiver                  # it runs to the iterator's end by itself
        for _ in self.items:
            pass
        return None

    def close(self) -> None:
        """Drop the iterator now (mid-stream): the receiver stops at its next item or within 0.1 s."""
        if self.receiver is not None:
            self.receiver.stop()
        self.items = None
