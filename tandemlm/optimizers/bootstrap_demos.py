"""`BootstrapDemos`: few-shot demonstrations taken from the runs that passed the metric.

DSPy's BootstrapFewShot over tandem traces: run the program (or a teacher version of it) on the
trainset, keep each LM node's inputs and outputs from the examples that passed, and attach up to
`k` of them to the node as demos. Three named steps — collect traces, filter by metric, attach
demos — plus an optional random search over demo sets on the valset.

    BootstrapDemos(k=4)                                  # demos from the program's own passing runs
    BootstrapDemos(k=4, teacher={"small": large})        # the large model in the small node's seat
    BootstrapDemos(k=2, candidates=8)                    # keep the best of 8 demo sets (+ none) on val

A teacher's demos are written by the teacher, but the returned program keeps its own models: the
small model now sees what the large one did on examples that came out right.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tandemlm.compose import LMNode, Pipeline
from tandemlm.optimizers.passes import CompileContext, Pass, lm_nodes, select_nodes, teacher_traces
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError, Model

Demo = dict[str, Any]
# One demo candidate: (index of the trainset example it came from, the demo).
Candidate = tuple[int, Demo]


@dataclass
class BootstrapDemos(Pass):
    """Attach demos from passing traces to LM nodes.

    Args:
        k: at most this many bootstrapped demos per node.
        teacher: model-name rebindings to collect traces with, e.g. `{"small": large_model}` or
            `{"small": "large"}` (a name the pipeline binds); the result keeps its own models.
        nodes: node paths or names to give demos (default: every LM node).
        candidates: when > 0, draw this many demo sets and keep the best on the valset, the
            program as it came (no demos added) competing too; ties go to fewer demos, then to
            the earlier draw. Needs a valset.
        max_labeled: also add up to this many trainset examples as demos, taken as labelled (for
            nodes whose input and output fields all appear in the examples), DSPy-style.
    """

    k: int = 4
    teacher: dict[str, Model | str] | None = None
    nodes: list[str] | None = None
    candidates: int = 0
    max_labeled: int = 0

    name = "bootstrap_demos"

    def __post_init__(self) -> None:
        for option in ("k", "candidates", "max_labeled"):
            value = getattr(self, option)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"BootstrapDemos({option}={value!r}): expected an integer >= 0")
        if self.k == 0 and self.max_labeled == 0:
            raise ConfigError("BootstrapDemos(k=0, max_labeled=0) would add no demos; set k >= 1 "
                              "(bootstrapped demos) or max_labeled >= 1 (labelled ones)")

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        targets = self._targets(pipeline, ctx)
        source = self._collect(pipeline, traces, ctx)
        pools = {path: passing_demos(source, path, node) for path, node in targets.items()}
        labeled = {path: labeled_demos(ctx.trainset, node) if self.max_labeled else []
                   for path, node in targets.items()}
        self._check(pools, labeled, source, ctx)
        passed = sum(source.passed(r) for r in source.records)
        ctx.details.update(passed=f"{passed}/{len(source.records)}",
                           pool={path: len(pool) for path, pool in pools.items()})
        if self.candidates:
            return self._search(pipeline, pools, labeled, ctx)
        chosen = {path: self._draw(pools[path], labeled[path], ctx, path) for path in targets}
        ctx.details["demos"] = {path: len(demos) for path, demos in chosen.items()}
        return with_demos(pipeline, chosen, ctx)

    # -- steps -----------------------------------------------------------------------------
    def _targets(self, pipeline: Pipeline, ctx: CompileContext) -> dict[str, LMNode]:
        """The LM nodes to give demos; raw-prompt nodes replay exact prompts, so none for them."""
        picked = select_nodes(pipeline, self.nodes, LMNode, "LM node")
        targets = {}
        for path, node in picked.items():
            if node.prompt_field is not None:
                ctx.reporter.note(f"bootstrap_demos: node '{path}' sends a raw prompt (prompt_field="
                                  f"'{node.prompt_field}'), which demos cannot change; skipped")
            else:
                targets[path] = node
        if not picked:
            raise CompileError(f"bootstrap_demos: pipeline '{pipeline.name}' has no LMNode to give "
                               f"demos (a DSPy module inside a pipeline keeps its own predictors: "
                               f"compile it with a DSPy optimizer, e.g. dspy.BootstrapFewShot("
                               f"metric=...).compile(pipeline, trainset=...)); drop this pass")
        if not targets:
            raise CompileError(f"bootstrap_demos: no node of pipeline '{pipeline.name}' can take "
                               f"demos (the LM nodes selected all send raw prompts); select nodes "
                               f"that format their prompts, or drop this pass")
        return targets

    def _collect(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Traces:
        """The traces to take demos from: the pipeline's own, or the teacher's."""
        if not self.teacher:
            return traces
        return teacher_traces(pipeline, self.teacher, ctx, "BootstrapDemos")[1]

    def _check(self, pools: dict[str, list[Candidate]], labeled: dict[str, list[Candidate]],
               source: Traces, ctx: CompileContext) -> None:
        """No demo anywhere is an error; a node without any is a note."""
        if not any(pools.values()) and not any(labeled.values()):
            raise CompileError(_nothing_passed(source, self.teacher))
        for path, pool in pools.items():
            if not pool and not labeled[path]:
                ctx.reporter.note(f"bootstrap_demos: node '{path}' made no call on an example that "
                                  f"passed the metric; its demos are left unchanged")

    def _draw(self, pool: list[Candidate], labeled: list[Candidate], ctx: CompileContext,
              salt: str) -> list[Demo]:
        """Up to `k` bootstrapped demos, then up to `max_labeled` labelled ones from examples
        not already used, each a seeded sample."""
        rng = ctx.rng(salt)
        boot = rng.sample(pool, min(self.k, len(pool)))
        used = {index for index, _ in boot}
        rest = [c for c in labeled if c[0] not in used]
        extra = rng.sample(rest, min(self.max_labeled, len(rest)))
        return [demo for _, demo in boot + extra]

    def _search(self, pipeline: Pipeline, pools: dict[str, list[Candidate]],
                labeled: dict[str, list[Candidate]], ctx: CompileContext) -> Pipeline:
        """Random search: the program as it came and `candidates` demo sets, scored on the
        valset; the best wins (ties: fewer demos, then the earlier one)."""
        if not ctx.valset:
            raise ConfigError(f"BootstrapDemos(candidates={self.candidates}) chooses among demo sets "
                              f"on a valset, and this compile has none; pass valset=... to compile "
                              f"(--val on the command line), or set candidates=0")
        # Draw 1 uses the same salt as candidates=0, so the search never loses that choice.
        options: list[tuple[Pipeline, dict[str, list[Demo]] | None]] = [(pipeline, None)]
        for draw in range(1, self.candidates + 1):
            chosen = {path: self._draw(pools[path], labeled[path], ctx,
                                       path if draw == 1 else f"{path}:draw{draw}") for path in pools}
            options.append((with_demos(pipeline, chosen, ctx), chosen))
        scored = []
        with ctx.reporter.progress("bootstrap_demos: scoring demo sets on val", len(options)) as advance:
            for index, (candidate, _) in enumerate(options):
                n_demos = sum(len(lm_nodes(candidate)[path].demos) for path in pools)
                scored.append({"draw": index, "score": ctx.traces(candidate, "val").score,
                               "demos": n_demos})
                advance(1)
        best = min(scored, key=lambda s: (-s["score"], s["demos"], s["draw"]))
        ctx.details.update(search=scored, chosen=best["draw"])
        ctx.reporter.note(f"bootstrap_demos: kept draw {best['draw']} of {len(options) - 1} "
                          f"(0 = no demos added), val score {best['score']:.3f}")
        return options[best["draw"]][0]


def passing_demos(traces: Traces, path: str, node: LMNode) -> list[Candidate]:
    """The node's (inputs + outputs) on every example that passed, one demo per distinct call."""
    fields = [*node.signature.input_fields, *node.signature.output_fields]
    seen: set[str] = set()
    out = []
    for call in traces.calls(path, passed=True):
        values = {**call.trace.inputs, **(call.trace.outputs or {})}
        if not all(f in values for f in fields):
            continue
        demo = {f: values[f] for f in fields}
        key = json.dumps(demo, sort_keys=True, default=repr)
        if key not in seen:  # a node inside Map may answer the same input many times
            seen.add(key)
            out.append((call.record.index, demo))
    return out


def labeled_demos(examples: list[dict[str, Any]], node: LMNode) -> list[Candidate]:
    """Trainset examples that carry every field of the node's signature, as demos."""
    fields = [*node.signature.input_fields, *node.signature.output_fields]
    return [(i, {f: ex[f] for f in fields}) for i, ex in enumerate(examples)
            if all(f in ex for f in fields)]


def with_demos(pipeline: Pipeline, chosen: dict[str, list[Demo]], ctx: CompileContext) -> Pipeline:
    """A copy of `pipeline` whose nodes at the given paths carry these demos (an empty list
    leaves a node as it was)."""
    new = ctx.copy(pipeline)
    nodes = lm_nodes(new)
    for path, demos in chosen.items():
        if demos:
            nodes[path].demos = [dict(d) for d in demos]
    return new


def _nothing_passed(source: Traces, teacher: dict[str, Any] | None) -> str:
    who = "the teacher" if teacher else "the pipeline"
    n = len(source.records)
    passed = sum(source.passed(r) for r in source.records)
    errors = [r.error for r in source.records if r.error is not None]
    if passed == 0:
        why = f"none of the {n} training examples passed the metric when run with {who}"
    else:
        why = (f"{passed} of {n} training examples passed with {who}, but the selected nodes made "
               f"no successful call on them")
    hint = f"; first error: {errors[0]}" if errors else ""
    return (f"bootstrap_demos: {why}, so there is no trace to take demos from{hint}. Expected at "
            f"least one passing run of each node; check the metric by hand on a few examples, "
            f"give a stronger teacher (teacher={{'small': large_model}}), or set max_labeled=N to "
            f"use labelled trainset examples")
