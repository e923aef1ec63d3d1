"""A reporter for tests: keeps the notes and progress bars a compile reports."""

from __future__ import annotations

from contextlib import contextmanager

from tandemlm.optimizers import Reporter


class Recorder(Reporter):
    """Keeps notes and progress bars (description, total, steps advanced)."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.bars: list[list] = []

    @contextmanager
    def progress(self, description, total):
        bar = [description, total, 0]
        self.bars.append(bar)
        yield lambda n=1: bar.__setitem__(2, bar[2] + n)

    def note(self, text):
        self.notes.append(text)
