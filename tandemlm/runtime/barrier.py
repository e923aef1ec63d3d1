"""`Barrier`: turn many threads' one-at-a-time calls into batches.

Code written for one call at a time (a DSPy module calling its LM) runs in one thread per
example; each thread's call waits here until every thread still running has a call waiting (or
none arrives for `window_s`), and then they all go to the backend as one batch.

    barrier = Barrier(lambda requests: model.generate(requests))
    # in each of N worker threads:
    barrier.enter()
    try:
        result = barrier.submit(request)   # blocks until its batch is back
    finally:
        barrier.leave()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_WAITING = object()


class _Slot:
    __slots__ = ("item", "result", "error")

    def __init__(self, item: Any) -> None:
        self.item, self.result, self.error = item, _WAITING, None


class Barrier:
    """Batches the calls of the threads between `enter()` and `leave()`; see the module docstring.

    Args:
        send: runs one batch: a list of items -> a list of results, in order.
        window_s: how long waiting calls wait for a thread that is busy elsewhere (its own Python,
            a tool) before the calls already waiting go without it.
    """

    def __init__(self, send: Callable[[list[Any]], list[Any]], window_s: float = 0.05) -> None:
        self._send, self.window_s = send, window_s
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._active = 0
        self._in_flight = 0
        self._late = False
        #: sizes of the batches sent, in order (how well the calls batched)
        self.batches: list[int] = []

    def enter(self) -> None:
        with self._cond:
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()  # the waiting calls may now be all there is

    def submit(self, item: Any) -> Any:
        """Wait for `item`'s batch to run; its result (or the exception the batch raised)."""
        slot = _Slot(item)
        with self._cond:
            self._pending.append(slot)
            self._cond.notify_all()
            while slot.result is _WAITING and slot.error is None:
                if self._ready():
                    batch, self._pending, self._late = self._pending, [], False
                    self._in_flight = len(batch)
                    self._cond.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cond.acquire()
                        self._in_flight = 0
                        self._cond.notify_all()
                elif not self._cond.wait(self.window_s) and self._pending:
                    self._late = True  # nobody came for a whole window: go without them
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _ready(self) -> bool:
        """Whether the waiting calls should go now: no batch is running, and every thread still
        inside has a call waiting (or the window passed)."""
        if not self._pending or self._in_flight:
            return False
        return self._late or len(self._pending) >= self._active

    def _run(self, batch: list[_Slot]) -> None:
        self.batches.append(len(batch))
        try:
            results = self._send([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} calls got {len(results)} results")
        except Exception as exc:  # every call of the batch sees the failure
            for slot in batch:
                slot.error = exc
            return
        for slot, result in zip(batch, results, strict=True):
            slot.result = result
