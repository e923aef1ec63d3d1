"""Both ways between tandem models and DSPy language models.

* `as_dspy_lm(model)`: any tandem `Model` as a `dspy.LM`, through DSPy 3.4's custom-engine
  protocol (`TandemEngine`). Its model string carries the model's fingerprint
  (`tandem/<name>@<fingerprint>`), so DSPy's cache never serves a fine-tuned model the answers of
  the model it came from.
* backend `dspy`: any `dspy.LM` as a tandem model, so every provider DSPy reaches can be a large
  model: `Model("dspy", "openai/gpt-4o-mini", lm={"api_base": ...})` builds
  `dspy.LM("openai/gpt-4o-mini", **lm)`; `DSPyBackend.wrap(lm)` wraps an existing one (such a
  model cannot be saved in an artifact: its options are not JSON). Each request is one DSPy call
  (an `lm15.Request`, `num_threads` at a time, one answer each); tokens come from its response,
  cost from its history entry (DSPy's own price estimate).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tandemlm.runtime.backend import Backend
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.model import Model
from tandemlm.runtime.types import GenRequest, GenResult


def gen_request(request: Any) -> GenRequest:
    """The tandem request for one DSPy (`dspy.lm15.Request`) call."""
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages += [{"role": m.role, "content": m.text} for m in request.messages]
    config = request.config
    stop = config.stop if config.stop is not None else ()
    return GenRequest(messages=tuple(messages), max_new_tokens=config.max_tokens or 256,
                      temperature=config.temperature or 0.0,
                      top_p=config.top_p if config.top_p is not None else 1.0, seed=config.seed,
                      stop=(stop,) if isinstance(stop, str) else tuple(stop))


def lm_response(request: Any, result: GenResult, name: str) -> Any:
    """The `dspy.lm15.Response` DSPy expects for `result`; a failed result raises, as a provider
    error does in DSPy (its adapter or the program then handles it)."""
    from dspy.lm15 import Message, Response, TextPart, Usage

    if not result.ok:
        raise RuntimeError(f"tandem model '{name}': {result.error}")
    tokens_in, tokens_out = result.tokens_in or 0, result.tokens_out or 0
    return Response(id=None, model=request.model, message=Message.assistant([TextPart(text=result.text)]),
                    finish_reason=result.finish_reason,
                    usage=Usage(input_tokens=tokens_in, output_tokens=tokens_out,
                                total_tokens=tokens_in + tokens_out))


class TandemEngine:
    """A DSPy custom engine answering with a tandem `Model` (one request per call, as DSPy
    issues them)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def complete(self, request: Any) -> Any:
        (result,) = self.model.generate([gen_request(request)])
        return lm_response(request, result, self.model.name)

    def close(self) -> None:
        pass

    def dump_state(self) -> dict[str, Any]:
        return {"model": self.model.to_dict()}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> TandemEngine:
        """The engine a saved DSPy program names. A saved file is data: it never turns on
        `trust_remote_code` (which runs Python shipped beside weights); set that in code."""
        config = state["model"]
        if (config.get("options") or {}).get("trust_remote_code"):
            raise ConfigError(f"the saved DSPy state of tandem model '{config.get('name')}' sets "
                              f"trust_remote_code, which is never read from a saved file; build "
                              f"the Model in code with trust_remote_code=True if you trust it")
        return cls(Model.from_dict(config))


def as_dspy_lm(model: Model, **lm_kwargs: Any) -> Any:
    """`model` as a `dspy.LM` (cached by DSPy under a model string carrying its fingerprint)."""
    import dspy

    return dspy.LM(f"tandem/{model.name}@{model.fingerprint[:16]}", engine=TandemEngine(model),
                   **{"temperature": 0.0, "max_tokens": 256, **lm_kwargs})


def as_model(lm: Any, name: str | None = None) -> Model:
    """A `dspy.LM` (e.g. `dspy.settings.lm`) as a tandem `Model`: the tandem model itself when
    `lm` came from `as_dspy_lm` (so its calls batch on its own backend), else the `dspy` backend
    around `lm` (one DSPy call per request)."""
    engine = getattr(lm, "engine", None)
    if isinstance(engine, TandemEngine):
        return engine.model
    if not hasattr(lm, "model") or not callable(lm):
        raise ConfigError(f"{type(lm).__name__} is not a dspy.LM: give a tandem Model, a model "
                          f"name bound by the pipeline, or a dspy.LM")
    return DSPyBackend.wrap(lm, name=name)


class DSPyBackend(Backend):
    """A `dspy.LM` as a tandem backend; see the module docstring."""

    name = "dspy"
    remote = True  # a DSPy provider is usually hosted: private fields must not reach it

    def __init__(self, model_id: str, *, lm: dict[str, Any] | Any = None, num_threads: int = 8,
                 **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"unknown dspy backend options: {', '.join(sorted(unknown))}; give "
                              f"dspy.LM's own options as lm={{...}}")
        super().__init__(model_id)
        self.num_threads = int(num_threads)
        if lm is None or isinstance(lm, dict):
            import dspy

            self.lm = dspy.LM(model_id, **(lm or {}))
        else:
            self.lm = lm

    @classmethod
    def wrap(cls, lm: Any, name: str | None = None, **options: Any) -> Model:
        """A tandem `Model` answering with the existing `dspy.LM` `lm`."""
        return Model("dspy", lm.model, name=name, lm=lm, **options)

    def identity(self) -> str:
        return f"dspy:{self.lm.model}"

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.num_threads, len(requests) or 1))) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: GenRequest) -> GenResult:
        from dspy.lm15 import Config, Message, Request

        if request.n != 1:
            return GenResult.failed(f"dspy LM '{self.lm.model}': one answer per call; n={request.n} "
                                    f"samples are not supported by the dspy backend")
        turns = list(request.messages) if request.messages is not None \
            else [{"role": "user", "content": request.prompt}]
        system = "\n\n".join(m["content"] for m in turns if m["role"] == "system") or None
        messages = tuple(Message.assistant(m["content"]) if m["role"] == "assistant"
                         else Message.user(m["content"]) for m in turns if m["role"] != "system")
        config = Config(max_tokens=request.max_new_tokens, temperature=request.temperature,
                        top_p=request.top_p, stop=tuple(request.stop), seed=request.seed)
        try:
            response = self.lm(Request(model=self.lm.model, messages=messages, system=system, config=config))
        except Exception as exc:  # a provider error fails this request alone
            return GenResult.failed(f"dspy LM '{self.lm.model}': {type(exc).__name__}: {exc}")
        entry = next((e for e in reversed(self.lm.history) if e.get("response") is response), {})
        usage = response.usage
        return GenResult(texts=[response.text or ""], tokens_in=getattr(usage, "input_tokens", None),
                         tokens_out=getattr(usage, "output_tokens", None), cost_usd=entry.get("cost"),
                         finish_reason=str(response.finish_reason or "stop"))
