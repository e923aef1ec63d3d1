"""`RunContext`: what a node gets to run with — model resolution, child nodes, and the one
door through which every model call passes (so cross-cutting checks, such as keeping private
values away from remote models, hold for every node, composites included)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tandemlm.runtime import (ClassifyRequest, ClassifyResult, GenRequest, GenResult, Model,
                              PrivacyError, ScoreRequest, ScoreResult)
from tandemlm.runtime import progress
from tandemlm.runtime.types import request_texts

if TYPE_CHECKING:
    from tandemlm.compose.node import Node
    from tandemlm.compose.trace import NodeTrace


@dataclass(frozen=True)
class RunContext:
    """Resolves model names and guards model calls for one executor run.

    Args:
        resolve: maps a node's model reference (a `Model`, a bound name, or None) to a `Model`.
        private_values: values of private fields in this run; no request to a remote model may
            contain one (checked here, at the backend boundary, whatever node sends it).
    """

    resolve: Callable[[Model | str | None], Model | None]
    private_values: frozenset[str] = field(default_factory=frozenset)

    def model(self, ref: Model | str | None) -> Model | None:
        return self.resolve(ref)

    def substituting(self, models: Mapping[str, Model]) -> RunContext:
        """This context with every model whose fingerprint is a key of `models` served by the
        model it maps to: the compiler scores an example with the copy of a trained scorer that
        did not learn from it (`TrainScorer(folds=...)`)."""
        resolve = self.resolve

        def swapped(ref: Model | str | None) -> Model | None:
            model = resolve(ref)
            return models.get(model.fingerprint, model) if model is not None else None
        return replace(self, resolve=swapped)

    def run(self, node: Node, inputs: list[dict[str, Any]]) -> list[NodeTrace]:
        """Run a child node (of a composite) on a subset of examples; one batch per call."""
        if not inputs:
            return []
        progress.report(f"{node.name}: {len(inputs)} example(s)")
        traces = node.run_batch(inputs, self)
        if len(traces) != len(inputs):
            raise RuntimeError(f"node '{node.name}' returned {len(traces)} traces for "
                               f"{len(inputs)} examples; run_batch must return one per example")
        return traces

    def _leaks(self, model: Model, texts: Iterable[str]) -> str | None:
        if not self.private_values or not model.remote:
            return None
        for text in texts:
            for value in self.private_values:
                if value and value in text:
                    return (f"refused: a request to remote model '{model.name}' contains the value "
                            f"of a private field; private values only go to local models")
        return None

    def _guarded(self, model: Model, requests: list, call: Callable[[list], list],
                 failed: Callable[[str], Any]) -> list:
        leaks = [self._leaks(model, request_texts(r)) for r in requests]
        allowed = [r for r, leak in zip(requests, leaks, strict=True) if leak is None]
        answers = iter(call(allowed) if allowed else [])
        return [failed(f"{PrivacyError.__name__}: {leak}") if leak else next(answers)
                for leak in leaks]

    def generate(self, model: Model, requests: list[GenRequest]) -> list[GenResult]:
        return self._guarded(model, requests, model.generate, GenResult.failed)

    def logprobs(self, model: Model, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return self._guarded(model, requests, model.logprobs, lambda e: ScoreResult(error=e))

    def classify(self, model: Model, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        return self._guarded(model, requests, model.classify, lambda e: ClassifyResult(error=e))
