"""`Decompose` (DaSLaM): a small model breaks a question into sub-questions for a large solver.

DaSLaM (Juneja et al., 2023) fine-tunes a small decomposer that writes sub-questions for a
frozen large solver, conditioned on the solver's first attempt at the whole question, so the
sub-questions aim at the steps the solver got wrong. `conditioned=True` gives that signature;
the default is the plain `question -> subquestions`. Pair it with `Map` to solve every
sub-question in one batch:

    decompose = Decompose(model="small", max_subquestions=4)
    solve_each = Map(Solve("subquestion -> subanswer", model="large", name="solve_sub"))
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import dspy
from pydantic import Field, StringConstraints

from tandemlm.compose import LMNode
from tandemlm.runtime import ConfigError, Model, ParseError

INSTRUCTIONS = (
    "Break the question into at most {k} short sub-questions that, answered in order, lead to its "
    "answer. Good sub-questions are self-contained (each can be answered on its own, without "
    "the others), each asks for exactly one intermediate fact or value the final answer needs, "
    "they come in the order the steps must be solved, and together they cover every step. Do "
    "not answer them. A question that needs no decomposition gets a single sub-question."
)
CONDITIONED = (
    " You are also given the solver's first attempt at the question: aim the sub-questions at "
    "the steps it skipped or got wrong, and do not repeat its mistakes."
)
MAX_CHARS = 120  # of one sub-question, under a grammar
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


def _section(text: str, field: str) -> str | None:
    """The text of the `[[ ## field ## ]]` section of a ChatAdapter completion, if present."""
    match = re.search(rf"\[\[ ## {re.escape(field)} ## \]\]\s*\n(.*?)(?=\[\[ ## |\Z)", text, re.S)
    return match.group(1).strip() if match else None


def _as_lines(section: str) -> list[str]:
    """Sub-questions written one per line, as a bulleted or numbered list."""
    return [_BULLET.sub("", line).strip() for line in section.splitlines() if line.strip()]


class Decompose(LMNode):
    """An LM node that writes the sub-questions of a question: `question -> subquestions:
    list[str]`, or with `conditioned=True` (DaSLaM) `question, first_attempt -> subquestions`.

    Args:
        model: the decomposer (typically a small, trainable model) or a bound model name.
        name: node name.
        conditioned: also read the solver's first attempt (field `first_attempt`).
        max_subquestions: at most this many sub-questions are kept (extra ones are dropped when
            parsing) and the instructions ask for at most this many.
        **lm_options: passed to `LMNode` (instructions, demos, max_tokens, temperature, ...).

    Parsing takes the adapter's list (a JSON/Python list), and, when a small model writes the
    sub-questions one per line instead ("1. ...", "- ..."), the lines. Empty entries are dropped;
    an empty list is a valid answer (a `Map` over it makes no request).
    """

    def __init__(self, model: Model | str, *, name: str = "decompose", conditioned: bool = False,
                 max_subquestions: int = 5, **lm_options: Any) -> None:
        if not isinstance(max_subquestions, int) or max_subquestions < 1:
            raise ConfigError(f"Decompose '{name}': max_subquestions must be a positive integer, "
                              f"got {max_subquestions!r}")
        inputs = "question, first_attempt" if conditioned else "question"
        signature = dspy.Signature(f"{inputs} -> subquestions: list[str]")
        signature = signature.with_updated_fields(
            "subquestions", desc=f"at most {max_subquestions} self-contained sub-questions, in order")
        if conditioned:
            signature = signature.with_updated_fields(
                "first_attempt", desc="the solver's first attempt at the whole question")
        instructions = INSTRUCTIONS.format(k=max_subquestions) + (CONDITIONED if conditioned else "")
        lm_options.setdefault("instructions", instructions)
        lm_options.setdefault("max_tokens", 64 * max_subquestions)
        super().__init__(signature, model=model, name=name, **lm_options)
        self.conditioned = conditioned
        self.max_subquestions = max_subquestions

    def grammar_signature(self) -> Any:
        """Under constrained decoding, 1 to `max_subquestions` non-blank sub-questions of at most
        `MAX_CHARS` characters: a bare `list[str]` lets a small model close the list at once
        (`[]`, its likeliest reply) or run one string on until max_tokens cuts it."""
        item = Annotated[str, StringConstraints(pattern=r"\S", max_length=MAX_CHARS)]
        bounded = Annotated[list[item], Field(min_length=1, max_length=self.max_subquestions)]
        return self.signature.with_updated_fields("subquestions", type_=bounded)

    def parse(self, text: str, adapter: Any = None) -> dict[str, Any]:
        """The sub-questions in `text`, cleaned and truncated to `max_subquestions`."""
        try:
            items = super().parse(text, adapter)["subquestions"]
        except ParseError:
            section = _section(text, "subquestions")
            if not section:
                raise
            items = _as_lines(section)
        if self.prompt_field is not None and isinstance(items, str):
            items = _as_lines(items)  # a raw-prompt node gets the whole completion as one string
        cleaned = [str(item).strip() for item in items if str(item).strip()]
        return {"subquestions": cleaned[: self.max_subquestions]}
