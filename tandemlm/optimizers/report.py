"""Compile reporting: progress bars per pass, one row per pass (metric and cost before and after,
time), and the table printed at the end. Passes talk to a `Reporter`, never to `print`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tandemlm.runtime import terminal


@dataclass
class PassReport:
    """What one pass did: the metric and mean cost per example before and after, and its time."""

    index: int
    name: str
    config: dict[str, Any]
    metric_before: float
    metric_after: float
    cost_before: dict[str, float | None]
    cost_after: dict[str, float | None]
    seconds: float
    resumed: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reporter:
    """Silent reporter: the interface passes use. `progress` yields an `advance(n)` callback."""

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def note(self, text: str) -> None:
        """A one-line message (what a pass chose, why it skipped something)."""

    def pass_done(self, report: PassReport) -> None:
        """Called once per pass, finished or resumed."""


def _cost(cost: dict[str, float | None]) -> str:
    if cost.get("usd") is not None:
        return f"${cost['usd']:.6f}"
    if cost.get("flops") is not None:
        return f"{cost['flops']:.3g} FLOPs"
    return "n/a"


def report_table(reports: list[PassReport], split: str) -> Table:
    table = Table(title=f"compile: metric on the {split}set, mean cost per example")
    for column in ("#", "pass", "metric before → after", "cost before → after", "time"):
        table.add_column(column, justify="left" if column == "pass" else "right", no_wrap=True)
    for r in reports:
        table.add_row(str(r.index), escape(r.name) + (" (resumed)" if r.resumed else ""),
                      f"{r.metric_before:.3f} → {r.metric_after:.3f}",
                      f"{_cost(r.cost_before)} → {_cost(r.cost_after)}", f"{r.seconds:.1f}s")
    return table


class RichReporter(Reporter):
    """Progress bars and notes on the terminal (stderr), a table row per pass."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or terminal.console(stderr=True)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.update(task, advance=n)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]·[/dim] {escape(text)}")

    def pass_done(self, report: PassReport) -> None:
        self.console.print(f"[bold]{escape(report.name)}[/bold]: metric {report.metric_before:.3f} -> "
                           f"{report.metric_after:.3f}, cost {_cost(report.cost_before)} -> "
                           f"{_cost(report.cost_after)}, {report.seconds:.1f}s"
                           + (" (resumed)" if report.resumed else ""))
