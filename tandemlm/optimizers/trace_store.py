"""The trace store: runs a pipeline over a dataset, scores every example with the metric and keeps
every node's inputs and outputs with pass/fail — what every compiler pass learns from.

All runs share one `CallCache`, keyed by model fingerprint: running the pipeline again after a
pass re-runs only the nodes whose model or prompt changed (a fine-tuned node's new adapter is a
new fingerprint; the unchanged large model's answers come from the cache).

    store = TraceStore(metric, cache=CallCache("out/calls.sqlite"))
    traces = store.run(pipeline, trainset)
    for call in traces.calls("solve", passed=True):
        call.trace.inputs, call.trace.outputs
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tandemlm.compose import NodeTrace, Pipeline
from tandemlm.evaluate import evaluate
from tandemlm.evaluate.metrics import Metric
from tandemlm.evaluate.results import EvalResult, Record
from tandemlm.runtime import CallCache, use_cache


@dataclass
class NodeCall:
    """One node's work on one example, with the example's metric outcome."""

    record: Record
    trace: NodeTrace
    passed: bool

    @property
    def example(self) -> dict[str, Any]:
        return self.record.example


def _walk(trace: NodeTrace, prefix: str) -> Iterator[tuple[str, NodeTrace]]:
    path = f"{prefix}{trace.node}"
    yield path, trace
    for child in trace.children:
        yield from _walk(child, f"{path}/")


@dataclass
class Traces:
    """One run of a pipeline over a dataset: the evaluation records and which examples passed."""

    result: EvalResult
    threshold: float | None = None

    @property
    def records(self) -> list[Record]:
        return self.result.records

    @property
    def score(self) -> float:
        return self.result.score

    def passed(self, record: Record) -> bool:
        """An example passes when it ran without error and its metric is truthy (or reaches the
        threshold, when one is set)."""
        if record.error is not None:
            return False
        return record.score >= self.threshold if self.threshold is not None else bool(record.score)

    def calls(self, path: str, *, passed: bool | None = None, ok: bool = True) -> list[NodeCall]:
        """Every call of the node at `path` ("solve", or "cascade/gpt_4" inside a composite),
        in example order; `passed` keeps only examples that passed (True) or failed (False);
        `ok` keeps only calls that produced outputs."""
        out = []
        for record in self.records:
            verdict = self.passed(record)
            if passed is not None and verdict != passed:
                continue
            for root in record.result.trace:
                for where, trace in _walk(root, ""):
                    if where == path and (trace.ok or not ok):
                        out.append(NodeCall(record, trace, verdict))
        return out

    def cost(self) -> dict[str, float | None]:
        """Mean cost per example: USD where known, estimated FLOPs of local models."""
        usage = self.result.summary.get("usage", {})
        n = max(1, len(self.records))
        usd = [u["cost_usd"] for u in usage.values() if u.get("cost_usd") is not None]
        flops = [u["flops_estimate"] for u in usage.values() if u.get("flops_estimate") is not None]
        return {"usd": sum(usd) / n if usd else None, "flops": sum(flops) / n if flops else None}


class TraceStore:
    """Runs pipelines over datasets for the compiler; see the module docstring.

    Args:
        metric: `metric(example, prediction, trace=None)` -> bool or float.
        cache: the call cache shared by every run (memory only by default).
        threshold: a metric value at or above which an example passes (default: truthy).
        batch_size: examples per executor batch.
        progress: show a progress bar per run.
    """

    def __init__(self, metric: Metric, *, cache: CallCache | None = None,
                 threshold: float | None = None, batch_size: int = 64, progress: bool = True) -> None:
        self.metric, self.threshold = metric, threshold
        self.cache = cache if cache is not None else CallCache()
        self.batch_size, self.progress = batch_size, progress

    def run(self, pipeline: Pipeline, examples: list[dict[str, Any]],
            metric: Metric | None = None) -> Traces:
        """Run `pipeline` over `examples` (through the call cache) and score each one (with
        `metric` instead of the store's, e.g. for inputs without labels)."""
        with use_cache(self.cache):
            result = evaluate(pipeline, examples, metric or self.metric, batch_size=self.batch_size,
                              progress=self.progress, warn=False)  # the passes say why
        return Traces(result, self.threshold)
