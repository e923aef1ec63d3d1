"""How many threads torch computes with while a local backend runs, and the `threads="auto"` rule.

torch runs one intra-op thread per core by default, and its OpenMP workers busy-wait for each
other at the end of every parallel region. When another process keeps one of the cores busy, the
scheduler shares that core between the competitor and one of torch's workers, and every region
waits for the worker that is off its core: a batched `generate` on a 2-core machine with one core
taken ran several times slower than on one thread (`benchmarks/batched_vs_dspy.py --busy`). With
one thread there is no parallel region to wait in.

The `hf` and `hf-classifier` backends run their work (generate, logprobs, classify, training)
under `torch_threads(n)`, `n` from their `threads=` option:

    with torch_threads(2):       # torch computes with 2 threads here, as it did before after
        model.generate(...)

torch's thread count is process state, not a per-call argument: `torch_threads` sets it for the
block and puts back what it found, and blocks run one at a time in the process (a lock), so two
backends with different counts never change it under each other. On CPU that is also what one
wants: two models computing at once on the same cores are each other's competing load.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tandemlm.runtime.errors import ConfigError

#: Held while torch's thread count is set for a block (reentrant: a backend's training may run
#: its own model's forward inside a block of the same backend).
_LOCK = threading.RLock()

_WINDOW_S = 0.1  # a first measurement of the other processes' load: this long a wait
_REFRESH_S = 5.0  # a measurement is reused this long ...
_STALE_S = 60.0  # ... and the counters since the last one stand in for a new wait up to this long


def check_threads(value: Any, backend: str) -> int | None:
    """The `threads=` option checked: a positive int, or None for "auto" (None or "auto")."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"threads must be a positive integer (torch's intra-op threads while "
                          f"backend '{backend}' runs) or 'auto', got {value!r}; e.g. threads=1 "
                          f"on a machine whose cores other processes also use")
    return value


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with torch computing on `count` intra-op threads, then restore torch's count.

    `None` leaves torch's count as it is (and takes no lock). The count is process state: blocks
    run one at a time across threads; a nested block in the same thread sets its own count and
    restores the outer one."""
    if count is None:
        yield
        return
    import torch

    with _LOCK:
        before = torch.get_num_threads()
        if before != count:
            torch.set_num_threads(count)
        try:
            yield
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)


def allowed_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_threads() -> int:
    """The count `threads="auto"` runs with: torch's own count (what the process was set up
    with: OMP_NUM_THREADS, `torch.set_num_threads`, or one per core), lowered to the allowed
    cores that other processes are not keeping busy, and never below 1.

    A core counts as busy when other processes used at least half of it, measured from the
    kernel's CPU counters over a short window (first call: a 0.1 s wait) and refreshed from the
    counters between calls at most every 5 s (no wait), so it follows load that comes and goes."""
    import torch

    return max(1, min(torch.get_num_threads(), allowed_cores() - busy_cores()))


class _Sample:
    """CPU counters at one moment: busy seconds of the allowed cores, and this process's own."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.busy = _busy_seconds()
        self.own = time.process_time()  # all this process's threads: its own work is not "other"


_last: dict[str, Any] = {"sample": None, "busy": 0}
_SAMPLE_LOCK = threading.Lock()


def busy_cores() -> int:
    """Allowed cores that other processes keep busy now (whole cores, rounded half up), from
    /proc/stat; from the 1-minute load average where there is no /proc/stat (it lags, and
    cannot tell this process's own load apart)."""
    with _SAMPLE_LOCK:
        previous = _last["sample"]
        now = time.monotonic()
        if previous is not None and now - previous.at < _REFRESH_S:
            return _last["busy"]
        if previous is None or previous.busy is None or now - previous.at > _STALE_S:
            previous = _Sample()
            time.sleep(_WINDOW_S)
        current = _Sample()
        _last["sample"], _last["busy"] = current, _busy_between(previous, current)
        return _last["busy"]


def _busy_between(first: _Sample, second: _Sample) -> int:
    if first.busy is None or second.busy is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return min(allowed_cores(), int(load + 0.5))
    elapsed = max(second.at - first.at, 1e-6)
    others = (second.busy - first.busy) - (second.own - first.own)
    return max(0, min(allowed_cores(), int(others / elapsed + 0.5)))


def _busy_seconds() -> float | None:
    """Seconds the allowed cores have spent busy since boot (user, nice, system, irq, softirq;
    not idle, iowait or steal), or None where /proc/stat cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    ticks = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if allowed is not None and int(name[3:]) not in allowed:
            continue
        fields = [int(x) for x in rest.split()]
        ticks += sum(fields[i] for i in (0, 1, 2, 5, 6) if i < len(fields))
    return ticks / os.sysconf("SC_CLK_TCK")
