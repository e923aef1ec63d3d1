"""`Model`: a handle on one model served by one backend.

A handle is cheap and immutable; the backend (and its weights) loads lazily on first use and is
shared by every handle with the same configuration, so copying a pipeline never copies weights.

    small = Model("hf", "./models/qwen-0.5b", device="cpu", dtype="float32")
    large = Model("recorded", "gpt-4", data="overruling.jsonl")
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from tandemlm.runtime.accounting import Cost, call_cost
from tandemlm.runtime.backend import Backend, backend_class, require, supports
from tandemlm.runtime.cache import active_cache
from tandemlm.runtime.errors import BackendError, ConfigError
from tandemlm.runtime.types import (ClassifyRequest, ClassifyResult, GenRequest, GenResult,
                                    ScoreRequest, ScoreResult)

_INSTANCES: dict[str, Backend] = {}
_INSTANCES_LOCK = threading.Lock()


def _stable_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _hash_path(path: Path) -> str:
    """Content hash of a file, or of every file under a directory (adapters are small)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


class Model:
    """A backend + model id (+ LoRA adapter path) with optional price and parameter count.

    Args:
        backend: registered backend name ("hf", "recorded", "scripted", ...).
        id: model id: a local path for `hf`, a model name for `recorded`.
        adapter: optional path of a LoRA adapter applied on top of the weights.
        name: display name used in reports (defaults to `id`).
        price: USD per million (input, output) tokens.
        params: parameter count for FLOPs estimates (the backend's own count when omitted).
        remote: whether the model runs on someone else's machine (private fields never reach
            it); defaults to the backend's own answer (`recorded` and HTTP APIs are remote).
        **options: backend options (device, dtype, data, ...).
    """

    def __init__(self, backend: str, id: str, *, adapter: str | None = None, name: str | None = None,
                 price: tuple[float, float] | None = None, params: int | None = None,
                 remote: bool | None = None, **options: Any) -> None:
        if not isinstance(id, str) or not id:
            raise ConfigError(f"Model id must be a non-empty string, got {id!r}")
        self.backend_name = backend
        self.id = id
        self.adapter = adapter
        self.name = name or id
        self.price = tuple(price) if price is not None else None
        self.params = params
        self.options = dict(options)
        self._remote = remote
        self._own_backend: Backend | None = None
        backend_class(backend)  # fail fast on an unknown backend name

    def __repr__(self) -> str:
        extra = f", adapter={self.adapter!r}" if self.adapter else ""
        return f"Model({self.backend_name!r}, {self.id!r}{extra})"

    def __deepcopy__(self, memo: dict) -> Model:
        return self  # immutable handle: copies share the loaded backend

    def _config_key(self) -> str:
        return _stable_json({"backend": self.backend_name, "id": self.id,
                             "adapter": self.adapter, "options": self.options})

    @property
    def serializable(self) -> bool:
        """Whether the configuration is JSON (so it can be shared, cached and saved); a test
        double's callables are not."""
        return self._shareable()

    def _shareable(self) -> bool:
        """Only JSON options identify a configuration; callables (test doubles) do not."""
        try:
            json.dumps(self.options)
        except (TypeError, ValueError):
            return False
        return True

    def _new_backend(self) -> Backend:
        options = dict(self.options)
        if self.adapter is not None:
            options["adapter"] = self.adapter
        return backend_class(self.backend_name)(self.id, **options)

    @property
    def backend(self) -> Backend:
        """The backend instance for this configuration, created on first use and shared by
        every handle with the same (JSON) configuration."""
        if not self._shareable():
            with _INSTANCES_LOCK:
                if self._own_backend is None:
                    self._own_backend = self._new_backend()
            return self._own_backend
        key = self._config_key()
        with _INSTANCES_LOCK:
            instance = _INSTANCES.get(key)
            if instance is None:
                instance = _INSTANCES[key] = self._new_backend()
        return instance

    @property
    def fingerprint(self) -> str:
        """Hash of the configuration, the weights' identity and the adapter's content."""
        adapter_hash = None
        if self.adapter is not None:
            path = Path(self.adapter)
            adapter_hash = _hash_path(path) if path.exists() else self.adapter
        payload = {"config": self._config_key(), "weights": self.backend.identity(),
                   "adapter": adapter_hash}
        return hashlib.sha256(_stable_json(payload).encode()).hexdigest()[:16]

    @property
    def remote(self) -> bool:
        if self._remote is not None:
            return self._remote
        return bool(backend_class(self.backend_name).remote)

    @property
    def trainable(self) -> bool:
        return supports(backend_class(self.backend_name), "train")

    def supports(self, capability: str) -> bool:
        cls = backend_class(self.backend_name)
        # a backend whose capabilities follow its options answers for its instance
        return supports(self.backend if cls.instance_capabilities else cls, capability)

    def require(self, capability: str) -> None:
        require(self.backend, capability, self.name)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Run one batch; a backend crash becomes an error result per request, never a lost
        batch. A `ConfigError` (the model is set up wrong) is raised: no request can succeed."""
        return self._isolated(lambda batch: self.backend.generate(batch), requests,
                              GenResult.failed, kind="generate")

    def logprobs(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Score continuations; like `generate`, a backend crash fails each request alone."""
        self.require("logprobs")
        return self._isolated(lambda batch: self.backend.logprobs(batch), requests,
                              lambda error: ScoreResult(error=error), kind="logprobs")

    def classify(self, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        """Classification-head scores; a backend crash fails each request alone."""
        self.require("classify")
        return self._isolated(lambda batch: self.backend.classify(batch), requests,
                              lambda error: ClassifyResult(error=error), kind="classify")

    def _isolated(self, call: Callable[[list], list], requests: list, failed: Callable[[str], Any],
                  kind: str) -> list:
        if not requests:
            return []
        cache = active_cache()
        if cache is not None and self._shareable():
            return cache.call(kind, self.fingerprint, list(requests),
                              lambda todo: self._run_isolated(call, todo, failed))
        return self._run_isolated(call, requests, failed)

    def _run_isolated(self, call: Callable[[list], list], requests: list,
                      failed: Callable[[str], Any]) -> list:
        try:
            results = call(list(requests))
        except ConfigError:
            raise
        except Exception as exc:
            return [failed(f"{type(exc).__name__}: {exc}") for _ in requests]
        if len(results) != len(requests):
            raise BackendError(f"backend '{self.backend_name}' returned {len(results)} results "
                               f"for {len(requests)} requests; a backend must return one per request")
        return results

    @cached_property
    def _backend_params(self) -> int | None:
        return self.backend.num_parameters()  # summed once per handle, not once per call

    def cost(self, result: GenResult | ScoreResult | ClassifyResult) -> Cost:
        """The cost of one call; scoring and classifying calls generate no tokens."""
        params = self.params if self.params is not None else self._backend_params
        tokens_out = getattr(result, "tokens_out", 0)
        return call_cost(result.tokens_in, tokens_out, reported_usd=getattr(result, "cost_usd", None),
                         price=self.price, params=params)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for artifacts (options must be JSON values)."""
        return {"backend": self.backend_name, "id": self.id, "adapter": self.adapter,
                "name": self.name, "price": list(self.price) if self.price else None,
                "params": self.params, "remote": self._remote, "options": self.options}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        data = dict(data)
        options = data.pop("options", {}) or {}
        return cls(data.pop("backend"), data.pop("id"), **data, **options)
