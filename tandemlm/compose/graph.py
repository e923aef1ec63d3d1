"""Build and validate a pipeline's graph with networkx, before anything runs.

Edges come from field names: a node that reads field `f` depends on the one node that produces
`f`. Explicit `(producer, consumer)` edges add ordering on top. Every error names the node and
the field, and says how to fix it.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

from tandemlm.compose.node import Node
from tandemlm.runtime import GraphError, Model


def _compatible(produced: Any, consumed: Any) -> bool:
    if produced is Any or consumed is Any or produced == consumed:
        return True
    if isinstance(produced, type) and isinstance(consumed, type):
        return issubclass(produced, consumed)
    p_origin, c_origin = typing.get_origin(produced), typing.get_origin(consumed)
    if c_origin is None and isinstance(consumed, type) and isinstance(p_origin, type):
        return issubclass(p_origin, consumed)  # list[str] feeds list
    if p_origin is not None and p_origin == c_origin:
        p_args, c_args = typing.get_args(produced), typing.get_args(consumed)
        return len(p_args) == len(c_args) and all(map(_compatible, p_args, c_args))
    return False


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def producers_of(nodes: Iterable[Node]) -> dict[str, str]:
    """field -> the name of the node producing it; raises on two producers."""
    producers: dict[str, str] = {}
    for node in nodes:
        for field in node.output_fields:
            if field in producers:
                raise GraphError(f"field '{field}' is produced by two nodes, '{producers[field]}' "
                                 f"and '{node.name}'; a field must have exactly one producer — "
                                 f"rename one of the outputs")
            producers[field] = node.name
    return producers


def build_graph(nodes: list[Node], *, models: Mapping[str, Model],
                inputs: Iterable[str] | None = None,
                edges: Iterable[tuple[str, str]] = ()) -> nx.DiGraph:
    """Return the validated DAG of `nodes` (node name -> node, edges labelled with fields)."""
    graph = nx.DiGraph()
    for node in nodes:
        if not getattr(node, "name", None):
            raise GraphError(f"node {node!r} has no name")
        if node.name in graph:
            raise GraphError(f"two nodes are named '{node.name}'; node names must be unique")
        graph.add_node(node.name, node=node)
        for ref, _ in node.routes():
            if isinstance(ref, str) and ref not in models:
                known = ", ".join(sorted(models)) or "none"
                raise GraphError(f"node '{node.name}' uses model '{ref}', which the pipeline "
                                 f"does not bind (bound models: {known}); pass models={{'{ref}': "
                                 f"Model(...)}}")
    producers = producers_of(nodes)
    supplied = set(inputs) if inputs is not None else None
    for field in sorted((supplied or set()) & set(producers)):
        raise GraphError(f"field '{field}' is a declared input and also produced by node "
                         f"'{producers[field]}'; rename the output or drop '{field}' from the inputs")
    for node in nodes:
        for field, wanted in node.input_fields.items():
            producer = producers.get(field)
            if producer is None:
                if supplied is not None and field not in supplied:
                    raise GraphError(f"node '{node.name}' reads field '{field}', which no node "
                                     f"produces and the inputs don't supply; add it to the inputs "
                                     f"or to a node's outputs")
                continue
            if producer == node.name:
                raise GraphError(f"node '{node.name}' reads its own output field '{field}'")
            made = graph.nodes[producer]["node"].output_fields[field]
            if not _compatible(made, wanted):
                raise GraphError(f"type mismatch on field '{field}': node '{producer}' produces "
                                 f"{_type_name(made)} but node '{node.name}' expects "
                                 f"{_type_name(wanted)}; make the two annotations agree")
            graph.add_edge(producer, node.name)
            graph.edges[producer, node.name].setdefault("fields", []).append(field)
    for src, dst in edges:
        for end in (src, dst):
            if end not in graph:
                raise GraphError(f"edge ({src!r}, {dst!r}) names unknown node '{end}'")
        graph.add_edge(src, dst)
        graph.edges[src, dst].setdefault("fields", [])
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return graph
    path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
    fields = ", ".join(f"'{f}'" for u, v in cycle for f in graph.edges[u, v]["fields"])
    raise GraphError(f"the pipeline has a cycle: {path} (through fields {fields or 'explicit edges'}); "
                     f"a pipeline must be a DAG — use a composite node for loops")


def stages(graph: nx.DiGraph) -> list[list[str]]:
    """Topological generations: nodes of one stage do not depend on each other."""
    return [sorted(stage) for stage in nx.topological_generations(graph)]


def _ident(text: str) -> str:
    return re.sub(r"\W", "_", text)


def _label(node: Node) -> str:
    model = node.model.name if isinstance(node.model, Model) else node.model
    model = model or getattr(node, "unbound_model", None)  # e.g. a DSPy module's dspy.settings.lm
    return f"{node.name}<br/>{model}" if model else f"{node.name}<br/>(python)"


def _box(node: Node, ident: str, indent: str) -> list[str]:
    """Mermaid lines for one node: a box, or for a composite a subgraph holding its children
    (recursively) and the edges its `diagram()` gives between them."""
    children = node.children() if callable(getattr(node, "children", None)) else []
    if not children:
        return [f'{indent}{ident}["{_label(node)}"]']
    lines = [f'{indent}subgraph {ident}["{node.name} ({type(node).__name__})"]']
    ids: dict[int, str] = {}
    for child in children:
        ids[id(child)] = f"{ident}__{_ident(child.name)}"
        lines += _box(child, ids[id(child)], indent + "  ")
    diagram = node.diagram() if callable(getattr(node, "diagram", None)) else []
    for src, dst, label in diagram:
        if id(src) in ids and id(dst) in ids:
            lines.append(f"{indent}  {ids[id(src)]} -.->|{label}| {ids[id(dst)]}")
    lines.append(f"{indent}end")
    return lines


def to_mermaid(graph: nx.DiGraph, inputs: Iterable[str]) -> str:
    """A Mermaid flowchart of the pipeline: inputs, nodes (with models) and field edges; a
    composite (Cascade, Map, ...) is a subgraph showing its children and how it uses them."""
    lines = ["flowchart LR"]
    for field in sorted(inputs):
        lines.append(f'  in_{field}(["{field}"])')
    for name in nx.topological_sort(graph):
        node = graph.nodes[name]["node"]
        lines += _box(node, name, "  ")
        for field in node.input_fields:
            if field in inputs:
                lines.append(f"  in_{field} -->|{field}| {name}")
    for u, v, data in graph.edges(data=True):
        label = ", ".join(data["fields"])
        lines.append(f"  {u} -->|{label}| {v}" if label else f"  {u} -.-> {v}")
    return "\n".join(lines)
