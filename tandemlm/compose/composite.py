"""`Composite`: a node that holds control flow over child nodes (Map, Cascade, Rectify, ...), so
the pipeline graph stays static and inspectable while examples take different paths.

A composite's `run_batch` runs children through `ctx.run(child, inputs)` — one batch per child
per call, on only the examples that need that branch — and returns one trace per example with
the children's traces under `children` (their model calls carry the cost) and its decisions
under `info`.
"""

from __future__ import annotations

from typing import Any

import dspy

from tandemlm.compose.node import Node
from tandemlm.compose.trace import NodeTrace
from tandemlm.runtime import Model


class Composite(dspy.Module, Node):
    """Base class of composite nodes. Subclasses set `name`, declare their fields and implement
    `children()` and `run_batch()`. Children are attributes of the module, so DSPy's
    `named_predictors()` finds their LM nodes."""

    model = None

    def __init__(self, name: str) -> None:
        dspy.Module.__init__(self)
        self.name = name

    def children(self) -> list[Node]:
        raise NotImplementedError

    def diagram(self) -> list[tuple[Node, Node, str]]:
        """(child, child, label) edges that show how this composite uses its children, for
        `Pipeline.to_mermaid`; none by default."""
        return []

    def routes(self) -> list[tuple[Model | str, set[str]]]:
        """Conservatively, every input of the composite may reach every child's model;
        composites that route fields more precisely (PrivateSplit) override this."""
        mine = set(self.input_fields)
        return [(ref, mine) for child in self.children() for ref, _ in child.routes()]

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        raise NotImplementedError(f"composite '{self.name}' runs inside a Pipeline")


def child_error(child: NodeTrace) -> str:
    """The error line a parent records when a child failed."""
    return f"{child.node}: {child.error}"


def parent_trace(node: Node, inputs: dict[str, Any]) -> NodeTrace:
    return NodeTrace(node=node.name, inputs=inputs)
