"""`Score`: a small model rates a candidate for its input with a probability in [0, 1] (Cappy's
scorer, FrugalGPT's answer scorer).

Two kinds of small model can score, chosen by what the model's backend declares:

* a **cross-encoder** (`classify`, e.g. backend `hf-classifier`): the first field is the text, the
  other fields (joined by newlines) the text pair; the score is the head's positive probability.
* a **generative model** (`logprobs`, e.g. backend `hf`): it is asked a yes/no question and the
  score is P(yes) = exp(lp_yes) / (exp(lp_yes) + exp(lp_no)), from the log-probabilities of the
  two answers as the first words of its reply. The question is sent as chat messages (the
  backend applies the model's chat template)::

      system: Judge whether the answer is a correct answer to the question. Reply Yes if it is,
              No if it is not.
      user:   Question: <question>
              Answer: <answer>

              Reply Yes or No.

`yes` and `no` are the exact continuations scored after the assistant turn opens; for a model
without a chat template (plain `Assistant:` rendering) pass `yes=" Yes", no=" No"`.

Every node sends all its examples in one `ctx.classify` or one `ctx.logprobs` call.
`score_rows` is the same logic for other nodes (`Rank` uses it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from tandemlm.compose import Node, NodeTrace, RunContext
from tandemlm.compose.node import Fields
from tandemlm.compose.trace import account
from tandemlm.runtime import (ClassifyRequest, ClassifyResult, ConfigError, Model, ScoreRequest,
                              ScoreResult)

Scored = tuple[float | None, ClassifyResult | ScoreResult]


def scoring_mode(model: Model, node: str) -> str:
    """"classify" for a cross-encoder, "logprobs" for a generative model; else a `ConfigError`."""
    if model.supports("classify"):
        return "classify"
    if model.supports("logprobs"):
        return "logprobs"
    raise ConfigError(f"node '{node}' scores with model '{model.name}' (backend "
                      f"'{model.backend_name}'), which supports neither 'classify' nor 'logprobs'; "
                      f"bind it to a cross-encoder (backend 'hf-classifier') or to a generative "
                      f"model that returns log-probabilities (backend 'hf')")


def field_label(field: str) -> str:
    """How a field is named in a prompt: "top_documents" -> "Top documents"."""
    return field.replace("_", " ").capitalize()


def yes_no_messages(values: Mapping[str, Any], instructions: str, yes: str = "Yes",
                    no: str = "No") -> list[dict[str, str]]:
    """The chat messages of the yes/no question asked of a generative scorer."""
    body = "\n".join(f"{field_label(k)}: {v}" for k, v in values.items())
    return [{"role": "system", "content": instructions},
            {"role": "user", "content": f"{body}\n\nReply {yes.strip()} or {no.strip()}."}]


def p_yes(result: ScoreResult) -> float:
    """P(yes) from the log-probabilities of (yes, no), computed stably."""
    lp_yes, lp_no = result.logprobs
    top = max(lp_yes, lp_no)
    e_yes, e_no = math.exp(lp_yes - top), math.exp(lp_no - top)
    return e_yes / (e_yes + e_no)


def classify_request(row: Mapping[str, Any]) -> ClassifyRequest:
    """How a cross-encoder sees a row: the first field is the text, the others (joined by
    newlines) the text pair. Training a scorer formats its pairs with this same function."""
    first, *rest = list(row.values())
    return ClassifyRequest(text=str(first), text_pair="\n".join(map(str, rest)) or None)


def score_rows(ctx: RunContext, model: Model, rows: list[dict[str, Any]], *, node: str,
               instructions: str, yes: str = "Yes", no: str = "No") -> list[Scored]:
    """Score every row (field -> value, the first field being the text and the rest the
    candidate) in ONE model call; returns (score or None when it failed, result) per row."""
    if not rows:
        return []
    if scoring_mode(model, node) == "classify":
        results = ctx.classify(model, [classify_request(row) for row in rows])
        return [(r.positive if r.ok else None, r) for r in results]
    asks = [ScoreRequest(continuations=(yes, no),
                         messages=tuple(yes_no_messages(row, instructions, yes, no))) for row in rows]
    scored = ctx.logprobs(model, asks)
    return [(p_yes(r) if r.ok else None, r) for r in scored]


def default_instructions(fields: tuple[str, ...], yes: str = "Yes", no: str = "No") -> str:
    """What a generative scorer is asked: is the last field right for the others?"""
    subject = field_label(fields[-1]).lower()
    context = " and ".join(field_label(f).lower() for f in fields[:-1])
    what = f"a correct {subject} to the {context}" if context else "correct"
    return (f"Judge whether the {subject} is {what}. Reply {yes.strip()} if it is, "
            f"{no.strip()} if it is not.")


class Score(Node):
    """A node producing `score: float` in [0, 1] for (input, candidate).

        judge = Score(small, fields=("question", "answer"))        # reads question, answer
        Pipeline([LMNode("question -> answer", model=large), judge])

    Args:
        model: a cross-encoder (`classify`) or a generative model with `logprobs`, or the name
            of one bound by the pipeline.
        fields: input fields; the first is the input (the text), the others the candidate.
        name: node name.
        yes, no: the answers whose probabilities a generative scorer compares.
        instructions: the yes/no question's system message (generative scorers only).
        output: name of the output field.
    """

    def __init__(self, model: Model | str, *, fields: Iterable[str] = ("question", "answer"),
                 name: str = "score", yes: str = "Yes", no: str = "No",
                 instructions: str | None = None, output: str = "score") -> None:
        self.fields = tuple(fields)
        if not self.fields or len(set(self.fields)) != len(self.fields) \
                or not all(isinstance(f, str) and f for f in self.fields):
            raise ConfigError(f"Score '{name}': fields must be distinct non-empty names, got "
                              f"{self.fields!r}")
        if not yes or not no or yes == no:
            raise ConfigError(f"Score '{name}': yes and no must be two different non-empty "
                              f"strings, got {yes!r} and {no!r}")
        if output in self.fields:
            raise ConfigError(f"Score '{name}': output field '{output}' is also an input field")
        if isinstance(model, Model):
            scoring_mode(model, name)  # fail at build time, not mid-run
        self.model, self.name, self.output = model, name, output
        self.yes, self.no = yes, no
        self.instructions = instructions or default_instructions(self.fields, yes, no)
        #: copies of the trained scorer, each trained without one fold of the examples
        #: (`TrainScorer(folds=k)`); the compiler scores example x with folds[fold_of(x, k)]
        self.folds: list[Model] = []

    def state(self) -> dict[str, Any]:
        return {**super().state(), **({"folds": list(self.folds)} if self.folds else {})}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore `state()`; a state without `folds` (a scorer trained anew) drops the old ones."""
        folds = state.get("folds") or []
        if not isinstance(folds, list) or not all(isinstance(m, Model) for m in folds) \
                or len(folds) == 1:
            raise ConfigError(f"Score '{self.name}': state 'folds' must be a list of two or more "
                              f"models (the scorer's cross-fitted copies), got {folds!r}")
        super().set_state(state)
        self.folds = folds

    @property
    def input_fields(self) -> Fields:
        return {f: Any for f in self.fields}

    @property
    def output_fields(self) -> Fields:
        return {self.output: float}

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        model = ctx.model(self.model)
        if model is None:
            raise ConfigError(f"node '{self.name}' has no model bound")
        traces = [NodeTrace(node=self.name, inputs=values, model=model.name) for values in inputs]
        rows = [{f: values[f] for f in self.fields} for values in inputs]
        scored = score_rows(ctx, model, rows, node=self.name, instructions=self.instructions,
                            yes=self.yes, no=self.no)
        for trace, (score, result) in zip(traces, scored, strict=True):
            account(trace, model, result)
            if score is None:
                trace.error = f"backend error: {result.error}"
            else:
                trace.outputs = {self.output: score}
        return traces
