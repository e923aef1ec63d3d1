"""`Map`: run a node over every element of a list field — e.g. solve each sub-question a
decomposer wrote — as one batch for all elements of all examples.

    decompose = Decompose(model="small")                       # question -> subquestions
    solve_each = Map(Solve("subquestion -> subanswer", model="large", name="solve_sub"),
                     over="subquestions", into="subanswers")
    Pipeline([decompose, solve_each, final], models=...)

For every example, each element of `over` becomes one input of the mapped node (bound to its
single "item" input field, together with the `context` fields copied from the example). All
elements of all examples go to the node in ONE `ctx.run` call, so an LM node sends them to its
model as one backend batch. The node's output field is gathered back, in order, into the list
field `into`.
"""

from __future__ import annotations

from typing import Any

from tandemlm.compose import Node, NodeTrace, RunContext
from tandemlm.compose.composite import Composite, child_error, parent_trace
from tandemlm.compose.node import Fields
from tandemlm.runtime import ConfigError


def _item_field(node: Node, context: tuple[str, ...], over: str) -> str:
    """The node's one input field not supplied by `context`: where each element goes."""
    unknown = [c for c in context if c not in node.input_fields]
    if unknown:
        raise ConfigError(f"Map over node '{node.name}': context field(s) {', '.join(unknown)} "
                          f"are not inputs of the node (its inputs: "
                          f"{', '.join(node.input_fields)}); drop them from context=")
    items = [f for f in node.input_fields if f not in context]
    if len(items) != 1:
        found = ", ".join(items) or "none"
        raise ConfigError(f"Map over node '{node.name}': the node must have exactly one input "
                          f"field that is not in context= to receive each element of '{over}', "
                          f"but it has {found}; list the fields copied from the example in "
                          f"context=")
    return items[0]


def _output_field(node: Node, output: str | None) -> str:
    """The node's output field gathered into the list (its only one, or the one named)."""
    names = list(node.output_fields)
    if output is not None:
        if output not in names:
            raise ConfigError(f"Map over node '{node.name}': output='{output}' is not an output "
                              f"of the node (its outputs: {', '.join(names)})")
        return output
    if len(names) != 1:
        raise ConfigError(f"Map over node '{node.name}': the node has outputs "
                          f"{', '.join(names)}; pass output= to say which one to gather")
    return names[0]


class Map(Composite):
    """Run `node` over every element of the list field `over`, gathering its output into `into`.

    Args:
        node: the node run on each element (an LM node, a Step, or another composite).
        over: the input list field whose elements are mapped.
        into: the output list field, one entry per element, in element order.
        name: node name (default "map_<node name>").
        context: input fields of `node` copied unchanged from the example into every element's
            input (e.g. the original question); the node's remaining input field gets the element.
        output: which output field of `node` to gather, when it has several (e.g. a `Solve`
            with reasoning); otherwise its only output field.

    An example whose list is empty gets `[]` and makes no request. If any element fails, the
    example fails with the element's index in its error; other examples are unaffected. The
    trace has one child trace per element (in order) and `info == {"elements": n}`.
    """

    def __init__(self, node: Node, over: str = "subquestions", into: str = "subanswers", *,
                 name: str | None = None, context: tuple[str, ...] | list[str] = (),
                 output: str | None = None) -> None:
        super().__init__(name or f"map_{node.name}")
        self.node = node  # a module attribute, so named_predictors() lists a mapped LM node
        self.over, self.into, self.context = over, into, tuple(context)
        if over in self.context:
            raise ConfigError(f"Map '{self.name}': field '{over}' is both the mapped list "
                              f"(over=) and a context field; remove it from context=")
        if into == over or into in self.context:
            raise ConfigError(f"Map '{self.name}': into='{into}' must differ from its input "
                              f"fields ({', '.join([over, *self.context])}); rename it")
        self.item_field = _item_field(node, self.context, over)
        self.output_field = _output_field(node, output)

    def children(self) -> list[Node]:
        return [self.node]

    @property
    def input_fields(self) -> Fields:
        fields: Fields = {self.over: list[self.node.input_fields[self.item_field]]}
        fields.update({c: self.node.input_fields[c] for c in self.context})
        return fields

    @property
    def output_fields(self) -> Fields:
        return {self.into: list[self.node.output_fields[self.output_field]]}

    def _flatten(self, inputs: list[dict[str, Any]], traces: list[NodeTrace]
                 ) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
        """One child input per (example, element), and the (example, element) of each."""
        flat: list[dict[str, Any]] = []
        owners: list[tuple[int, int]] = []
        for i, values in enumerate(inputs):
            items = values[self.over]
            if not isinstance(items, list | tuple):
                traces[i].error = (f"field '{self.over}' must be a list to map over, got "
                                   f"{type(items).__name__}: {str(items)[:80]!r}")
                continue
            traces[i].info["elements"] = len(items)
            shared = {c: values[c] for c in self.context}
            for j, item in enumerate(items):
                flat.append({**shared, self.item_field: item})
                owners.append((i, j))
        return flat, owners

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        traces = [parent_trace(self, values) for values in inputs]
        flat, owners = self._flatten(inputs, traces)
        gathered: list[list[Any]] = [[] for _ in inputs]
        # All elements of all examples in one call: one backend batch for an LM node.
        for (i, j), child in zip(owners, ctx.run(self.node, flat), strict=True):
            traces[i].children.append(child)
            if child.error is not None:
                if traces[i].error is None:
                    traces[i].error = f"element {j} of '{self.over}' failed: {child_error(child)}"
                continue
            gathered[i].append((child.outputs or {}).get(self.output_field))
        for trace, values in zip(traces, gathered, strict=True):
            if trace.error is None:
                trace.outputs = {self.into: values}
        return traces
