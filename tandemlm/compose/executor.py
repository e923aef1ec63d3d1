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

from tandemlm.compose.context import RunContext
from tandemlm.compose.graph import stages
from tandemlm.compose.node import Node
from tandemlm.compose.trace import ExampleResult, NodeTrace
from tandemlm.runtime import Model, progress

ResolveModel = Callable[[Model | str | None], Model | None]


def _model_key(model: Model | None) -> str:
    return "python" if model is None else model._config_key()


def _run_group(nodes: list[Node], ctx: RunContext, states: list[dict[str, Any]],
               todo: list[int]) -> list[tuple[Node, list[int], list[NodeTrace]]]:
    out = []
    for node in nodes:
        inputs = [{f: states[i][f] for f in node.input_fields} for i in todo]
        out.append((node, todo, ctx.run(node, inputs)))
    return out


def run_stages(graph: nx.DiGraph, examples: list[dict[str, Any]], inputs: list[str],
               resolve: ResolveModel, private: frozenset[str] = frozenset()) -> list[ExampleResult]:
    """Run `examples` (dicts holding at least `inputs`) through every stage of `graph`.

    Values of the `private` input fields are handed to the run context, which refuses any
    request to a remote model that contains one.
    """
    states: list[dict[str, Any]] = []
    errors: list[str | None] = []
    for example in examples:
        missing = [f for f in inputs if f not in example]
        states.append({f: example[f] for f in inputs if f in example})
        errors.append(f"example lacks input field(s) {', '.join(missing)}" if missing else None)
    secrets = frozenset(str(s[f]) for s in states for f in private if f in s and str(s[f]))
    ctx = RunContext(resolve=resolve, private_values=secrets)
    traces: list[list[NodeTrace]] = [[] for _ in examples]
    plan = list(stages(graph))
    for number, stage in enumerate(plan, 1):
        progress.report(f"stage {number}/{len(plan)}: {', '.join(stage)}")
        todo = [i for i, e in enumerate(errors) if e is None]
        groups: dict[str, list[Node]] = {}
        for name in stage:
            node = graph.nodes[name]["node"]
            groups.setdefault(_model_key(resolve(node.model)), []).append(node)
        if len(groups) == 1:
            done = [r for group in groups.values() for r in _run_group(group, ctx, states, todo)]
        else:
            with ThreadPoolExecutor(max_workers=len(groups)) as pool:
                # Each thread runs in a copy of this context, so dspy.context overrides (its trace)
                # reach the nodes of every model group.
                futures = [pool.submit(contextvars.copy_context().run, _run_group, g, ctx, states, todo)
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
