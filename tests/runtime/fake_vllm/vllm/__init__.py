"""A FAKE `vllm` package (a labelled test double for API contracts): it answers deterministically
without a GPU, records every call, and rejects argument names and types that vLLM 0.33.0's real
API would not take (`vllm/entrypoints/llm.py`: `LLM.__init__(model, *, ..., **engine_kwargs)`,
`LLM.generate(prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, ...)`,
`LLM.chat(messages, sampling_params=None, use_tqdm=True, lora_request=None, ...)`,
`LLM.get_tokenizer()`; `vllm/sampling_params.py`: `SamplingParams` fields; `vllm/lora/request.py`:
`LoRARequest(lora_name, lora_int_id, lora_path)`).

Replies: "fake:<last 12 characters of the prompt>" per sample; the tokenizer splits on spaces;
prompt log-probabilities are -0.5 per token, -0.25 for tokens equal to "Yes".

Structured outputs (vLLM >= 0.12): `LLM(structured_outputs_config={"backend": ...})` and
`SamplingParams(structured_outputs=StructuredOutputsParams(...))` (see `vllm.sampling_params`).
A constrained request's grammar is compiled with llguidance exactly as vLLM's guidance backend
does (`vllm/v1/structured_output/backend_guidance.py`: `grammar_from("grammar" | "regex" |
"choice", spec)`, JSON through `grammar_from_json_schema`), so a grammar vLLM would reject is
rejected here; the reply is the first of `STRUCTURED_REPLIES` (scripted by the test) that the
grammar accepts byte by byte, and no conforming candidate is an error. An engine whose backend is
xgrammar, outlines or lm-format-enforcer refuses a `grammar` request: the grammars sent here are
llguidance's Lark dialect, which only the guidance backend reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vllm.sampling_params import SamplingParams, StructuredOutputsParams, _check

__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams"]
__version__ = "0.33.0"

CALLS: list[tuple[str, dict[str, Any]]] = []
#: candidate replies of constrained requests (a test scripts them; see the module docstring)
STRUCTURED_REPLIES: list[str] = []
# engine arguments the real LLM takes (its own keywords and those it forwards to EngineArgs)
ENGINE_ARGS = {"enable_lora": bool, "max_lora_rank": int, "max_loras": int, "max_model_len": int,
               "dtype": str, "seed": int, "gpu_memory_utilization": float, "tensor_parallel_size": int,
               "enforce_eager": bool, "trust_remote_code": bool, "structured_outputs_config": dict}
# `vllm.config.StructuredOutputsConfig` (0.12): its fields, and the backends it names
STRUCTURED_CONFIG = ("backend", "disable_fallback", "disable_any_whitespace",
                     "disable_additional_properties", "reasoning_parser")
STRUCTURED_BACKENDS = ("auto", "xgrammar", "guidance", "outlines", "lm-format-enforcer")


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = "stop"


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput] = field(default_factory=list)


class _Tokenizer:
    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split(" ") if w]

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = True,
                            add_generation_prompt: bool = False) -> str:
        text = " ".join(f"<{m['role']}> {m['content']}" for m in messages)
        return text + (" <assistant> " if add_generation_prompt else "")


class LLM:
    def __init__(self, model: str, *, tokenizer: str | None = None, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.92, **kwargs: Any) -> None:
        _check("model", model, str)
        _check("gpu_memory_utilization", gpu_memory_utilization, (int, float))
        for name, value in kwargs.items():
            if name not in ENGINE_ARGS:
                raise TypeError(f"fake vllm: LLM() got an unexpected engine argument {name!r}")
            _check(name, value, ENGINE_ARGS[name])
        config = kwargs.get("structured_outputs_config") or {}
        if set(config) - set(STRUCTURED_CONFIG) or config.get("backend", "auto") not in STRUCTURED_BACKENDS:
            raise ValueError(f"fake vllm: structured_outputs_config takes {STRUCTURED_CONFIG} with a "
                             f"backend in {STRUCTURED_BACKENDS}, got {config}")
        self.model, self.kwargs = model, {"dtype": dtype, "seed": seed,
                                          "gpu_memory_utilization": gpu_memory_utilization, **kwargs}
        self.tokenizer = _Tokenizer()
        CALLS.append(("LLM", {"model": model, **self.kwargs}))

    def get_tokenizer(self) -> _Tokenizer:
        return self.tokenizer

    def _params(self, params: Any, n: int) -> list[SamplingParams]:
        params = params if isinstance(params, list) else [params or SamplingParams()] * n
        if len(params) != n or not all(isinstance(p, SamplingParams) for p in params):
            raise TypeError("fake vllm: sampling_params must be one SamplingParams or one per prompt")
        return params

    def _lora(self, lora_request: Any) -> None:
        from vllm.lora.request import LoRARequest

        if lora_request is not None and not isinstance(lora_request, LoRARequest):
            raise TypeError("fake vllm: lora_request must be a LoRARequest")
        if lora_request is not None and not self.kwargs.get("enable_lora"):
            raise ValueError("LoRA is not enabled! Reinitialize the LLM with enable_lora=True")

    def _answer(self, prompt: str, params: SamplingParams) -> RequestOutput:
        if "TOO LONG" in prompt:
            raise ValueError("The decoder prompt is longer than the maximum model length")
        ids = self.tokenizer.encode(prompt)
        logprobs = None
        if params.prompt_logprobs is not None:
            words = [w for w in prompt.split(" ") if w]
            logprobs = [None] + [{i: Logprob(-0.25 if w == "Yes" else -0.5)}
                                 for i, w in zip(ids[1:], words[1:], strict=True)]
        text = f"fake:{prompt[-12:]}" if params.structured_outputs is None \
            else self._structured(params.structured_outputs)
        outputs = [CompletionOutput(k, text, [1] * min(3, params.max_tokens or 16))
                   for k in range(params.n)]
        return RequestOutput(prompt, ids, logprobs, outputs)

    def _structured(self, params: StructuredOutputsParams) -> str:
        """The first scripted reply the request's grammar accepts (see the module docstring)."""
        kind, spec = params.kind()
        backend = (self.kwargs.get("structured_outputs_config") or {}).get("backend", "auto")
        if kind == "grammar" and backend not in ("auto", "guidance"):
            raise ValueError(f"The provided grammar is not supported by the {backend} backend")
        grammar = _guidance_grammar(kind, spec)
        for reply in STRUCTURED_REPLIES:
            if _accepts(grammar, reply):
                return reply
        raise ValueError(f"fake vllm: no reply in STRUCTURED_REPLIES matches the {kind} constraint "
                         f"{str(spec)[:200]}")

    def generate(self, prompts: Any, sampling_params: Any = None, *, use_tqdm: Any = True,
                 lora_request: Any = None) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("fake vllm: prompts must be strings here")
        params = self._params(sampling_params, len(prompts))
        self._lora(lora_request)
        CALLS.append(("generate", {"prompts": prompts, "params": params, "lora": lora_request}))
        return [self._answer(p, s) for p, s in zip(prompts, params, strict=True)]

    def chat(self, messages: Any, sampling_params: Any = None, use_tqdm: Any = True,
             lora_request: Any = None, chat_template: str | None = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        for conversation in conversations:
            if not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in conversation):
                raise TypeError("fake vllm: each message must be a dict with role and content")
        params = self._params(sampling_params, len(conversations))
        self._lora(lora_request)
        CALLS.append(("chat", {"messages": conversations, "params": params, "lora": lora_request}))
        return [self._answer(self.tokenizer.apply_chat_template(c, tokenize=False,
                                                                add_generation_prompt=True), s)
                for c, s in zip(conversations, params, strict=True)]


def _guidance_grammar(kind: str, spec: Any) -> str:
    """The llguidance grammar vLLM's guidance backend compiles for one constraint."""
    import llguidance

    if kind == "json":
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            spec if isinstance(spec, str) else json.dumps(spec))
    elif kind in ("regex", "grammar", "choice"):
        grammar = llguidance.grammar_from(kind, spec if isinstance(spec, str) else json.dumps(spec))
    else:
        raise NotImplementedError(f"fake vllm: no {kind} constraints here")
    error = llguidance.LLMatcher.validate_grammar(grammar, None)
    if error:
        raise ValueError(f"Grammar error: {error}")
    return grammar


class _ByteTokens:
    """A byte-level vocabulary (256 bytes + end of text), enough to check a reply byte by byte."""

    eos_token_id, bos_token_id = 256, None
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]

    def __call__(self, text: str | bytes) -> list[int]:
        return list(text if isinstance(text, bytes) else text.encode())


def _accepts(grammar: str, reply: str) -> bool:
    import llguidance

    matcher = llguidance.LLMatcher(llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokens())),
                                   grammar)
    ids = list(reply.encode())
    return matcher.validate_tokens(ids) == len(ids) and matcher.consume_tokens(ids) \
        and matcher.is_accepting()
