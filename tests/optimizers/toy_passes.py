"""A test pass shared by the artifact tests: `SetDemo` changes node state and counts its runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tandemlm.optimizers import Pass, lm_nodes

APPLIED: Counter = Counter()


@dataclass
class SetDemo(Pass):
    """Test pass: gives node 'solve' one demo with this answer."""

    answer: str = "A"
    name = "set_demo"

    def apply(self, pipeline, traces, ctx):
        APPLIED[self.name] += 1
        new = ctx.copy(pipeline)
        lm_nodes(new)["solve"].demos = [{"question": "a", "answer": self.answer}]
        return new
