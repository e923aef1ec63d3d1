"""Evaluation results: per-example records, the summary, files and the terminal table."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tandemlm.compose import ExampleResult
from tandemlm.runtime import Cost, Ledger


@dataclass
class Record:
    """One evaluated example."""

    index: int
    example: dict[str, Any]
    result: ExampleResult
    score: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        trace = [t.to_dict() for t in self.result.trace]
        calls = [t for root in self.result.trace for t in root.walk()]
        return {"index": self.index, "example": self.example, "inputs": self.result.inputs,
                "outputs": self.result.outputs,
                "score": self.score, "error": self.error,
                "cost_usd": _sum_or_none(t.cost_usd for t in calls),
                "tokens_in": sum(t.tokens_in or 0 for t in calls),
                "tokens_out": sum(t.tokens_out or 0 for t in calls),
                "trace": trace}


def _sum_or_none(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


@dataclass
class EvalResult:
    """What `evaluate` returns: the records and a JSON-ready summary."""

    records: list[Record]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.summary["metric"]["mean"]

    def usage(self) -> Ledger:
        ledger = Ledger()
        for record in self.records:
            for t in (t for root in record.result.trace for t in root.walk()):
                if t.model is not None:
                    ledger.add(t.model, t.tokens_in, t.tokens_out, Cost(t.cost_usd, t.flops),
                               ok=t.error is None, calls=t.calls)
        return ledger

    def write(self, out_dir: str | Path) -> Path:
        """Write `results.jsonl` (one record per example) and `summary.json` atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r.to_dict(), default=str) + "\n" for r in self.records)
        _atomic_write(out / "results.jsonl", lines)
        _atomic_write(out / "summary.json", json.dumps(self.summary, indent=2, default=str) + "\n")
        return out

    def table(self) -> Table:
        metric = self.summary["metric"]
        stderr = f" ± {metric['stderr']:.3f}" if metric.get("stderr") is not None else ""
        table = Table(title=f"{escape(self.summary['program'])}: {metric['name']} = "
                            f"{metric['mean']:.3f}{stderr} on {self.summary['n']} examples "
                            f"({self.summary['errors']} errors)")
        for column in ("model", "calls", "tokens in", "tokens out", "cost"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for name, usage in self.summary["usage"].items():
            table.add_row(escape(name), str(usage["calls"]), _count(usage["tokens_in"]),
                          _count(usage["tokens_out"]), format_cost(usage))
        return table

    def print(self, console: Console | None = None) -> None:
        (console or Console()).print(self.table())


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def format_cost(usage: dict[str, Any]) -> str:
    if usage.get("cost_usd") is not None:
        return f"${usage['cost_usd']:.4f}"
    if usage.get("flops_estimate") is not None:
        return f"{usage['flops_estimate']:.3g} FLOPs (est.)"
    return "unknown"


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
