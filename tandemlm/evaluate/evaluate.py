"""`evaluate(pipeline, data, metric)`: batched, with a progress bar, per-example error
isolation, and quality and cost per model in the summary.

    result = evaluate(pipe, "dev.jsonl", exact_match, out="runs/dev")
    result.score, result.summary["usage"]

With `out`, records stream to `out/results.jsonl` as examples finish and a re-run resumes
(see `results_dir`); Ctrl-C raises `EvaluationInterrupted`, saying how much is saved where.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dspy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tandemlm.compose import ExampleResult, Pipeline
from tandemlm.evaluate.data import check_input_fields, load_data, require_examples
from tandemlm.evaluate.metrics import Metric, check_metric, metric_value
from tandemlm.evaluate.results import EvalResult, Record
from tandemlm.evaluate.results_dir import ResultsDir, run_info
from tandemlm.evaluate.stats import bootstrap_stderr
from tandemlm.runtime import EvaluationAborted, EvaluationWarning, terminal
from tandemlm.runtime.progress import listening

#: characters of the in-batch progress text the bar shows
_NOW_WIDTH = 48


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during `evaluate`: how many examples were done and where their records are.
    A KeyboardInterrupt still, so whatever stops on Ctrl-C stops on it."""

    def __init__(self, done: int, total: int, out: str | Path | None) -> None:
        self.done, self.total, self.out = done, total, out
        where = (f"their records are in {Path(out) / 'results.jsonl'}; run the same evaluation "
                 f"again (same --out) to finish the other {total - done}" if out is not None
                 else "nothing was saved (give --out / out= to keep records and resume)")
        super().__init__(f"interrupted after {done} of {total} examples; {where}")


def _score(metric: Metric, index: int, example: dict[str, Any],
           result: ExampleResult) -> tuple[float, str | None]:
    """The example's score and error. A metric raising fails only that example; a metric value
    that is no finite number (`metric_value`) stops the evaluation there, before it reaches the
    records and the mean (the records written so far stay)."""
    if result.error is not None:
        return 0.0, result.error
    try:
        value = metric(dspy.Example(**example), dspy.Prediction(**result.outputs))
    except Exception as exc:
        return 0.0, f"metric raised {type(exc).__name__}: {exc}"
    return metric_value(metric, value, example, index), None


def _summary(pipeline: Pipeline, metric: Metric, result: EvalResult, wall_s: float,
             resumed: int = 0) -> dict:
    scores = [r.score for r in result.records]
    usage = result.usage()
    ran = len(scores) - resumed
    return {
        "program": pipeline.name,
        "n": len(scores),
        "errors": sum(r.error is not None for r in result.records),
        "error_counts": [{"error": e, "count": c} for e, c in result.error_counts(10)],
        "node_errors": result.node_errors(),
        "metric": {"name": getattr(metric, "__name__", type(metric).__name__),
                   "mean": sum(scores) / len(scores) if scores else 0.0,
                   "stderr": bootstrap_stderr(scores)},
        "usage": usage.to_dict(),
        "total_cost_usd": usage.total_usd(),
        "resumed": resumed,
        "wall_s": wall_s,
        "examples_per_s": ran / wall_s if wall_s > 0 and ran else None,
    }


def _examples(pipeline: Pipeline, data: Any, limit: int | None,
              encoding: str) -> list[dict[str, Any]]:
    """The examples, refused up front when there are none or they lack a field the pipeline
    reads: either way every example would score 0 and the run would measure nothing."""
    examples = require_examples(load_data(data, limit=limit, encoding=encoding), data, limit=limit)
    check_input_fields(examples, getattr(pipeline, "input_fields", []), data,
                       f"pipeline '{getattr(pipeline, 'name', 'pipeline')}'")
    return examples


@contextmanager
def _bar(name: str, total: int, done: int, show: bool) -> Iterator[Callable[[int, float], None]]:
    """The examples bar; while a batch runs, its last column says what the batch is doing
    (stage, node, microbatch, token step: `runtime.progress`), so a long batch visibly moves."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("score {task.fields[score]:.3f}"), TimeElapsedColumn(),
               TextColumn("{task.fields[now]}", markup=False))
    with Progress(*columns, disable=not show, console=terminal.console()) as bar:
        task = bar.add_task(f"evaluating {terminal.safe(name, markup=True)}", total=total,
                            completed=done, score=0.0, now="")
        advance = lambda n, score: bar.update(task, advance=n, score=score, now="")
        if not show:  # a caller's own listener, if any, keeps hearing the batch
            yield advance
            return
        with listening(lambda text: bar.update(task, now=terminal.safe(text)[:_NOW_WIDTH])):
            yield advance


def _check_errors(records: dict[int, Record], max_errors: int | None, partial: Callable[[], Any],
                  out: str | Path | None) -> None:
    """Abort once more than `max_errors` examples failed, writing the records so far."""
    if max_errors is None:
        return
    failed = [r for _, r in sorted(records.items()) if r.error is not None]
    if len(failed) <= max_errors:
        return
    partial()
    first = failed[0]
    common, count = EvalResult(failed).error_counts(1)[0]
    raise EvaluationAborted(
        f"{len(failed)} examples failed (max_errors={max_errors}); first error, example "
        f"{first.index}: {first.error}; most common ({count} x): {common}"
        + (f"; partial results in {out}" if out else ""))


def evaluate(pipeline: Pipeline, data: str | Path | Iterable[Any], metric: Metric, *,
             batch_size: int = 64, max_errors: int | None = None, limit: int | None = None,
             out: str | Path | None = None, fresh: bool = False, encoding: str = "utf-8",
             progress: bool = True, warn: bool = True) -> EvalResult:
    """Run `pipeline` over `data`, score each example with `metric`, report quality and cost.

    Examples run in chunks of `batch_size`, each chunk stage-batched. A failing example scores
    0 and records its error; once more than `max_errors` examples failed, the records so far
    are written to `out` and `EvaluationAborted` is raised. With `out`, each record is appended
    to `out/results.jsonl` as its example finishes, and a later call with the same `out`
    runs only the examples not recorded there (`fresh=True` runs all again); when writing there
    fails (a full disk), `OutputError` says how many records were kept for the re-run. Ctrl-C
    raises `EvaluationInterrupted`. A data file is read in `encoding` (UTF-8 by default). No
    examples, a field the pipeline reads missing from the data, a data file that does not decode
    or parse, a metric that is not a function (example, prediction[, trace]), or a metric value
    that is not a finite number or bool (raised when seen) are a `ConfigError`. When
    most examples failed (`EvalResult.failure`), an `EvaluationWarning` says so (`warn=False`:
    not, for callers that report the failures themselves).

    The progress bar counts finished examples and shows what the running batch is doing (its
    stage and node, the local model's microbatch and token step, HTTP requests answered).
    `print(result)` gives a one-line summary, `result.print()` the table per model.
    """
    metric = check_metric(metric)
    examples = _examples(pipeline, data, limit, encoding)
    start = time.perf_counter()
    store = ResultsDir(out, run_info(pipeline, metric)) if out is not None else None
    note = ((lambda m: terminal.console().print(m, markup=False, soft_wrap=True)) if progress
            else (lambda _: None))
    records = store.start(examples, fresh=fresh, note=note) if store is not None else {}
    resumed = len(records)

    def result() -> EvalResult:
        done = EvalResult([records[i] for i in sorted(records)])
        done.summary = _summary(pipeline, metric, done, time.perf_counter() - start, resumed)
        if store is not None:
            store.finish(done)
        return done

    todo = [i for i in range(len(examples)) if i not in records]
    try:
        with _bar(pipeline.name, len(examples), resumed, progress) as advance:
            _check_errors(records, max_errors, result, out)
            for begin in range(0, len(todo), batch_size):
                chunk = todo[begin:begin + batch_size]
                for index, ran in zip(chunk, pipeline.batch([examples[i] for i in chunk]), strict=True):
                    score, error = _score(metric, index, examples[index], ran)
                    records[index] = Record(index, examples[index], ran, score, error)
                    if store is not None:
                        store.append(records[index])
                if store is not None:
                    store.sync()
                advance(len(chunk), sum(r.score for r in records.values()) / len(records))
                _check_errors(records, max_errors, result, out)
    except KeyboardInterrupt as exc:
        raise EvaluationInterrupted(len(records), len(examples), out) from exc
    finally:
        if store is not None:
            store.close()
    final = result()
    if warn:
        _warn_if_failed(final)
    return final


def _warn_if_failed(result: EvalResult) -> None:
    """A loud warning when most examples failed: the score then measures the failures."""
    failure = result.failure()
    if failure is None:
        return
    common, count = result.error_counts(1)[0]
    warnings.warn(f"{failure}; the score {result.score:.3f} counts them as 0. Most common error "
                  f"({count} x): {' '.join(common.split())[:300]}", EvaluationWarning, stacklevel=3)
