"""Static check that private fields never flow to a remote model.

A field is tainted when it is private or produced by a node that reads a tainted field
(conservatively: all of that node's outputs). A node whose route to a remote model carries a
tainted field makes the graph invalid. Composites declare their routes (which of their input
fields reach which model), so a `PrivateSplit` can send only non-private fields to its remote
model and still be accepted.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from tandemlm.runtime import GraphError, Model


def check_private_flow(graph: nx.DiGraph, private: frozenset[str],
                       resolve: Callable[[Model | str | None], Model | None]) -> None:
    if not private:
        return
    tainted = set(private)
    for name in nx.topological_sort(graph):
        node = graph.nodes[name]["node"]
        read = tainted & set(node.input_fields)
        if not read:
            continue
        for ref, fields in node.routes():
            model = resolve(ref)
            leaked = sorted(tainted & fields)
            if model is not None and model.remote and leaked:
                origin = sorted(private & set(leaked)) or sorted(private)
                raise GraphError(
                    f"node '{name}' sends field(s) {', '.join(map(repr, leaked))} to remote model "
                    f"'{model.name}', but they carry private field(s) "
                    f"{', '.join(map(repr, origin))}; private values may only reach local models — "
                    f"bind that node to a local model or use PrivateSplit")
        tainted |= set(node.output_fields)
