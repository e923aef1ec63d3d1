"""Files tandemlm writes: atomically, with the mode `open()` would give them, and the cache
folder where it keeps what it builds once (tiny models, converted GGUF checkpoints).

    atomic_write(Path("out/summary.json"), text)   # readers never see a half-written file
    build_once(cache_dir() / "my-model", build)    # build(work_dir) runs once, lands whole
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (only settable) and put it back

#: the mode a file created with open() gets: 0o666 less the umask
FILE_MODE = 0o666 & ~_UMASK


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)  # as open() would create it (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Where tandemlm keeps what it builds once: $TANDEM_CACHE, else ~/.cache/tandemlm."""
    return Path(os.environ.get("TANDEM_CACHE") or Path.home() / ".cache" / "tandemlm")


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Run `build(work_dir)` in a temporary sibling of `target` and rename it into place, unless
    `target` already exists: an interrupted build never lands there, and when two processes
    race, the first to finish wins and the other's copy is dropped."""
    target = Path(target)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(work)
        os.chmod(work, 0o777 & ~_UMASK)  # as mkdir() would create it (mkdtemp makes it private)
        try:
            work.rename(target)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(work, ignore_errors=True)
            if not target.is_dir():
                raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target
