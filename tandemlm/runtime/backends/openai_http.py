"""`openai`: any OpenAI-compatible server (vLLM's, llama.cpp's, Ollama's, a hosted API).

Chat requests (`messages`) go to `POST {base_url}/chat/completions`, raw prompts to
`POST {base_url}/completions`. A batch is sent as concurrent HTTP requests (at most
`max_concurrency` in flight), one per request, and comes back in order: one result per request,
a failed request failing alone with its error.

Faults: 429, 500, 502, 503 and 504 answers, timeouts, dropped connections and unparsable bodies
are retried up to `max_retries` times with exponential backoff and full jitter (`backoff` seconds
doubling, at most `max_backoff`), honouring a `Retry-After` header; other 4xx answers fail at once
with the server's message. With several base URLs (a fleet of servers) requests are spread over
them and a retry goes to the next one.

The API key is read from the environment variable `api_key_env` (default OPENAI_API_KEY) and never
stored in a Model's options, so compiled artifacts never hold it.

With `logprobs=True` the model also scores continuations (`logprobs`, for yes/no judges): each
(prompt + continuation) is sent to `/completions` with `echo`, `logprobs=0` and one new token, and
the continuation's tokens are found by their `text_offset` — servers that return prompt
log-probabilities this way (vLLM's, llama.cpp's) support it. Chat-message score requests need the
chat template applied, which the server's `/completions` does not do: send them as raw prompts.

Constrained decoding (`GenRequest.constraint`) is off by default: a generic OpenAI-compatible
server may reject fields it does not know, so the backend declares no `constrained` capability
and LM nodes send it free prompts. `structured_outputs` names what the server takes:

    "json_schema"  OpenAI's structured outputs: `response_format={"type": "json_schema",
                   "json_schema": {"name": "output", "schema": ..., "strict": true}}` (OpenAI,
                   and servers that copy it; raw prompts send it to /completions too, which vLLM
                   takes and OpenAI does not). JSON schemas only: a request with a lark or regex
                   grammar (a ChatAdapter node's) fails alone; give that node a JSONAdapter.
    "vllm"         a vLLM (>= 0.12) server's extra field `structured_outputs: {"json" | "regex" |
                   "grammar": ...}`, every kind. A "lark" grammar is llguidance's dialect, which
                   vLLM reads only with its guidance backend: start the server with
                   `--structured-outputs-config.backend guidance`.

    large = Model("openai", "gpt-4o-mini", base_url="https://api.openai.com/v1", price=(0.15, 0.6))
    local = Model("openai", "qwen", base_url=["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"])
"""

from __future__ import annotations

import email.utils
import itertools
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from collections.abc import Callable
from typing import Any

import httpx

from tandemlm.runtime import progress
from tandemlm.runtime.backend import Backend
from tandemlm.runtime.backends.vllm_backend import STRUCTURED_FIELDS  # vLLM's server takes them too
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.types import Constraint, GenRequest, GenResult, ScoreRequest, ScoreResult

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
STRUCTURED_OUTPUTS = ("json_schema", "vllm")  # see the module docstring


class _Retry(Exception):
    """A fault worth another attempt; `wait` is the server's Retry-After, when it sent one."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class OpenAIBackend(Backend):
    """See the module docstring. Options: base_url (one URL or a list), api_key_env,
    max_concurrency, timeout (seconds per request), max_retries, backoff, max_backoff,
    extra_body (fields added to every request body), logprobs, structured_outputs (None,
    "json_schema" or "vllm")."""

    name = "openai"
    remote = True
    instance_capabilities = True  # logprobs=True declares scoring, structured_outputs constraints

    def __init__(self, model_id: str, *, base_url: str | list[str] | None = None,
                 api_key_env: str = "OPENAI_API_KEY", max_concurrency: int = 8, timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 0.5, max_backoff: float = 30.0,
                 extra_body: dict[str, Any] | None = None, logprobs: bool = False,
                 structured_outputs: str | None = None, **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"unknown openai backend options: {', '.join(sorted(unknown))}"
                              + ("; give the key through the environment (api_key_env=NAME), "
                                 "never as an option" if "api_key" in unknown else ""))
        urls = [base_url] if isinstance(base_url, str) else list(base_url or [])
        if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            raise ConfigError(f"openai model '{model_id}' needs base_url='http(s)://host[:port]/v1' "
                              f"(or a list of them), got {base_url!r}")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ConfigError("openai backend: max_concurrency >= 1, max_retries >= 0, timeout > 0")
        if structured_outputs is not None and structured_outputs not in STRUCTURED_OUTPUTS:
            raise ConfigError(f"openai model '{model_id}': structured_outputs must be None (no "
                              f"constrained decoding), 'json_schema' (OpenAI's response_format) or "
                              f"'vllm' (a vLLM server), got {structured_outputs!r}")
        super().__init__(model_id)
        self.urls = [u.rstrip("/") for u in urls]
        self.api_key_env, self.timeout = api_key_env, float(timeout)
        self.max_concurrency, self.max_retries = int(max_concurrency), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.extra_body = dict(extra_body or {})
        self.supports_logprobs = bool(logprobs)  # the server must return prompt log-probabilities
        self.structured_outputs = structured_outputs
        self.supports_constrained = structured_outputs is not None
        if structured_outputs == "json_schema":  # ChatAdapter nodes then run free, JSON ones not
            self.constraint_kinds = ("json_schema",)
        self._next_url = itertools.count()
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    def identity(self) -> str:
        return f"{self.model_id}@{','.join(self.urls)}"

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                key = os.environ.get(self.api_key_env)
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                limits = httpx.Limits(max_connections=self.max_concurrency * len(self.urls))
                self._client = httpx.Client(headers=headers, timeout=self.timeout, limits=limits)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- requests ------------------------------------------------------------------------------
    def body(self, request: GenRequest) -> tuple[str, dict[str, Any]]:
        """(endpoint path, JSON body) of one request; a `ConfigError` when its constraint cannot
        be sent to this server."""
        body: dict[str, Any] = {"model": self.model_id, "max_tokens": request.max_new_tokens,
                                "temperature": request.temperature, "top_p": request.top_p,
                                "n": request.n, **self.extra_body}
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        if request.constraint is not None:
            body.update(self.constraint_fields(request.constraint))
        if request.messages is not None:
            return "/chat/completions", {**body, "messages": [dict(m) for m in request.messages]}
        return "/completions", {**body, "prompt": request.prompt}

    def constraint_fields(self, constraint: Constraint) -> dict[str, Any]:
        """The request-body fields that carry a constraint (see the module docstring)."""
        if self.structured_outputs is None:
            raise ConfigError(f"openai model '{self.model_id}' was created without structured_outputs, "
                              f"so it cannot constrain decoding; create it with structured_outputs="
                              f"'json_schema' (OpenAI's response_format) or 'vllm' (a vLLM server), "
                              f"or drop the constraint")
        if self.structured_outputs == "json_schema" and constraint.kind != "json_schema":
            raise ConfigError(f"openai model '{self.model_id}' (structured_outputs='json_schema') "
                              f"takes JSON schemas only, but this request carries a {constraint.kind} "
                              f"grammar; use JSONAdapter on that node (its output is a JSON schema), "
                              f"or structured_outputs='vllm' for a vLLM server")
        value = constraint.value()
        if self.structured_outputs == "json_schema":
            return {"response_format": {"type": "json_schema", "json_schema": {
                "name": "output", "schema": value, "strict": True}}}
        return {"structured_outputs": {STRUCTURED_FIELDS[constraint.kind]: value}}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        self._http()
        throttle = progress.Throttle()
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as pool:
            futures = [pool.submit(self._one, request) for request in requests]
            for done, _ in enumerate(as_completed(futures), 1):
                throttle(lambda done=done: f"{self.model_id}: {done}/{len(requests)} requests answered")
            return [future.result() for future in futures]

    def _one(self, request: GenRequest) -> GenResult:
        try:
            path, body = self.body(request)
        except ConfigError as exc:  # this request's constraint: it fails alone, unsent
            return GenResult.failed(str(exc))
        start = time.perf_counter()
        try:
            return self._send(path, body, lambda data: self._parse(data, path, time.perf_counter() - start))
        except _Fatal as fault:
            return GenResult.failed(str(fault), time.perf_counter() - start)

    def _send(self, path: str, body: dict[str, Any], read: Callable[[dict[str, Any]], Any]) -> Any:
        """POST `body` and `read` the answer, retrying faults (see the module docstring); raises
        `_Fatal` for a fault not worth retrying or once the retries are spent."""
        first = next(self._next_url)  # requests take turns over the servers; a retry moves on
        for attempt in range(self.max_retries + 1):
            try:
                return read(self._post(self.urls[(first + attempt) % len(self.urls)] + path, body))
            except _Retry as fault:
                if attempt == self.max_retries:
                    raise _Fatal(f"openai model '{self.model_id}': gave up after "
                                 f"{self.max_retries + 1} attempts; last error: {fault}") from None
                time.sleep(self._delay(attempt, fault.wait))
        raise AssertionError("unreachable")

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http().post(url, json=body)
        except httpx.TimeoutException:
            raise _Retry(f"{url}: no answer within {self.timeout:g} s") from None
        except httpx.TransportError as exc:  # refused, reset, dropped mid-answer
            raise _Retry(f"{url}: connection failed ({type(exc).__name__}: {exc})") from None
        if response.status_code in RETRY_STATUS:
            raise _Retry(f"{url}: HTTP {response.status_code} {_message(response)}",
                         _retry_after(response.headers.get("retry-after")))
        if response.status_code >= 400:
            raise _Fatal(f"{url}: HTTP {response.status_code} {_message(response)} (not retried: "
                         f"check the model name, the request and the API key in "
                         f"${self.api_key_env})")
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Retry(f"{url}: the answer is not JSON ({response.text[:80]!r})") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise _Retry(f"{url}: the answer has no 'choices' ({str(data)[:80]})")
        return data

    # -- scoring -------------------------------------------------------------------------------
    def logprobs(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        jobs = [(i, c) for i, r in enumerate(requests) for c in r.continuations]
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(jobs)))) as pool:
            scored = list(pool.map(lambda job: self._score(requests[job[0]], job[1]), jobs))
        results = [ScoreResult() for _ in requests]
        for (i, _), (tokens, error) in zip(jobs, scored, strict=True):
            if error is not None:
                results[i].error = error
            elif results[i].ok:
                results[i].token_logprobs.append(tokens)
                results[i].logprobs.append(sum(tokens))
        return results

    def _score(self, request: ScoreRequest, continuation: str) -> tuple[list[float], str | None]:
        if request.prompt is None:
            return [], (f"openai model '{self.model_id}' scores raw prompts only: the server's "
                        f"/completions does not apply the chat template to messages")
        body = {"model": self.model_id, "prompt": request.prompt + continuation, "max_tokens": 1,
                "temperature": 0.0, "echo": True, "logprobs": 0, **self.extra_body}
        try:
            return self._send("/completions", body, lambda data: self._prompt_logprobs(data, request.prompt,
                                                                                      continuation)), None
        except _Fatal as fault:
            return [], str(fault)

    @staticmethod
    def _prompt_logprobs(data: dict[str, Any], prompt: str, continuation: str) -> list[float]:
        """The continuation's token log-probabilities in an echoed /completions answer."""
        found = data["choices"][0].get("logprobs") or {}
        offsets, values = found.get("text_offset"), found.get("token_logprobs")
        if not offsets or not values:
            raise _Fatal("the server returned no prompt log-probabilities; it cannot score "
                         "(use logprobs=False)")
        start = len(prompt)
        tokens = [float(v) for o, v in zip(offsets, values, strict=False)
                  if start <= o < start + len(continuation) and v is not None]
        if not tokens:
            raise _Fatal("no tokens of the continuation were scored")
        return tokens

    def _parse(self, data: dict[str, Any], path: str, latency: float) -> GenResult:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        try:
            texts = [c["message"]["content"] or "" if path == "/chat/completions" else c["text"]
                     for c in choices]
        except (KeyError, TypeError):
            raise _Retry(f"a choice without {'message.content' if 'chat' in path else 'text'}: "
                         f"{str(choices[0])[:80]}") from None
        usage = data.get("usage") or {}
        return GenResult(texts=texts, tokens_in=usage.get("prompt_tokens"),
                         tokens_out=usage.get("completion_tokens"), latency_s=latency,
                         finish_reason=choices[0].get("finish_reason") or "stop")

    def _delay(self, attempt: int, wait: float | None) -> float:
        if wait is not None:
            return min(wait, self.max_backoff)
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))  # full jitter


class _Fatal(Exception):
    """A fault another attempt would not mend (a 4xx other than 429)."""


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        return str(error.get("message") if isinstance(error, dict) else error or "")[:200]
    except Exception:  # a non-JSON error page
        return response.text[:200]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
