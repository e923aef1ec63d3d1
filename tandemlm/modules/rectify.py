"""`Rectify`: KALMV's bounded verify-and-rectify loop, keyed by the verifier's verdict.

Turn 0 answers every question with its first retrieved passage as evidence. Every turn then
verifies (question, evidence, answer), and what happens next depends on the verdict:

    retrieval_error  -> take the next passage of the retriever's ranked list and re-answer
    generation_error -> re-answer on the same evidence with a new sample (temperature > 0, a
                        turn-specific seed: deterministic, yet different from earlier turns)
    correct          -> stop

An example stops at `correct`, after `max_turns` answers, or when the ranked list runs out; one
that never got `correct` keeps, by default, the answer its verifier scored highest (P(correct))
over all turns, since a rectified answer is not always a better one. Only the examples still
being rectified go to the next turn, and each turn runs each child once on all of them (the
solver on re-retrieved examples, its resampling copy on regenerated ones, the verifier on
both), so a turn is a handful of batches, never a call per example.

    rectify = Rectify(Solve("question, evidence -> answer", model="large"), Verify("small"),
                      Retrieve(corpus, k=3), max_turns=3)
    # inputs: question; outputs: answer, evidence, verdict, turns
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tandemlm.compose import Composite, LMNode, Node, NodeTrace, RunContext
from tandemlm.compose.composite import child_error, parent_trace
from tandemlm.compose.node import Fields
from tandemlm.runtime import ConfigError

ACTIONS = {"retrieval_error": "retrieve", "generation_error": "regenerate", "correct": "stop"}


@dataclass(eq=False)
class _State:
    """One example's progress through the loop."""

    values: dict[str, Any]
    trace: NodeTrace
    passages: list[str] = field(default_factory=list)
    rank: int = 0
    action: str = "answer"  # what this turn does: answer | retrieve | regenerate | stop
    candidate: Any = None  # this turn's answer, until its verdict arrives
    #: every verified turn: (answer, evidence rank, verdict, verifier score or None)
    verified: list[tuple[Any, int, str, float | None]] = field(default_factory=list)

    @property
    def evidence(self) -> str:
        return self.passages[self.rank]

    @property
    def verdict(self) -> str:
        return self.verified[-1][2]


class Rectify(Composite):
    """Answer, verify, and rectify by re-retrieving or regenerating, for at most `max_turns`.

    Args:
        solver: a node reading `question` (and its other inputs) and `evidence`, producing
            `answer`; an `LMNode` unless `resample` is given.
        verifier: a node reading the solver's inputs and `answer`, producing `verdict` (`Verify`).
        retriever: a node producing one field, the ranked passages (`Retrieve`).
        max_turns: the most answers per example (1 = answer and verify once).
        name: node name.
        actions: verdict -> "retrieve" | "regenerate" | "stop", for every verdict the verifier
            can give (default: KALMV's three).
        temperature, seed: a regeneration at turn t samples at `temperature` with seed `seed + t`.
        resample: `fn(solver, turn) -> node` making the regenerating solver, for solvers that
            are not `LMNode`s (or another resampling scheme, e.g. a different instruction).
        keep: for an example that never got a stop verdict, "best" keeps the turn whose verdict
            had the highest `score` output (P(correct); ties go to the later turn), "last" the
            last verified turn (KALMV's choice).
    """

    def __init__(self, solver: Node, verifier: Node, retriever: Node, *, max_turns: int = 3,
                 name: str = "rectify", actions: Mapping[str, str] | None = None,
                 temperature: float = 0.7, seed: int = 0,
                 resample: Callable[[Node, int], Node] | None = None,
                 keep: Literal["best", "last"] = "best") -> None:
        super().__init__(name)
        if max_turns < 1:
            raise ConfigError(f"Rectify max_turns must be >= 1, got {max_turns}")
        if keep not in ("best", "last"):
            raise ConfigError(f"Rectify keep must be 'best' or 'last', got {keep!r}")
        self.keep = keep
        self.solver, self.verifier, self.retriever = solver, verifier, retriever
        self.max_turns, self.temperature, self.seed = max_turns, temperature, seed
        self.actions = dict(actions or ACTIONS)
        self._check(resample)
        self.resample = resample

    def _check(self, resample: Callable | None) -> None:
        if "answer" not in self.solver.output_fields or "evidence" not in self.solver.input_fields:
            raise ConfigError(f"Rectify solver '{self.solver.name}' must read 'evidence' and produce "
                              f"'answer' (e.g. Solve('question, evidence -> answer', ...))")
        if "verdict" not in self.verifier.output_fields:
            raise ConfigError(f"Rectify verifier '{self.verifier.name}' must produce 'verdict' "
                              f"(e.g. Verify(model))")
        if len(self.retriever.output_fields) != 1:
            raise ConfigError(f"Rectify retriever '{self.retriever.name}' must produce exactly one "
                              f"field, the ranked passages; it produces "
                              f"{list(self.retriever.output_fields)}")
        bad = {a for a in self.actions.values() if a not in ("retrieve", "regenerate", "stop")}
        missing = [o for o in getattr(self.verifier, "options", ()) if o not in self.actions]
        if bad or missing:
            raise ConfigError(f"Rectify actions must map every verdict of '{self.verifier.name}' "
                              f"to 'retrieve', 'regenerate' or 'stop'; unknown actions "
                              f"{sorted(bad)}, unmapped verdicts {missing}")
        if resample is None and not isinstance(self.solver, LMNode) and \
                "regenerate" in self.actions.values():
            raise ConfigError(f"Rectify cannot resample solver '{self.solver.name}', which is not an "
                              f"LMNode; pass resample=fn(solver, turn) -> node")

    def _resampled(self, solver: LMNode, turn: int) -> LMNode:
        """A copy of an `LMNode` solver sampling at `temperature` with seed `seed + turn`.

        The copy records its DSPy trace under the original node, so DSPy optimizers, which find
        predictors by identity, see the solver they know."""
        node = copy.copy(solver)
        node.config = {**solver.config, "temperature": self.temperature, "seed": self.seed + turn}
        node._record_dspy_trace = solver._record_dspy_trace
        return node

    def children(self) -> list[Node]:
        return [self.retriever, self.solver, self.verifier]

    @property
    def input_fields(self) -> Fields:
        made = {"evidence", "answer", *self.retriever.output_fields}
        fields: Fields = dict(self.retriever.input_fields)
        for child in (self.solver, self.verifier):
            fields.update({k: v for k, v in child.input_fields.items() if k not in made})
        return fields

    @property
    def output_fields(self) -> Fields:
        return {"answer": self.solver.output_fields["answer"], "evidence": str,
                "verdict": self.verifier.output_fields["verdict"], "turns": int}

    # -- execution -----------------------------------------------------------------------
    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        states = [_State(values=dict(v), trace=parent_trace(self, v)) for v in inputs]
        self._retrieve(ctx, states)
        for s in states:
            s.trace.info.update(verdicts=[], evidence_rank=[], actions=[])
        active = [s for s in states if s.trace.error is None]
        for turn in range(self.max_turns):
            again = [s for s in active if s.action == "regenerate"]
            fresh = [s for s in active if s.action != "regenerate"]
            answered = self._answer(ctx, self.solver, fresh, turn)
            if again:
                answered += self._answer(ctx, (self.resample or self._resampled)(self.solver, turn),
                                         again, turn)
            answered = [s for s in states if any(s is a for a in answered)]  # example order
            active = [s for s in self._verify(ctx, answered, turn) if self._next(s, turn)]
        return [self._finish(s) for s in states]

    def _retrieve(self, ctx: RunContext, states: list[_State]) -> None:
        (out,) = self.retriever.output_fields
        rows = [{f: s.values[f] for f in self.retriever.input_fields} for s in states]
        for s, child in zip(states, ctx.run(self.retriever, rows), strict=True):
            s.trace.children.append(child)
            if child.error is not None:
                s.trace.error = child_error(child)
            elif not child.outputs[out]:
                s.trace.error = f"{self.retriever.name}: retrieved no passages"
            else:
                s.passages = list(child.outputs[out])

    def _answer(self, ctx: RunContext, solver: Node, states: list[_State], turn: int) -> list[_State]:
        """Run `solver` on `states` (one batch); returns the states that got an answer."""
        rows = [{**{f: s.values[f] for f in solver.input_fields if f != "evidence"},
                 "evidence": s.evidence} for s in states]
        done = []
        for s, child in zip(states, ctx.run(solver, rows), strict=True):
            s.trace.children.append(child)
            s.trace.info["actions"].append(s.action)
            s.trace.info["evidence_rank"].append(s.rank)
            if self._failed(s, child, turn):
                continue
            s.candidate = child.outputs["answer"]
            done.append(s)
        return done

    def _verify(self, ctx: RunContext, states: list[_State], turn: int) -> list[_State]:
        """Run the verifier on `states` (one batch); returns the states that got a verdict."""
        done = []
        rows = [{**{f: s.values[f] for f in self.verifier.input_fields
                    if f not in ("evidence", "answer")},
                 "evidence": s.evidence, "answer": s.candidate} for s in states]
        for s, child in zip(states, ctx.run(self.verifier, rows), strict=True):
            s.trace.children.append(child)
            if self._failed(s, child, turn):
                continue
            verdict, score = child.outputs["verdict"], child.outputs.get("score")
            s.verified.append((s.candidate, s.rank, verdict, score))
            s.trace.info["verdicts"].append(verdict)
            done.append(s)
        return done

    def _failed(self, s: _State, child: NodeTrace, turn: int) -> bool:
        """A failing child sinks the example at turn 0; later, the verified turns stand."""
        if child.error is None:
            return False
        if turn == 0:
            s.trace.error = child_error(child)
        else:
            s.trace.info["stop"] = f"error at turn {turn}: {child_error(child)}"
        s.action = "stop"
        return True

    def _next(self, s: _State, turn: int) -> bool:
        """Decide this example's next action from its verdict; True when it goes on."""
        action = self.actions.get(s.verdict, "stop")
        if action == "stop":
            s.trace.info["stop"] = str(s.verdict)
        elif turn + 1 >= self.max_turns:
            s.trace.info["stop"] = "max_turns"
            action = "stop"
        elif action == "retrieve" and s.rank + 1 >= len(s.passages):
            s.trace.info["stop"] = "no more evidence"
            action = "stop"
        elif action == "retrieve":
            s.rank += 1
        s.action = action
        return action != "stop"

    def _finish(self, s: _State) -> NodeTrace:
        if s.trace.error is not None:
            return s.trace
        chosen = len(s.verified) - 1
        if self.keep == "best" and self.actions.get(s.verdict) != "stop":
            scores = [(score if score is not None else float("-inf"), i)
                      for i, (*_, score) in enumerate(s.verified)]
            chosen = max(scores)[1]
        answer, rank, verdict, _ = s.verified[chosen]
        s.trace.info["kept_turn"] = chosen
        s.trace.outputs = {"answer": answer, "evidence": s.passages[rank], "verdict": verdict,
                           "turns": len(s.verified)}
        return s.trace
