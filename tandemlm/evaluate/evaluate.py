"""`evaluate(pipeline, data, metric)`: batched, with a progress bar, per-example error
isolation, and quality and cost per model in the summary.

    result = evaluate(pipe, "dev.jsonl", exact_match, out="runs/dev")
    result.score, result.summary["usage"]
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dspy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tandemlm.compose import ExampleResult, Pipeline
from tandemlm.evaluate.data import load_data
from tandemlm.evaluate.metrics import Metric
from tandemlm.evaluate.results import EvalResult, Record
from tandemlm.evaluate.stats import bootstrap_stderr
from tandemlm.runtime import EvaluationAborted


def _score(metric: Metric, example: dict[str, Any], result: ExampleResult) -> tuple[float, str | None]:
    if result.error is not None:
        return 0.0, result.error
    try:
        value = metric(dspy.Example(**example), dspy.Prediction(**result.outputs))
    except Exception as exc:  # a metric crashing on one example fails only that example
        return 0.0, f"metric raised {type(exc).__name__}: {exc}"
    try:
        return float(value), None
    except (TypeError, ValueError):
        return 0.0, f"metric returned {value!r}, expected a number or bool"


def _summary(pipeline: Pipeline, metric: Metric, result: EvalResult, wall_s: float) -> dict:
    scores = [r.score for r in result.records]
    usage = result.usage()
    return {
        "program": pipeline.name,
        "n": len(scores),
        "errors": sum(r.error is not None for r in result.records),
        "metric": {"name": getattr(metric, "__name__", type(metric).__name__),
                   "mean": sum(scores) / len(scores) if scores else 0.0,
                   "stderr": bootstrap_stderr(scores)},
        "usage": usage.to_dict(),
        "total_cost_usd": usage.total_usd(),
        "wall_s": wall_s,
        "examples_per_s": len(scores) / wall_s if wall_s > 0 else None,
    }


def evaluate(pipeline: Pipeline, data: str | Path | Iterable[Any], metric: Metric, *,
             batch_size: int = 64, max_errors: int | None = None, limit: int | None = None,
             out: str | Path | None = None, progress: bool = True) -> EvalResult:
    """Run `pipeline` over `data`, score each example with `metric`, report quality and cost.

    Examples run in chunks of `batch_size`, each chunk stage-batched. A failing example scores
    0 and records its error; once more than `max_errors` examples failed, the records so far
    are written to `out` and `EvaluationAborted` is raised.
    """
    examples = load_data(data, limit=limit)
    records: list[Record] = []
    start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("score {task.fields[score]:.3f}"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"evaluating {pipeline.name}", total=len(examples), score=0.0)
        for begin in range(0, len(examples), batch_size):
            chunk = examples[begin:begin + batch_size]
            for offset, result in enumerate(pipeline.batch(chunk)):
                example = chunk[offset]
                score, error = _score(metric, example, result)
                records.append(Record(begin + offset, example, result, score, error))
            mean = sum(r.score for r in records) / len(records)
            bar.update(task, advance=len(chunk), score=mean)
            failed = sum(r.error is not None for r in records)
            if max_errors is not None and failed > max_errors:
                partial = EvalResult(records)
                partial.summary = _summary(pipeline, metric, partial, time.perf_counter() - start)
                if out is not None:
                    partial.write(out)
                first = next(r for r in records if r.error is not None)
                raise EvaluationAborted(
                    f"{failed} examples failed (max_errors={max_errors}); first error, example "
                    f"{first.index}: {first.error}" + (f"; partial results in {out}" if out else ""))
    result = EvalResult(records)
    result.summary = _summary(pipeline, metric, result, time.perf_counter() - start)
    if out is not None:
        result.write(out)
    return result
