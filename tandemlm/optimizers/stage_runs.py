"""Every cascade stage on every example: what `TrainScorer` labels and `Calibrate` searches over.

A cascade only runs a stage on the examples earlier stages escalated, so its own traces cannot
say how a stage would have done elsewhere. Here each stage's solver answers *every* example (and
its judge scores every answer), through the compile's call cache, and the metric judges each
stage's answer as if it were the pipeline's output.

The cascade's inputs are taken from the pipeline's own traces, so nodes upstream of the cascade
feed it exactly as at run time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import dspy

from tandemlm.compose import NodeTrace, Pipeline
from tandemlm.compose.state import node_paths
from tandemlm.compose.trace import spent
from tandemlm.evaluate.metrics import metric_value
from tandemlm.modules.cascade import Cascade
from tandemlm.optimizers.passes import CompileContext
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import use_cache


def _cost(trace: NodeTrace | None) -> tuple[float, float]:
    """(USD, FLOPs) one stage call cost (0 where unreported, or when there was no call)."""
    cost = spent([trace] if trace is not None else [])
    return cost["usd"] or 0.0, cost["flops"] or 0.0


@dataclass
class StageRun:
    """One stage over all examples: its answers, whether the metric accepts each, what each
    answer cost (solver calls; the judge's separately), and the judge's scores."""

    index: int
    name: str
    answers: list[NodeTrace]
    correct: list[bool]
    usd: list[float]
    flops: list[float]
    scores: list[float | None] = field(default_factory=list)
    judge_traces: list[NodeTrace | None] = field(default_factory=list)
    judge_usd: list[float] = field(default_factory=list)
    judge_flops: list[float] = field(default_factory=list)


def examples_digest(runs: list[StageRun]) -> str:
    """A fingerprint of the examples (the first stage's inputs, in order) the runs cover: what a
    judge's out-of-fold models (`FitJudges`) are valid for."""
    inputs = [a.inputs for a in runs[0].answers] if runs else []
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cascades(pipeline: Pipeline, nodes: list[str] | None = None) -> dict[str, Cascade]:
    """The pipeline's cascades by path; with `nodes`, only those named there (by path or name)."""
    return {p: n for p, n in node_paths(pipeline).items() if isinstance(n, Cascade)
            and (nodes is None or p in nodes or n.name in nodes)}


def cascade_inputs(traces: Traces, path: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(example, the cascade's inputs) for every example whose run reached the cascade."""
    return [(call.example, dict(call.trace.inputs)) for call in traces.calls(path, ok=False)]


def _correct(metric: Any, example: dict[str, Any], answer: NodeTrace) -> bool:
    if not answer.ok:
        return False
    try:
        value = metric(dspy.Example(**example), dspy.Prediction(**answer.outputs))
    except Exception:  # a metric failing on one answer counts it wrong, as evaluate() does
        return False
    return bool(metric_value(metric, value, example))  # a NaN is no verdict: refused, as in evaluate()


def fold_key(node: Any, values: dict[str, Any]) -> dict[str, Any]:
    """What a cascade judge's scorer node reads of an example's cascade inputs (the question,
    not the stage's answer): its fold is hashed from this."""
    return {f: values[f] for f in node.fields if f in values}


def fold_of(values: dict[str, Any], k: int) -> int:
    """The fold (0..k-1) of an example, from its content (`fold_key`): the same question falls in
    the same fold in every pass and in any split — twice-asked questions too — so a scorer copy
    trained without fold f (`TrainScorer(folds=k)`) never scores a question it learnt from."""
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big") % k


def run_every_stage(pipeline: Pipeline, path: str, rows: list[tuple[dict[str, Any], dict[str, Any]]],
                    ctx: CompileContext, *, judge: bool = True, cross_fit: bool = True,
                    labelled: bool = True) -> list[StageRun]:
    """Run each stage of the cascade at `path` on every row (one batch per stage). With `judge`,
    each answer is judged; with `cross_fit`, a judge whose scorer was cross-fitted scores each
    example with the copy that did not learn from it (`TrainScorer(folds=k)`), as the compile
    needs; without, with the scorer the program runs (test figures, unlabeled rows). Without
    `labelled` (rows that are inputs only) the metric is not asked: `correct` stays empty."""
    cascade = cascades(pipeline)[path]
    examples = [example for example, _ in rows]
    inputs = [values for _, values in rows]
    run = pipeline.run_context(inputs)
    out = []
    with use_cache(ctx.store.cache), ctx.reporter.progress(f"{path}: every stage on "
                                                           f"{len(rows)} examples",
                                                           len(cascade.solvers)) as advance:
        for s, (solver, stage_judge) in enumerate(zip(cascade.solvers, cascade.judges, strict=True)):
            answers = run.run(solver, [{f: x[f] for f in solver.input_fields} for x in inputs])
            costs = [_cost(a) for a in answers]
            correct = [_correct(ctx.metric, e, a) for e, a in zip(examples, answers, strict=True)] \
                if labelled else []
            stage = StageRun(s, solver.name, answers, correct, [c[0] for c in costs],
                             [c[1] for c in costs])
            if judge and stage_judge is not None:
                _judge_stage(stage, stage_judge, solver, run, inputs, cross_fit)
            out.append(stage)
            advance(1)
    return out


def _judge_stage(stage: StageRun, judge: Any, solver: Any, run: Any, inputs: list[dict],
                 cross_fit: bool) -> None:
    answered = [i for i, a in enumerate(stage.answers) if a.ok]
    stage.scores = [None] * len(inputs)
    stage.judge_traces = [None] * len(inputs)
    folds = getattr(getattr(judge, "node", None), "folds", None) if cross_fit else None
    if folds:  # each fold's examples scored by the scorer copy trained without them
        served = run.model(judge.node.model).fingerprint
        fold = {i: fold_of(fold_key(judge.node, inputs[i]), len(folds)) for i in answered}
        groups = [(run.substituting({served: model}), [i for i in answered if fold[i] == f])
                  for f, model in enumerate(folds)]
    else:
        groups = [(run, answered)]
    for context, members in groups:
        if not members:
            continue
        scores, traces = judge.score(context, solver, [inputs[i] for i in members],
                                     [stage.answers[i] for i in members])
        for i, score, trace in zip(members, scores, traces, strict=True):
            stage.scores[i], stage.judge_traces[i] = score, trace
    costs = [_cost(t) for t in stage.judge_traces]
    stage.judge_usd, stage.judge_flops = [c[0] for c in costs], [c[1] for c in costs]
