"""`BestOfN`: sample n answers from a solver and keep the one a small scorer likes best (Cappy's
candidate selection; FrugalGPT's scorer applied to one model's samples).

One batch per child: the solver runs once, asked for n seeded samples per example (one request
per example with `n=n`; the backend draws each sample from its own seed), then the scorer rates
every distinct parsed sample of every example in one batch. Each example keeps its
highest-scoring sample (ties: the earliest).

    best = BestOfN(LMNode("question -> answer", model="large"), Score("small"), n=4)
    Pipeline([best], models={"large": large, "small": small})   # outputs answer, score, candidates
"""

from __future__ import annotations

import json
from typing import Any

from tandemlm.compose import Composite, LMNode, Node, NodeTrace, RunContext
from tandemlm.compose.composite import child_error, parent_trace
from tandemlm.compose.node import Fields
from tandemlm.runtime import ConfigError, TandemError


def _key(outputs: dict[str, Any]) -> str:
    return json.dumps(outputs, sort_keys=True, default=str)


class BestOfN(Composite):
    """Best of n samples of `solver`, as judged by `scorer`.

    Outputs the solver's output fields (of the chosen sample), `score` (its score) and
    `candidates` (every parsed sample, in sampling order, as a dict of its output fields plus
    its `score`). `trace.info` records the score of every sample (None for one that did not
    parse), the chosen sample's index, and how many samples parsed; `trace.children` holds the
    solver's trace and the scorer's traces, so their calls are counted.

    Args:
        solver: the LM node to sample from; its sampling options are replaced by these.
        scorer: a node with a `score` output reading the solver's inputs and outputs (a
            `Score`, typically on a small model).
        n: samples per example.
        temperature: sampling temperature (> 0: greedy samples would all be the same).
        seed: seed of every example's request; sample j draws from a seed derived from it.
        name: node name.
    """

    def __init__(self, solver: LMNode, scorer: Node, n: int = 4, *, temperature: float = 0.8,
                 seed: int = 0, name: str = "best_of_n") -> None:
        super().__init__(name)
        if not isinstance(solver, LMNode):
            raise ConfigError(f"BestOfN '{name}': the solver must be an LMNode (it is sampled and "
                              f"its samples parsed), got {type(solver).__name__}")
        if "score" not in scorer.output_fields:
            raise ConfigError(f"BestOfN '{name}': scorer '{scorer.name}' has no 'score' output "
                              f"(outputs: {', '.join(scorer.output_fields)}); use a Score node")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"BestOfN '{name}': n must be a positive integer, got {n!r}")
        if not temperature > 0:
            raise ConfigError(f"BestOfN '{name}': temperature must be > 0 to draw different "
                              f"samples, got {temperature!r}")
        clash = {"score", "candidates"} & set(solver.output_fields)
        if clash:
            raise ConfigError(f"BestOfN '{name}': the solver already outputs {sorted(clash)}, which "
                              f"BestOfN adds; rename the solver's output field")
        self.solver, self.scorer = solver, scorer
        self.n, self.temperature, self.seed = n, temperature, seed

    def children(self) -> list[Node]:
        return [self.solver, self.scorer]

    @property
    def input_fields(self) -> Fields:
        fields = dict(self.solver.input_fields)
        made = self.solver.output_fields
        fields.update({f: t for f, t in self.scorer.input_fields.items() if f not in made})
        return fields

    @property
    def output_fields(self) -> Fields:
        return {**self.solver.output_fields, "score": float, "candidates": list}

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        traces = [parent_trace(self, values) for values in inputs]
        sampler = self.solver.sampler(self.n, self.temperature, self.seed)
        runs = ctx.run(sampler, [{f: v[f] for f in self.solver.input_fields} for v in inputs])
        samples = []  # per example: one parsed output dict (or None) per sample
        rows: list[dict[str, Any]] = []
        owners: list[tuple[int, str]] = []  # (example, candidate key) of each scorer row
        for i, (trace, run) in enumerate(zip(traces, runs, strict=True)):
            trace.children.append(run)
            parsed = self._parse(run)
            samples.append(parsed)
            if all(p is None for p in parsed):
                trace.error = child_error(run) if run.error else (
                    f"none of the {len(run.raw)} samples of '{self.solver.name}' parsed")
            for key, outputs in {_key(p): p for p in parsed if p is not None}.items():
                rows.append({f: {**inputs[i], **outputs}[f] for f in self.scorer.input_fields})
                owners.append((i, key))
        scores: list[dict[str, float | None]] = [{} for _ in inputs]
        errors: list[str | None] = [None] * len(inputs)
        for (i, key), judged in zip(owners, ctx.run(self.scorer, rows), strict=True):
            traces[i].children.append(judged)
            scores[i][key] = float(judged.outputs["score"]) if judged.ok else None
            errors[i] = errors[i] or (child_error(judged) if not judged.ok else None)
        for trace, parsed, found, error in zip(traces, samples, scores, errors, strict=True):
            if trace.error is None:
                self._choose(trace, parsed, found, error)
        return traces

    def _parse(self, run: NodeTrace) -> list[dict[str, Any] | None]:
        """The last attempt's samples, parsed (None for a sample that does not parse)."""
        parsed: list[dict[str, Any] | None] = []
        for text in run.raw[-self.n:]:
            try:
                parsed.append(self.solver.parse(text))
            except TandemError:
                parsed.append(None)
        return parsed

    def _choose(self, trace: NodeTrace, parsed: list[dict[str, Any] | None],
                found: dict[str, float | None], error: str | None) -> None:
        per_sample = [found.get(_key(p)) if p is not None else None for p in parsed]
        ranked = [(s, j) for j, s in enumerate(per_sample) if s is not None]
        trace.info = {"scores": per_sample, "samples": len(parsed),
                      "parsed": sum(p is not None for p in parsed), "distinct": len(found)}
        if not ranked:
            trace.error = f"no sample could be scored: {error}"
            return
        best, chosen = max(ranked, key=lambda sj: (sj[0], -sj[1]))  # ties: the earliest sample
        trace.info["chosen"] = chosen
        candidates = [{**p, "score": s} for p, s in zip(parsed, per_sample, strict=True)
                      if p is not None]
        trace.outputs = {**parsed[chosen], "score": best, "candidates": candidates}
