"""The training process's receiving side of the workers' items: the receiver thread and the per-worker hold."""
import threading
import time

import pytest
import torch

from align.data.stream.keys import EPOCH, IDLE, WORKER
from align.data.stream.receive import Items, Receiver


def _items(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise ValueError("decoder blew up")
        yield {"i": i}


def test_receiver_hands_over_items_in_order_then_the_end_or_the_error():
    r = Receiver(_items(5))
    r.start()
    assert [r.get()["i"] for _ in range(5)] == list(range(5)) and r.get() is None
    r.join(5)
    assert not r.is_alive()
    bad = Receiver(_items(5, fail_at=2))
    bad.start()
    assert [bad.get()["i"] for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="decoder blew up"):    # raised on the taking thread, as torch's would be
        bad.get()


def test_a_stopped_receiver_ends_and_lets_its_iterator_go_even_with_a_full_queue():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield {"i": i}
                i += 1
        finally:
            closed.set()

    r = Receiver(endless(), depth=2)
    r.start()
    deadline = time.monotonic() + 5
    while r.q.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.q.qsize() == 2 and r.is_alive()        # full: it waits, reading no further
    r.stop()
    r.join(5)
    assert not r.is_alive()
    del r
    import gc
    gc.collect()
    assert closed.wait(5)                              # the iterator was dropped (a DataLoader's would shut down)


@pytest.mark.parametrize("threaded", [False, True])
def test_items_hold_other_workers_and_the_next_epoch_until_their_turn(threaded):
    # arrival order: worker 1 first, then epoch 1 of worker 0 before epoch 0 of worker 0, with IDLE answers
    arrive = [{EPOCH: 0, WORKER: 1, "n": "a"}, {IDLE: True}, {EPOCH: 1, WORKER: 0, "n": "b"},
              {EPOCH: 0, WORKER: 0, "n": "c"}, {EPOCH: 1, WORKER: 1, "n": "d"}]
    gate = torch.tensor([0, 1], dtype=torch.int64)
    items = Items(iter(arrive), gate, ahead_cap=1, threaded=threaded)
    assert items.take(0, 0)["n"] == "c"
    assert gate.tolist() == [0, 0]                     # one of epoch 1 held: the cap, so the workers wait
    assert items.take(0, 1)["n"] == "a"
    items.open_gate(1)
    assert gate.tolist() == [1, 1]
    assert items.take(1, 0)["n"] == "b" and items.take(1, 1)["n"] == "d" and items.ahead_max == 1
    with pytest.raises(RuntimeError, match="the workers ended before logical worker 0's epoch 2"):
        items.take(2, 0)
    items.close()
