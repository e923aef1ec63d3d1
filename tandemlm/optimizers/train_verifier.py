"""`TrainVerifier`: fine-tune `Verify` nodes (KALMV) on verdicts labelled from traces and the metric.

Every call of a Verify node becomes a training row, whether or not its example passed — a
verifier must learn the wrong answers too. The label is the verdict the call *should* have given:

* the positive option ("correct") when the metric accepts the answer the node verified (the
  metric is applied to the node's own inputs, e.g. its `answer` field, so a Rectify loop that
  later repaired the answer does not mislabel the first attempt);
* otherwise, with KALMV's options and a `gold` example field: `generation_error` when the gold
  answer appears in the evidence (the knowledge was there, the answer missed it), else
  `retrieval_error`; with other options, the first option that is not the positive one.

Each row is the node's own prompt (every instruction variant of an ensemble) and the verdict in
its adapter's format, trained as a LoRA adapter exactly like `Finetune` (whose options it takes).

    compile(pipe, train, metric, passes=[TrainVerifier(gold="answer", epochs=5)])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import dspy

from tandemlm.compose import LMNode, Pipeline
from tandemlm.evaluate.metrics import metric_value, normalize
from tandemlm.modules.verify import Verify
from tandemlm.optimizers.finetune import Finetune
from tandemlm.optimizers.finetune_data import Row, completion_text, node_rows
from tandemlm.optimizers.passes import CompileContext, select_nodes
from tandemlm.optimizers.trace_store import NodeCall, Traces
from tandemlm.runtime import CompileError, ConfigError


@dataclass
class TrainVerifier(Finetune):
    """Fine-tune Verify nodes on metric-labelled verdicts; see the module docstring.

    Args (besides `Finetune`'s; `teacher` and `select` do not apply):
        gold: the example field holding the reference answer, to tell a retrieval error from a
            generation error (KALMV's options); without it every wrong answer gets the first
            non-positive option.
        evidence: the Verify input holding the retrieved evidence.
    """

    gold: str | None = None
    evidence: str = "evidence"

    name = "train_verifier"

    def __post_init__(self) -> None:
        if self.teacher or self.select != "passed":
            raise ConfigError("TrainVerifier labels verdicts from the metric: it takes no teacher "
                              "and no select option")
        super().__post_init__()

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        found = select_nodes(pipeline, self.nodes, Verify, "Verify node")
        if not found:
            raise CompileError(f"train_verifier: pipeline '{pipeline.name}' has no Verify node")
        # Finetune trains the nodes it is given; this pass gives it the Verify nodes.
        return Finetune.apply(dataclasses.replace(self, nodes=list(found)), pipeline, traces, ctx)

    def _rows(self, path: str, node: LMNode, source: Traces, ctx: CompileContext) -> list[Row]:
        if not isinstance(node, Verify):
            raise ConfigError(f"train_verifier: node '{path}' is not a Verify node")
        calls = source.calls(path)
        labels = [self.label(node, call, ctx) for call in calls]
        if len(set(labels)) < 2:
            raise CompileError(f"train_verifier: every one of the {len(calls)} calls of '{path}' "
                               f"is labelled {labels[0] if labels else 'nothing'}; a verifier needs "
                               f"right and wrong answers to learn from")
        rows = []
        for view in node.views():  # each instruction variant of an ensemble sees every row
            for row, verdict in zip(node_rows(view, calls), labels, strict=True):
                rows.append(_relabel(view, row, verdict))
        ctx.details.setdefault("verdicts", {})[path] = {o: labels.count(o) for o in node.options}
        return rows

    def label(self, node: Verify, call: NodeCall, ctx: CompileContext) -> str:
        """The verdict this call should have given (see the module docstring)."""
        if _accepted(ctx.metric, call):
            return node.positive
        wrong = [o for o in node.options if o != node.positive]
        if self.gold is not None and {"retrieval_error", "generation_error"} <= set(wrong):
            gold = call.example.get(self.gold)
            if gold is None:
                raise ConfigError(f"train_verifier: an example has no field '{self.gold}' (gold=)")
            found = normalize(str(gold)) in normalize(str(call.trace.inputs.get(self.evidence, "")))
            return "generation_error" if found else "retrieval_error"
        return wrong[0]


def _accepted(metric: Any, call: NodeCall) -> bool:
    """The metric on the answer the node verified; the example's outcome where that fails."""
    try:
        value = metric(dspy.Example(**call.example), dspy.Prediction(**call.trace.inputs))
    except Exception:
        return call.passed
    return bool(metric_value(metric, value, call.example))  # a NaN is no verdict: refused, as in evaluate()


def _relabel(view: LMNode, row: Row, verdict: str) -> Row:
    outputs = {"verdict": verdict}
    return Row(row.inputs, outputs, row.request, completion_text(view, outputs))
