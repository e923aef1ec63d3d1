"""`vllm`: vLLM's offline engine (`vllm.LLM`) on a GPU (`pip install 'tandemlm[vllm]'`).

One engine per base model and engine options, shared by every tandem Model on that base: a
fine-tuned small node (`Model("vllm", base, adapter="adapters/01-solve")`) is served as a LoRA
adapter on its base model's engine (`enable_lora=True`, a `LoRARequest` per request), so several
small nodes share one engine and one copy of the weights. `gpu_memory_utilization` splits a GPU
when a small and a large model share it.

* `generate`: all chat requests of a batch in one `LLM.chat` call and all raw prompts in one
  `LLM.generate` call, each request with its own `SamplingParams` (n, temperature, top_p, seed,
  stop, max_tokens); if vLLM rejects the batch, requests run one by one so a bad one fails alone.
* `logprobs`: continuation scoring from `prompt_logprobs` (the prompt rendered with the model's
  chat template, each continuation appended, one token generated).
* constrained decoding (`supports_constrained`, off with constrained=False): a request's
  `constraint` becomes vLLM's structured outputs (vLLM >= 0.12), `SamplingParams(structured_outputs=
  StructuredOutputsParams(json=... | regex=... | grammar=...))`, per request; a request without
  one gets none. LM nodes send "lark" grammars (ChatAdapter's format) in llguidance's Lark dialect,
  which only vLLM's `guidance` structured-outputs backend reads (xgrammar reads GBNF/EBNF), so the
  engine is created with `structured_outputs_config={"backend": "guidance"}` unless the options
  name a backend themselves (`structured_outputs_config={"backend": "xgrammar", ...}`; lark
  requests then fail alone, JSON and regex ones still run). The default is added whether or not
  this model constrains, so that every Model on one base model keeps sharing one engine.

    small = Model("vllm", "Qwen/Qwen2.5-0.5B-Instruct", gpu_memory_utilization=0.3, max_lora_rank=16)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tandemlm.runtime.backend import Backend
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.types import Constraint, GenRequest, GenResult, ScoreRequest, ScoreResult
from tandemlm.runtime.verified_files import verified_source

_ENGINES: dict[tuple, Any] = {}
_ADAPTER_IDS: dict[str, int] = {}
_LOCK = threading.Lock()
ENGINE_OPTIONS = ("dtype", "seed", "gpu_memory_utilization", "max_model_len", "max_lora_rank",
                  "max_loras", "tensor_parallel_size", "enforce_eager", "trust_remote_code",
                  "structured_outputs_config")
#: `Constraint.kind` -> the `StructuredOutputsParams` field that carries it
STRUCTURED_FIELDS = {"json_schema": "json", "regex": "regex", "lark": "grammar"}


def _vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ConfigError("backend 'vllm' needs vLLM on a CUDA machine: pip install 'tandemlm[vllm]'; "
                          "elsewhere use backend 'hf'") from None
    return vllm


class VLLMBackend(Backend):
    """See the module docstring. Options: adapter (a LoRA adapter directory), constrained (False:
    no `constrained` capability, so LM nodes send free prompts) and the engine options in
    `ENGINE_OPTIONS` (passed to `vllm.LLM`)."""

    name = "vllm"
    supports_logprobs = True
    supports_constrained = True  # structured outputs, see the module docstring
    instance_capabilities = True  # constrained=False turns it off

    def __init__(self, model_id: str, *, adapter: str | None = None, constrained: bool = True,
                 **options: Any) -> None:
        unknown = sorted(set(options) - set(ENGINE_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown vllm backend options: {', '.join(unknown)}; engine options: "
                              f"{', '.join(ENGINE_OPTIONS)}")
        if not isinstance(constrained, bool):
            raise ConfigError(f"constrained must be True or False, got {constrained!r}")
        super().__init__(model_id, **options)
        self.adapter = adapter
        self.supports_constrained = constrained
        self.engine_options = _with_guidance(options)
        if _structured_backend(self.engine_options) != "guidance":  # lark is llguidance's dialect
            self.constraint_kinds = ("json_schema", "regex")

    def identity(self) -> str:
        """The weights' identity: a local checkpoint directory's content (see `weights_identity`),
        so the call cache never answers for weights rewritten in place; else the model name."""
        path = Path(self.model_id).expanduser()
        if not path.is_dir():
            return self.model_id
        from tandemlm.runtime.backends.hf_common import weights_identity  # torch, which vLLM needs

        return weights_identity(path)

    # -- engine ----------------------------------------------------------------------------------
    def engine(self) -> Any:
        """The shared `vllm.LLM` of this base model and engine options (LoRA always enabled, so
        adapters of any node can join it later)."""
        key = (self.model_id, json.dumps(self.engine_options, sort_keys=True, default=repr))
        with _LOCK:
            if key not in _ENGINES:
                options = {"max_lora_rank": 16, **self.engine_options}
                # a checked artifact's files load from the bytes that were checked
                _ENGINES[key] = _vllm().LLM(model=verified_source(self.model_id), enable_lora=True,
                                            **options)
            return _ENGINES[key]

    def lora(self) -> Any:
        """This model's `LoRARequest` (None without an adapter); ids are unique per adapter path."""
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        with _LOCK:
            lora_id = _ADAPTER_IDS.setdefault(self.adapter, len(_ADAPTER_IDS) + 1)
        return LoRARequest(lora_name=f"adapter-{lora_id}", lora_int_id=lora_id,
                           lora_path=verified_source(self.adapter))

    def sampling(self, request: GenRequest) -> Any:
        """The request's `SamplingParams`; `structured_outputs` only when it carries a constraint
        (so an unconstrained request also runs on a vLLM without the field)."""
        extra = {}
        if request.constraint is not None:
            extra["structured_outputs"] = self.structured_outputs(request.constraint)
        return _vllm().SamplingParams(n=request.n, temperature=request.temperature, top_p=request.top_p,
                                      seed=request.seed, stop=list(request.stop) or None,
                                      max_tokens=request.max_new_tokens, **extra)

    def structured_outputs(self, constraint: Constraint) -> Any:
        """vLLM's `StructuredOutputsParams` for a constraint; raises `ConfigError` saying why it
        cannot run (the request then fails alone)."""
        if not self.supports_constrained:
            raise ConfigError(f"model '{self.model_id}' was created with constrained=False; drop the "
                              f"request's constraint or create it with constrained=True")
        try:
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError:
            version = getattr(_vllm(), "__version__", "unknown")
            raise ConfigError(f"constrained decoding on backend 'vllm' needs vLLM >= 0.12 "
                              f"(vllm.sampling_params.StructuredOutputsParams); the installed vLLM "
                              f"{version} has none: pip install -U 'vllm>=0.12', or create the model "
                              f"with constrained=False") from None
        backend = _structured_backend(self.engine_options)
        if constraint.kind == "lark" and backend != "guidance":
            raise ConfigError(f"a lark grammar (llguidance's dialect) needs vLLM's 'guidance' "
                              f"structured-outputs backend, but model '{self.model_id}' sets "
                              f"structured_outputs_config backend {backend!r}; drop that option, set "
                              f"it to 'guidance', or use JSONAdapter on the node (a JSON schema)")
        value = constraint.value()
        return StructuredOutputsParams(**{STRUCTURED_FIELDS[constraint.kind]: value})

    # -- generation ------------------------------------------------------------------------------
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: list[GenResult | None] = [None] * len(requests)
        chats = [i for i, r in enumerate(requests) if r.messages is not None]
        raws = [i for i, r in enumerate(requests) if r.messages is None]
        for group, chat in ((chats, True), (raws, False)):
            if group:
                for i, result in zip(group, self._run([requests[i] for i in group], chat), strict=True):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _run(self, requests: list[GenRequest], chat: bool) -> list[GenResult]:
        """Sampling parameters per request (one that cannot be built fails alone), then one call."""
        results: list[GenResult | None] = [None] * len(requests)
        ready: list[tuple[int, Any]] = []
        for i, request in enumerate(requests):
            try:
                ready.append((i, self.sampling(request)))
            except Exception as exc:
                results[i] = GenResult.failed(f"vllm: {type(exc).__name__}: {exc}")
        if ready:
            done = self._submit([requests[i] for i, _ in ready], [p for _, p in ready], chat)
            for (i, _), result in zip(ready, done, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _submit(self, requests: list[GenRequest], params: list[Any], chat: bool) -> list[GenResult]:
        try:
            return self._call(requests, params, chat)
        except Exception as exc:
            if len(requests) == 1:
                return [GenResult.failed(f"vllm: {type(exc).__name__}: {exc}")]
            return [self._submit([r], [p], chat)[0]  # isolate the bad request
                    for r, p in zip(requests, params, strict=True)]

    def _call(self, requests: list[GenRequest], params: list[Any], chat: bool) -> list[GenResult]:
        llm = self.engine()
        if chat:
            outputs = llm.chat([[dict(m) for m in r.messages] for r in requests], params,
                               use_tqdm=False, lora_request=self.lora())
        else:
            outputs = llm.generate([r.prompt for r in requests], params, use_tqdm=False,
                                   lora_request=self.lora())
        return [GenResult(texts=[o.text for o in out.outputs], tokens_in=len(out.prompt_token_ids or []),
                          tokens_out=sum(len(o.token_ids) for o in out.outputs),
                          finish_reason=out.outputs[0].finish_reason or "stop")
                for out in outputs]

    # -- scoring ---------------------------------------------------------------------------------
    def logprobs(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        llm = self.engine()
        tokenizer = llm.get_tokenizer()
        prompts, spans = [], []
        for request in requests:
            head = tokenizer.apply_chat_template([dict(m) for m in request.messages], tokenize=False,
                                                 add_generation_prompt=True) \
                if request.messages is not None else request.prompt
            start = len(tokenizer.encode(head, add_special_tokens=False))
            for continuation in request.continuations:
                full = head + continuation
                prompts.append(full)
                spans.append((start, len(tokenizer.encode(full, add_special_tokens=False))))
        params = _vllm().SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora())
        except Exception as exc:
            return [ScoreResult(error=f"vllm: {type(exc).__name__}: {exc}") for _ in requests]
        per_token = []
        for out, (start, end) in zip(outputs, spans, strict=True):
            ids = out.prompt_token_ids[start:end]
            steps = out.prompt_logprobs[start:end]
            per_token.append([float(step[t].logprob) for t, step in zip(ids, steps, strict=True)])
        results, k = [], 0
        for request in requests:
            tokens = per_token[k:k + len(request.continuations)]
            k += len(request.continuations)
            results.append(ScoreResult(logprobs=[sum(t) for t in tokens], token_logprobs=tokens,
                                       tokens_in=sum(len(t) for t in tokens)))
        return results


def _with_guidance(options: dict[str, Any]) -> dict[str, Any]:
    """Engine options with vLLM's guidance structured-outputs backend unless they name a backend
    (see the module docstring); a `StructuredOutputsConfig` object is taken as given."""
    config = options.get("structured_outputs_config")
    if config is None:
        return {**options, "structured_outputs_config": {"backend": "guidance"}}
    if isinstance(config, dict) and "backend" not in config:
        return {**options, "structured_outputs_config": {**config, "backend": "guidance"}}
    return dict(options)


def _structured_backend(options: dict[str, Any]) -> str:
    config = options.get("structured_outputs_config")
    backend = config.get("backend") if isinstance(config, dict) else getattr(config, "backend", None)
    return str(backend or "auto")
