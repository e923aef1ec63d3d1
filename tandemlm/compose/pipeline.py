"""`Pipeline`: named nodes wired by field names into a validated DAG; also a `dspy.Module`.

    pipe = Pipeline([
        LMNode("question -> subquestion", model="small", name="decompose"),
        LMNode("question, subquestion -> answer", model="large", name="solve"),
    ], models={"small": small, "large": large})
    pipe(question="...")            # one example  -> dspy.Prediction
    pipe.batch([{"question": ...}])  # many examples -> list[ExampleResult], stage-batched

A DSPy module goes in as it is (`DSPyModule` wraps it: its LM calls batch across examples), and a
`dspy.LM` (`dspy.settings.lm`) serves as a model wherever a `Model` does:

    Pipeline([dspy.ChainOfThought("question -> answer")], models={"lm": dspy.settings.lm})
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import dspy

from tandemlm.compose.context import RunContext
from tandemlm.compose.dspy_module import DSPyModule, as_node
from tandemlm.compose.executor import run_stages
from tandemlm.compose.graph import build_graph, stages, to_mermaid
from tandemlm.compose.node import Node
from tandemlm.compose.privacy import check_private_flow
from tandemlm.compose.trace import ExampleResult
from tandemlm.runtime import ConfigError, GraphError, Model, TandemError
from tandemlm.runtime.backends.dspy_bridge import as_model


class Pipeline(dspy.Module):
    """A program: nodes, the models they are bound to, and the graph between them.

    Args:
        nodes: the nodes, in any order: tandem nodes, and DSPy modules as they are (a single
            `dspy.Module` is a one-node pipeline).
        models: names -> `Model` (or `dspy.LM`), for nodes bound to a model by name; a DSPy
            module with no model of its own uses the only one bound here (else
            `dspy.settings.lm`).
        inputs: the input fields; when given, a node reading an unknown field is a build error.
        edges: extra (producer, consumer) ordering edges, on top of those inferred from fields.
        private: input fields whose values must never reach a remote model: a graph where one
            could is refused here, and every request is re-checked at run time.
        name: a name for reports.
    """

    def __init__(self, nodes: list[Node] | Any, *, models: Mapping[str, Model | Any] | None = None,
                 inputs: Iterable[str] | None = None, edges: Iterable[tuple[str, str]] = (),
                 private: Iterable[str] = (), name: str = "pipeline") -> None:
        super().__init__()
        if isinstance(nodes, dspy.Module) and not isinstance(nodes, Node):
            nodes = [nodes]
        if not nodes:
            raise GraphError("a pipeline needs at least one node")
        self.name = name
        self.models = {key: m if isinstance(m, Model) else as_model(m, name=key)
                       for key, m in (models or {}).items()}
        nodes = [as_node(n) for n in nodes]
        if len(self.models) == 1:  # DSPy modules without a model of their own use the one bound
            for node in nodes:
                if isinstance(node, DSPyModule) and node.model is None:
                    node.model = next(iter(self.models))
        self.edges = list(edges)
        self._declared_inputs = list(inputs) if inputs is not None else None
        self.graph = build_graph(list(nodes), models=self.models, inputs=self._declared_inputs,
                                 edges=self.edges)
        # Composites such as PrivateSplit declare private fields of their own.
        self.private = frozenset(private).union(*(getattr(n, "private_fields", ()) for n in nodes))
        check_private_flow(self.graph, self.private, self._resolve)
        # A dict attribute so dspy's named_predictors() finds every LM node ("nodes['solve']").
        self.nodes = {node.name: node for node in nodes}

    # -- structure ---------------------------------------------------------------------------
    @property
    def input_fields(self) -> list[str]:
        """Fields the examples must supply."""
        if self._declared_inputs is not None:
            return list(self._declared_inputs)
        produced = {f for n in self.nodes.values() for f in n.output_fields}
        seen: dict[str, None] = {}
        for node in self.nodes.values():
            seen.update({f: None for f in node.input_fields if f not in produced})
        return list(seen)

    @property
    def output_fields(self) -> list[str]:
        return [f for n in self.nodes.values() for f in n.output_fields]

    def stages(self) -> list[list[str]]:
        return stages(self.graph)

    def _resolve(self, ref: Model | str | None) -> Model | None:
        return self.models[ref] if isinstance(ref, str) else ref

    def resolve(self, ref: Model | str | None) -> Model | None:
        """The `Model` a node's model reference (a Model, a bound name or None) stands for."""
        return self._resolve(ref)

    def run_context(self, examples: Iterable[Mapping[str, Any]]) -> RunContext:
        """The run context the executor would give these examples' nodes (model resolution and
        the private-value guard), for running single nodes outside the executor (the compiler)."""
        secrets = frozenset(str(e[f]) for e in examples for f in self.private if f in e and str(e[f]))
        return RunContext(resolve=self._resolve, private_values=secrets)

    def model_of(self, node: Node | str) -> Model | None:
        """The model a node runs on, resolving names bound by this pipeline."""
        node = self.nodes[node] if isinstance(node, str) else node
        return self._resolve(node.model)

    def models_used(self) -> dict[str, Model]:
        """Display name -> model, for every model some node (or a composite's child) calls."""
        found = (self._resolve(ref) for n in self.nodes.values() for ref, _ in n.routes())
        return {m.name: m for m in found if m is not None}

    def with_models(self, **bindings: Model) -> Pipeline:
        """A copy with some model names rebound (e.g. a teacher in a small node's seat)."""
        unknown = set(bindings) - set(self.models)
        if unknown:
            raise ConfigError(f"with_models: no model named {', '.join(sorted(unknown))} in this "
                              f"pipeline (bound: {', '.join(sorted(self.models))})")
        clone = copy.deepcopy(self)
        clone.models.update(bindings)
        return clone

    def to_mermaid(self) -> str:
        return to_mermaid(self.graph, self.input_fields)

    # -- execution ---------------------------------------------------------------------------
    def batch(self, examples: Iterable[Mapping[str, Any]] | Any, **_: Any) -> list[ExampleResult]:
        """Run many examples stage by stage, one backend batch per LM node per stage.

        Examples are dicts or `dspy.Example`s; extra fields (labels) are ignored. A failing
        example carries its error and never sinks the others.
        """
        rows = [dict(e.toDict() if hasattr(e, "toDict") else e) for e in examples]
        return run_stages(self.graph, rows, self.input_fields, self._resolve, self.private)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Run one example through the same executor as `batch`."""
        (result,) = self.batch([inputs])
        if result.error is not None:
            raise TandemError(f"pipeline '{self.name}' failed on this example: {result.error}")
        return dspy.Prediction(**result.outputs)
