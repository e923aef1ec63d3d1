"""A pipeline's compiler state: what passes change (demos, instructions, models, thresholds),
addressed by node path ("cascade/judge_0" for a composite's child).

The structure of a program comes from its code; its state is data. `pipeline_state` reads it,
`set_pipeline_state` writes it back onto a pipeline built by the same code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tandemlm.compose.node import Node, bad_state
from tandemlm.runtime import ConfigError, Model

if TYPE_CHECKING:
    from tandemlm.compose.pipeline import Pipeline


def _walk(node: Node, prefix: str) -> Iterator[tuple[str, Node]]:
    path = f"{prefix}{node.name}"
    yield path, node
    children = node.children() if hasattr(node, "children") else []
    seen: dict[str, int] = {}
    for child in children:
        count = seen[child.name] = seen.get(child.name, 0) + 1
        if count > 1:  # two children with one name: address the later ones by position
            yield from _walk_renamed(child, f"{path}/", f"{child.name}#{count}")
        else:
            yield from _walk(child, f"{path}/")


def _walk_renamed(node: Node, prefix: str, name: str) -> Iterator[tuple[str, Node]]:
    yield f"{prefix}{name}", node
    for path, child in _walk(node, f"{prefix}{name}/"):
        if child is not node:
            yield path, child


def node_paths(pipeline: Pipeline) -> dict[str, Node]:
    """Every node of the pipeline, composites' children included, by path."""
    return {path: node for top in pipeline.nodes.values() for path, node in _walk(top, "")}


def pipeline_state(pipeline: Pipeline) -> dict[str, Any]:
    """{"models": bound name -> Model, "nodes": path -> node state}."""
    return {"models": dict(pipeline.models),
            "nodes": {path: node.state() for path, node in node_paths(pipeline).items()}}


def set_pipeline_state(pipeline: Pipeline, state: dict[str, Any]) -> None:
    """Write `state` (from `pipeline_state` of a pipeline built by the same code) back; a state
    of the wrong shape is a `ConfigError` naming the field, and each node checks its own."""
    if not isinstance(state, dict) or set(state) - {"models", "nodes"}:
        raise ConfigError(f"a saved program state is an object with 'models' and 'nodes', got "
                          f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
    for field in ("models", "nodes"):
        if not isinstance(state.get(field, {}), dict):
            raise bad_state("the program", field, "an object keyed by name", state[field])
    for path, node_state in state.get("nodes", {}).items():
        if not isinstance(node_state, dict):
            raise bad_state(f"node '{path}'", path, "an object (the node's state)", node_state)
    paths = node_paths(pipeline)
    unknown = sorted(set(state.get("nodes", {})) - set(paths))
    if unknown:
        raise ConfigError(f"the saved state names node(s) {', '.join(unknown)}, which this pipeline "
                          f"lacks (it has {', '.join(paths)}); load it onto the program it was "
                          f"compiled from")
    missing = sorted(set(state.get("models", {})) - set(pipeline.models))
    if missing:
        raise ConfigError(f"the saved state binds model name(s) {', '.join(missing)}, which this "
                          f"pipeline does not use")
    for name, model in state.get("models", {}).items():
        if model is None:
            continue  # not saved (a test double): keep the one the code binds
        if not isinstance(model, Model):
            raise ConfigError(f"model binding '{name}' must be a Model, got {type(model).__name__}")
        pipeline.models[name] = model
    for path, node_state in state.get("nodes", {}).items():
        paths[path].set_state(node_state)
