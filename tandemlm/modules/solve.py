"""`Solve`: the solver's seat — answer a question, optionally writing reasoning first."""

from __future__ import annotations

from typing import Any

import dspy

from tandemlm.compose import LMNode
from tandemlm.runtime import Model


class Solve(LMNode):
    """An LM node that produces an answer, like `dspy.Predict`, or with `reasoning=True` like
    `dspy.ChainOfThought` (a `reasoning` output field comes before the others).

        solve = Solve("question -> answer", model=large, reasoning=True)
    """

    def __init__(self, signature: str | type[dspy.Signature] = "question -> answer", *,
                 model: Model | str, reasoning: bool = False, name: str = "solve",
                 **options: Any) -> None:
        if reasoning:
            signature = dspy.ensure_signature(signature).prepend(
                "reasoning", dspy.OutputField(desc="Think step by step before answering."), type_=str)
        super().__init__(signature, model=model, name=name, **options)
        self.reasoning = reasoning
