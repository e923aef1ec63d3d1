"""Progress inside a batch: what the work in flight is doing, for whoever shows it.

A long batch (64 examples through one `model.generate`) finishes all at once; to tell a user it
is moving, the executor says which stage and node runs and backends say how far their calls
got (the `hf` backend: microbatch and token step; the HTTP backend: requests answered). They
call `report(text)`; `evaluate`'s progress bar listens with `listening(callback)`:

    with progress.listening(lambda text: print(text)):
        pipeline.batch(examples)

With no listener, `report` does nothing. The listener is a context variable, so it reaches the
executor's per-model threads (they run in copies of the caller's context) and never another
caller's work.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str], None]

_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar(
    "tandemlm_progress", default=None)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every `report` made in this context (and threads copying it) to `listener`."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def active() -> bool:
    """Whether anything listens (so callers can skip building texts nobody reads)."""
    return _LISTENER.get() is not None


def report(text: str) -> None:
    """Tell the listener, if any, what the work in flight is doing; a failing listener is
    ignored (showing progress never fails the work)."""
    listener = _LISTENER.get()
    if listener is not None:
        try:
            listener(text)
        except Exception:  # a display problem must not sink a batch
            pass


class Throttle:
    """Passes at most one report per `every_s` seconds (and always the first), so a per-token
    hook costs a clock read, not a redraw."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self._last = every_s, float("-inf")

    def __call__(self, text: Callable[[], str]) -> None:
        now = time.perf_counter()
        if now - self._last >= self.every_s and active():
            self._last = now
            report(text())
