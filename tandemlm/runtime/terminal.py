"""The console tables and messages print to: rich's own on a terminal; piped (a file, a CI log),
as wide as `COLUMNS` says or 160 columns, so tables are not squeezed to rich's 80-column default
or wrapped mid-row."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=int(os.environ.get("COLUMNS") or 0) or 160)
