"""Test-session setup. With pytest-xdist, the machine's cores are shared among the workers, so
each worker's torch gets its share of intra-op threads instead of every worker taking them all
(which on a 2-core machine makes two workers slower than one)."""

from __future__ import annotations

import os

import pytest

# Wide consoles: rich wraps CLI messages at the terminal width (80 without a terminal), and a
# worker's longer temporary paths (.../popen-gw0/...) would be cut across lines in the output
# the CLI tests read.
os.environ["COLUMNS"] = "1000"


def pytest_configure(config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // int(workers)))


def pytest_collection_modifyitems(config, items) -> None:
    """Test files marked `heavy` (minutes of training or a whole program run on first use) run
    first. xdist hands whole files to its workers in collection order; a long file collected
    last runs alone on one worker while the other has nothing left to do. The order inside a
    file, and among the other files, is kept."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: for the tests' small models it is as fast as two on
    an idle machine, and torch's spinning worker threads make it many times slower when another
    process holds a core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
