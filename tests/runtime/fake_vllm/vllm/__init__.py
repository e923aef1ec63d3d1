"""A FAKE `vllm` package (a labelled test double for API contracts): it answers deterministically
without a GPU, records every call, and rejects argument names and types that vLLM 0.33.0's real
API would not take (`vllm/entrypoints/llm.py`: `LLM.__init__(model, *, ..., **engine_kwargs)`,
`LLM.generate(prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, ...)`,
`LLM.chat(messages, sampling_params=None, use_tqdm=True, lora_request=None, ...)`,
`LLM.get_tokenizer()`; `vllm/sampling_params.py`: `SamplingParams` fields; `vllm/lora/request.py`:
`LoRARequest(lora_name, lora_int_id, lora_path)`).

Replies: "fake:<last 12 characters of the prompt>" per sample; the tokenizer splits on spaces;
prompt log-probabilities are -0.5 per token, -0.25 for tokens equal to "Yes".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CALLS: list[tuple[str, dict[str, Any]]] = []
# engine arguments the real LLM forwards to EngineArgs, with their types
ENGINE_ARGS = {"enable_lora": bool, "max_lora_rank": int, "max_loras": int, "max_model_len": int,
               "dtype": str, "seed": int, "gpu_memory_utilization": float, "tensor_parallel_size": int,
               "enforce_eager": bool, "trust_remote_code": bool}


def _check(name: str, value: Any, kind: Any) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"fake vllm: {name} must be {kind}, got {type(value).__name__}")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        for name, kind in (("n", int), ("temperature", (int, float)), ("top_p", (int, float)),
                           ("seed", int), ("stop", (str, list)), ("max_tokens", int),
                           ("logprobs", int), ("prompt_logprobs", int)):
            _check(name, getattr(self, name), kind)


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
        outputs = [CompletionOutput(k, f"fake:{prompt[-12:]}", [1] * min(3, params.max_tokens or 16))
                   for k in range(params.n)]
        return RequestOutput(prompt, ids, logprobs, outputs)

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
