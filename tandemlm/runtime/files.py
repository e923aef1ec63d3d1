"""Files tandemlm writes: atomically, with the mode `open()` would give them.

    atomic_write(Path("out/summary.json"), text)   # readers never see a half-written file
"""

from __future__ import annotations

import os
import tempfile
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
