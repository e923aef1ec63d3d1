"""Judges decide whether a cascade stage's answer is good enough: each gives every answered
example a score in [0, 1], compared with the stage's threshold.

- any node with a `score` output (a `Score` or `Verify` node) reads the stage's inputs and the
  solver's outputs: `NodeJudge` (what a plain node passed as a judge becomes);
- `Agreement(k)`: the fraction of k samples from the same solver that agree with its answer;
- `AnswerLogprob()`: the solver's own mean token probability of the answer it wrote.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tandemlm.compose import LMNode, Node, NodeTrace, RunContext
from tandemlm.compose.trace import account
from tandemlm.runtime import ConfigError, ScoreRequest


def answer_key(answer: Any) -> str:
    """What two answers must share to agree: the text lowercased, without punctuation, articles,
    escaped whitespace or extra spaces ("['A\\n']" and "a" agree); for a long answer (a worked
    solution) its last number, which is where such answers put the result."""
    raw = re.sub(r"(?<=\d),(?=\d)", "", str(answer).replace("\\n", " ").replace("\\t", " "))
    words = re.sub(r"[^a-z0-9. ]", " ", raw.lower()).split()
    words = [w for w in words if w not in ("a", "an", "the")] if len(words) > 1 else words
    if len(words) > 8:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", raw)
        if numbers:
            return numbers[-1]
    return " ".join(words).strip(". ")


def _same(a: Any, b: Any) -> bool:
    return answer_key(a) == answer_key(b)


class Judge:
    """Scores a stage's answers. `score` returns one score per example (None when it failed)
    and the traces of the judging calls, one per example."""

    name = "judge"

    def input_fields(self, solver: Node) -> set[str]:
        return set()

    def routes(self, solver: Node) -> list[tuple[Any, set[str]]]:
        return []

    def score(self, ctx: RunContext, solver: Node, inputs: list[dict[str, Any]],
              answers: list[NodeTrace], earlier: list[list[dict[str, Any]]] | None = None,
              ) -> tuple[list[float | None], list[NodeTrace]]:
        """`earlier[i]`: the outputs earlier cascade stages gave example i (a judge may compare)."""
        raise NotImplementedError


class NodeJudge(Judge):
    """A node whose `score` output judges (stage inputs + solver outputs)."""

    def __init__(self, node: Node) -> None:
        if "score" not in node.output_fields:
            raise ConfigError(f"node '{node.name}' cannot judge a cascade stage: it has no 'score' "
                              f"output (outputs: {', '.join(node.output_fields)}); use a Score or "
                              f"Verify node")
        self.node, self.name = node, node.name

    def input_fields(self, solver: Node) -> set[str]:
        return set(self.node.input_fields) - set(solver.output_fields)

    def routes(self, solver: Node) -> list[tuple[Any, set[str]]]:
        return self.node.routes()

    def score(self, ctx, solver, inputs, answers, earlier=None):
        rows = [{f: {**x, **(a.outputs or {})}[f] for f in self.node.input_fields}
                for x, a in zip(inputs, answers, strict=True)]
        traces = ctx.run(self.node, rows)
        return [float(t.outputs["score"]) if t.ok else None for t in traces], traces


class Agreement(Judge):
    """Self-consistency: sample `k` more answers from the stage's solver (one batch, seeded) and
    score the fraction whose `field` equals the stage's answer (normalised text)."""

    name = "agreement"

    def __init__(self, k: int = 4, field: str = "answer", temperature: float = 0.8, seed: int = 0):
        if k < 1:
            raise ConfigError(f"Agreement needs k >= 1 samples, got {k}")
        self.k, self.field, self.temperature, self.seed = k, field, temperature, seed

    def routes(self, solver: Node) -> list[tuple[Any, set[str]]]:
        return solver.routes()

    def score(self, ctx, solver, inputs, answers, earlier=None):
        if not isinstance(solver, LMNode):
            raise ConfigError("Agreement judges LM-node solvers only")
        sampler = solver.sampler(self.k, self.temperature, self.seed)
        sampler.name = f"{solver.name}.samples"
        traces = ctx.run(sampler, inputs)
        scores: list[float | None] = []
        for answer, trace in zip(answers, traces, strict=True):
            mine = (answer.outputs or {}).get(self.field, "")
            votes = []
            for text in trace.raw[-self.k:]:
                try:
                    votes.append(_same(solver.parse(text).get(self.field, ""), mine))
                except Exception:  # an unparsable sample disagrees
                    votes.append(False)
            scores.append(sum(votes) / self.k if trace.raw else None)
        return scores, traces


class AnswerLogprob(Judge):
    """The solver's confidence in its own answer: exp(mean log-probability per token) of the
    completion it generated, from one batched `logprobs` call on the same prompt."""

    name = "answer_logprob"

    def routes(self, solver: Node) -> list[tuple[Any, set[str]]]:
        return solver.routes()

    def score(self, ctx, solver, inputs, answers, earlier=None):
        if not isinstance(solver, LMNode):
            raise ConfigError("AnswerLogprob judges LM-node solvers only")
        model = ctx.model(solver.model)
        model.require("logprobs")
        requests = solver.requests(inputs, strict=True)
        scored = ctx.logprobs(model, [
            ScoreRequest(continuations=(a.raw[-1] if a.raw else "",), messages=r.messages, prompt=r.prompt)
            for r, a in zip(requests, answers, strict=True)])
        scores: list[float | None] = []
        traces = []
        for result in scored:
            trace = NodeTrace(node=f"{solver.name}.logprob", inputs={}, model=model.name)
            account(trace, model, result)
            if result.ok and result.token_logprobs and result.token_logprobs[0]:
                tokens = result.token_logprobs[0]
                scores.append(math.exp(sum(tokens) / len(tokens)))
            else:
                trace.error = result.error or "no tokens to score"
                scores.append(None)
            traces.append(trace)
        return scores, traces


def as_judge(judge: Node | Judge | None) -> Judge | None:
    if judge is None or isinstance(judge, Judge):
        return judge
    return NodeJudge(judge)
