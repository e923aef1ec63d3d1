"""Nodes: the steps of a pipeline. A node declares typed input and output fields and runs a
batch of examples at once; `Step` wraps a plain Python function."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tandemlm.compose.trace import NodeTrace
from tandemlm.runtime import ConfigError, Model

if TYPE_CHECKING:
    from tandemlm.compose.context import RunContext

Fields = dict[str, Any]  # field name -> type annotation (Any when undeclared)


def as_fields(spec: Mapping[str, Any] | Iterable[str] | str) -> Fields:
    """Normalise 'a, b', ['a', 'b'] or {'a': int} to {'a': Any, ...}."""
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    if isinstance(spec, Mapping):
        return dict(spec)
    return {name: Any for name in spec}


def bad_state(where: str, field: str, expected: str, value: Any) -> ConfigError:
    """The error for a saved state field of the wrong type, naming where it is and the field
    (`set_state` methods raise it: a state may come from a file someone else wrote)."""
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ConfigError(f"{where}: saved state field '{field}' must be {expected}, got {shown}; "
                       f"load a state compiled for this program, or compile again")


def is_number(value: Any) -> bool:
    """A finite real number (not a bool; numpy's count): what a saved weight or bias must be."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class Node:
    """Interface of every node.

    `run_batch(inputs, ctx)` gets one dict of input fields per example and returns one
    `NodeTrace` per example, in order; a failing example sets `error` on its trace and never
    raises. `ctx` (a `RunContext`) resolves model names, runs child nodes and is the door for
    every model call.
    """

    name: str
    model: Model | str | None = None

    @property
    def input_fields(self) -> Fields:
        raise NotImplementedError

    @property
    def output_fields(self) -> Fields:
        raise NotImplementedError

    def routes(self) -> list[tuple[Model | str, set[str]]]:
        """(model, input fields that may reach it) for every model this node calls; the
        privacy check and model validation read it. Composites return their children's."""
        return [(self.model, set(self.input_fields))] if self.model is not None else []

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        raise NotImplementedError

    # -- state that compiler passes change; saved in an artifact's program.json ----------------
    def state(self) -> dict[str, Any]:
        """What compiler passes may change on this node: JSON values, and `Model`s (which the
        artifact writer stores as configurations). A model bound by name belongs to the
        pipeline's state, not the node's."""
        return {"model": self.model} if isinstance(self.model, Model) else {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what `state()` returned (a model of None keeps the current one); a field of
        the wrong type is a `ConfigError` naming it (see `bad_state`)."""
        model = state.get("model")
        if model is not None and not isinstance(model, Model):
            raise bad_state(f"node '{self.name}'", "model", "a model", model)
        if model is not None:
            self.model = model


class Step(Node):
    """A plain Python step: `fn(**inputs)` returns a dict of the declared outputs (or, with one
    output, the value itself).

        Step(lambda question: question.strip().lower(), inputs="question", outputs="normalized")
    """

    def __init__(self, fn: Callable[..., Any], *, inputs: Mapping[str, Any] | Iterable[str] | str,
                 outputs: Mapping[str, Any] | Iterable[str] | str, name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "step")
        if self.name == "<lambda>":
            raise ConfigError("a Step built from a lambda needs name=...")
        self._inputs, self._outputs = as_fields(inputs), as_fields(outputs)
        if not self._outputs:
            raise ConfigError(f"step '{self.name}' declares no outputs")

    @property
    def input_fields(self) -> Fields:
        return self._inputs

    @property
    def output_fields(self) -> Fields:
        return self._outputs

    def _call(self, values: dict[str, Any]) -> dict[str, Any]:
        result = self.fn(**values)
        names = list(self._outputs)
        if len(names) == 1 and not (isinstance(result, Mapping) and set(result) == set(names)):
            return {names[0]: result}
        if not isinstance(result, Mapping) or set(result) != set(names):
            got = sorted(result) if isinstance(result, Mapping) else type(result).__name__
            raise ConfigError(f"step '{self.name}' must return a dict with keys {names}, got {got}")
        return dict(result)

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        traces = []
        for values in inputs:
            start = time.perf_counter()
            trace = NodeTrace(node=self.name, inputs=values)
            try:
                trace.outputs = self._call(values)
            except Exception as exc:  # a user function failing sinks only its example
                trace.error = f"{type(exc).__name__}: {exc}"
            trace.latency_s = time.perf_counter() - start
            traces.append(trace)
        return traces
