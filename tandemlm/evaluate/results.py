"""Evaluation results: per-example records, the summary, files and the terminal table."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tandemlm.compose import ExampleResult, NodeTrace
from tandemlm.runtime import Cost, Ledger, terminal
from tandemlm.runtime.files import atomic_write

#: the share of failed examples above which an evaluation counts as failed (`EvalResult.failure`)
MAX_FAILED_FRACTION = 0.5
#: what `EvalResult.node_errors` counts per node
NODE_COUNTS = ("runs", "failed", "parse_failed", "recovered")


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
        return {"index": self.index, "key": example_key(self.example),
                "example": self.example, "inputs": self.result.inputs,
                "outputs": self.result.outputs,
                "score": self.score, "error": self.error,
                "cost_usd": _sum_or_none(t.cost_usd for t in calls),
                "tokens_in": sum(t.tokens_in or 0 for t in calls),
                "tokens_out": sum(t.tokens_out or 0 for t in calls),
                "trace": trace}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """The record `to_dict` wrote (values as JSON kept them), e.g. to resume an evaluation.
        A score that is no finite number (JSON keeps NaN) is a `ValueError`: no mean survives it."""
        score = float(data["score"])
        if not math.isfinite(score):
            raise ValueError(f"record {data.get('index')} has the score {score}")
        result = ExampleResult(inputs=data.get("inputs") or {}, outputs=data.get("outputs") or {},
                               trace=[_trace(t) for t in data.get("trace") or []],
                               error=data.get("error"))
        return cls(data["index"], data["example"], result, score, data.get("error"))


def example_key(example: dict[str, Any]) -> str:
    """A hash of one example (inputs and labels), so a resumed evaluation knows a record belongs
    to this very example and not to whatever now sits at its index."""
    text = json.dumps(example, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _trace(data: dict[str, Any]) -> NodeTrace:
    return NodeTrace(**{**data, "children": [_trace(c) for c in data.get("children") or []]})


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
        atomic_write(out / "results.jsonl", lines)
        atomic_write(out / "summary.json", json.dumps(self.summary, indent=2, default=str) + "\n")
        return out

    def node_errors(self) -> dict[str, dict[str, int]]:
        """Per node (children of composites too), over every example: how many times it ran,
        failed, failed to parse its model's output, and parsed only when asked again in
        another format (`recovered`)."""
        counts: dict[str, dict[str, int]] = {}
        for record in self.records:
            for trace in (t for root in record.result.trace for t in root.walk()):
                row = counts.setdefault(trace.node, dict.fromkeys(NODE_COUNTS, 0))
                row["runs"] += 1
                row["failed"] += trace.error is not None
                row["parse_failed"] += trace.error is not None and trace.info.get("failure") == "parse"
                row["recovered"] += trace.error is None and "parsed_with" in trace.info
        return counts

    def __str__(self) -> str:
        s = self.summary
        if not s:
            return f"EvalResult({len(self.records)} records, no summary)"
        metric = s["metric"]
        stderr = f" ± {metric['stderr']:.3f}" if metric.get("stderr") is not None else ""
        cost = s.get("total_cost_usd")
        return (f"{s['program']}: {metric['name']} = {metric['mean']:.3f}{stderr} on {s['n']} "
                f"examples ({s['errors']} failed)"
                + (f", ${cost:.4f}" if cost is not None else "")
                + f", {s.get('wall_s', 0.0):.1f} s" + (f"; {self.failure()}" if self.failure() else ""))

    def __repr__(self) -> str:  # the records can be thousands: the summary line instead
        return f"<EvalResult {self}>"

    def error_counts(self, top: int | None = None) -> list[tuple[str, int]]:
        """(error message, how many examples failed with it), most common first."""
        return Counter(r.error for r in self.records if r.error is not None).most_common(top)

    def failure(self) -> str | None:
        """Why this evaluation as a whole failed: every example, or more than half of them
        (`MAX_FAILED_FRACTION`), failed; None when it did not."""
        n, failed = len(self.records), sum(r.error is not None for r in self.records)
        if n and failed == n:
            return f"all {n} examples failed"
        if failed > MAX_FAILED_FRACTION * n:
            return f"{failed} of {n} examples failed (more than {MAX_FAILED_FRACTION:.0%})"
        return None

    def table(self) -> Table:
        metric = self.summary["metric"]
        stderr = f" ± {metric['stderr']:.3f}" if metric.get("stderr") is not None else ""
        table = Table(title=f"{terminal.safe(self.summary['program'], markup=True)}: "
                            f"{terminal.safe(metric['name'], markup=True)} = "
                            f"{metric['mean']:.3f}{stderr} on {self.summary['n']} examples "
                            f"({self.summary['errors']} errors)")
        for column in ("model", "calls", "tokens in", "tokens out", "cost"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for name, usage in self.summary["usage"].items():
            table.add_row(terminal.safe(name, markup=True), str(usage["calls"]),
                          _count(usage["tokens_in"]), _count(usage["tokens_out"]), format_cost(usage))
        return table

    def print(self, console: Console | None = None) -> None:
        """The table, then the most common errors when examples failed."""
        console = console or terminal.console()
        console.print(self.table())
        lines = error_digest(self.error_counts(), len(self.records))
        for line in lines + node_digest(self.summary.get("node_errors") or self.node_errors()):
            console.print(terminal.safe(line), markup=False, highlight=False, soft_wrap=True)


def node_digest(counts: dict[str, dict[str, int]]) -> list[str]:
    """A line per node that failed or needed a second try (see `EvalResult.node_errors`)."""
    lines = []
    for node, c in counts.items():
        if not c.get("failed") and not c.get("recovered"):
            continue
        line = f"node '{node}': {c['failed']} of {c['runs']} runs failed"
        if c.get("parse_failed"):
            line += f" ({c['parse_failed']} could not parse the model output)"
        if c.get("recovered"):
            line += f"; {c['recovered']} parsed only when asked again in another format"
        lines.append(line)
    return lines


def error_digest(counts: list[tuple[str, int]], n: int, top: int = 3) -> list[str]:
    """Lines saying how many examples failed and with which errors, most common first."""
    if not counts:
        return []
    failed = sum(c for _, c in counts)
    lines = [f"{failed} of {n} examples failed; most common error(s):"]
    lines += [f"  {count} x {_shorten(message)}" for message, count in counts[:top]]
    if len(counts) > top:
        lines.append(f"  ... and {len(counts) - top} other error message(s) (each record in "
                     f"results.jsonl carries its own)")
    return lines


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def format_cost(usage: dict[str, Any]) -> str:
    if usage.get("cost_usd") is not None:
        return f"${usage['cost_usd']:.4f}"
    if usage.get("flops_estimate") is not None:
        return f"{usage['flops_estimate']:.3g} FLOPs (est.)"
    return "unknown"
