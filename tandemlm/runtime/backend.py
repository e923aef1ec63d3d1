"""The backend protocol and the registry that maps backend names to classes.

A backend is one required method, `generate(requests) -> results` (a batch in, a batch out, one
result per request, a bad request failing alone), plus optional capabilities declared as class
attributes and checked with `require` before use:

    supports_logprobs          logprobs(list[ScoreRequest]) -> list[ScoreResult]
    supports_classify          classify(list[ClassifyRequest]) -> list[ClassifyResult]
    supports_next_token_logits next-token logits for token-level mixing (same vocabulary)
    supports_train             PEFT/LoRA or head training on this machine
    supports_constrained       `GenRequest.constraint`: decoding that can only produce text the
                               grammar matches, for the grammar kinds in `constraint_kinds`

Built-in backends register through `register_backend`, exactly as a third-party one would.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, ClassVar

from tandemlm.runtime.errors import CapabilityError, ConfigError
from tandemlm.runtime.types import (CONSTRAINT_KINDS, ClassifyRequest, ClassifyResult, GenRequest,
                                    GenResult, ScoreRequest, ScoreResult)

CAPABILITIES = ("logprobs", "next_token_logits", "classify", "train", "constrained")


class Backend:
    """Base class of backends. Subclasses set `name` and implement `generate`."""

    name: ClassVar[str] = ""
    supports_logprobs: ClassVar[bool] = False
    supports_next_token_logits: ClassVar[bool] = False
    supports_classify: ClassVar[bool] = False
    supports_train: ClassVar[bool] = False
    supports_constrained: ClassVar[bool] = False
    #: the `Constraint.kind`s a constrained backend takes (an instance may narrow them)
    constraint_kinds: ClassVar[tuple[str, ...]] = CONSTRAINT_KINDS
    #: True when the model runs on someone else's machine (private fields must never reach it).
    remote: ClassVar[bool] = False
    #: True when an instance's options decide its capabilities (e.g. `openai` with logprobs=True)
    instance_capabilities: ClassVar[bool] = False

    def __init__(self, model_id: str, **options: Any) -> None:
        self.model_id = model_id
        self.options = options

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        raise NotImplementedError

    def logprobs(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        raise CapabilityError(f"backend '{self.name}' does not support logprobs")

    def classify(self, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        raise CapabilityError(f"backend '{self.name}' does not support classify")

    def identity(self) -> str:
        """A string that changes when the weights (or recorded data) change."""
        return self.model_id

    def num_parameters(self) -> int | None:
        """Parameter count when known, used to estimate FLOPs for unpriced models."""
        return None

    def close(self) -> None:
        """Release memory held by the backend."""


def supports(backend: Backend | type[Backend], capability: str) -> bool:
    if capability not in CAPABILITIES:
        raise ConfigError(f"unknown capability '{capability}'; known: {', '.join(CAPABILITIES)}")
    return bool(getattr(backend, f"supports_{capability}", False))


def require(backend: Backend, capability: str, model_id: str | None = None) -> None:
    """Raise a `CapabilityError` naming the backend and model when `capability` is missing."""
    if not supports(backend, capability):
        have = [c for c in CAPABILITIES if supports(backend, c)] or ["generate only"]
        raise CapabilityError(
            f"model '{model_id or backend.model_id}' on backend '{backend.name}' lacks the "
            f"'{capability}' capability (it has: {', '.join(have)}); bind this node to a model "
            f"whose backend supports it, e.g. 'hf'"
        )


_REGISTRY: dict[str, type[Backend] | str] = {}
_LOCK = threading.Lock()


def register_backend(name: str, target: type[Backend] | str) -> None:
    """Register a backend class, or a lazy 'package.module:Class' path, under `name`."""
    with _LOCK:
        _REGISTRY[name] = target


def backend_class(name: str) -> type[Backend]:
    """Resolve a registered backend name to its class, importing it on first use."""
    with _LOCK:
        target = _REGISTRY.get(name)
    if target is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown backend '{name}'; known backends: {known} "
                          f"(third-party backends call tandemlm.register_backend first)")
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        with _LOCK:
            _REGISTRY[name] = cls
        return cls
    return target


def registered_backends() -> list[str]:
    with _LOCK:
        return sorted(_REGISTRY)


register_backend("hf", "tandemlm.runtime.backends.hf:HFBackend")
register_backend("hf-classifier", "tandemlm.runtime.backends.hf_classifier:HFClassifierBackend")
register_backend("dspy", "tandemlm.runtime.backends.dspy_bridge:DSPyBackend")
register_backend("vllm", "tandemlm.runtime.backends.vllm_backend:VLLMBackend")
register_backend("openai", "tandemlm.runtime.backends.openai_http:OpenAIBackend")
register_backend("recorded", "tandemlm.runtime.backends.recorded:RecordedBackend")
register_backend("scripted", "tandemlm.testing:ScriptedBackend")
