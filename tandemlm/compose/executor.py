"""The stage-batched executor.

Examples run stage by stage (topological generations). Each node sends the inputs of every
still-healthy example to its backend as one batch; nodes of one stage bound to different
models run concurrently (one thread per model), nodes sharing a model run one after another.
One example and N examples go through this same code, so their outputs are identical.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import networkx as nx

from tandemlm.compose.graph import stages
from tandemlm.compose.node import Node
from tandemlm.compose.trace import ExampleResult, NodeTrace
from tandemlm.runtime import Model

ResolveModel = Callable[[Node], Model | None]


def _model_key(model: Model | None) -> str:
    return "python" if model is None else model._config_key()


def _run_node(node: Node, model: Model | None, states: list[dict[str, Any]],
              todo: list[int]) -> tuple[Node, list[int], list[NodeTrace]]:
    inputs = [{f: states[i][f] for f in node.input_fields} for i in todo]
    traces = node.run_batch(inputs, model) if todo else []
    if len(traces) != len(todo):
        raise RuntimeError(f"node '{node.name}' returned {len(traces)} traces for {len(todo)} "
                           f"examples; run_batch must return one per example")
    return node, todo, traces


def _run_group(jobs: list[tuple[Node, Model | None]], states: list[dict[str, Any]],
               todo: list[int]) -> list[tuple[Node, list[int], list[NodeTrace]]]:
    return [_run_node(node, model, states, todo) for node, model in jobs]


def run_stages(graph: nx.DiGraph, examples: list[dict[str, Any]], inputs: list[str],
               resolve: ResolveModel) -> list[ExampleResult]:
    """Run `examples` (dicts holding at least `inputs`) through every stage of `graph`."""
    states: list[dict[str, Any]] = []
    errors: list[str | None] = []
    for example in examples:
        missing = [f for f in inputs if f not in example]
        states.append({f: example[f] for f in inputs if f in example})
        errors.append(f"example lacks input field(s) {', '.join(missing)}" if missing else None)
    traces: list[list[NodeTrace]] = [[] for _ in examples]
    for stage in stages(graph):
        todo = [i for i, e in enumerate(errors) if e is None]
        groups: dict[str, list[tuple[Node, Model | None]]] = {}
        for name in stage:
            node = graph.nodes[name]["node"]
            model = resolve(node)
            groups.setdefault(_model_key(model), []).append((node, model))
        if len(groups) == 1:
            done = [r for group in groups.values() for r in _run_group(group, states, todo)]
        else:
            with ThreadPoolExecutor(max_workers=len(groups)) as pool:
                # Each thread runs in a copy of this context, so dspy.context overrides (its trace)
                # reach the nodes of every model group.
                futures = [pool.submit(contextvars.copy_context().run, _run_group, g, states, todo)
                           for g in groups.values()]
                done = [r for f in futures for r in f.result()]
        # Merge in stage order so traces read the same however the threads interleaved.
        for node, indices, node_traces in sorted(done, key=lambda r: r[0].name):
            for i, trace in zip(indices, node_traces, strict=True):
                traces[i].append(trace)
                if trace.error is not None:
                    errors[i] = errors[i] or f"node '{node.name}': {trace.error}"
                else:
                    states[i].update(trace.outputs or {})
    return [ExampleResult(inputs={f: s[f] for f in inputs if f in s},
                          outputs={k: v for k, v in s.items() if k not in inputs},
                          trace=t, error=e)
            for s, t, e in zip(states, traces, errors, strict=True)]
