"""`tandem serve`: an OpenAI-compatible server for tandem models and compiled pipelines.

Any `Model` and any pipeline (a compiled artifact or a program) is served under a model name at
`/v1/chat/completions` and `/v1/completions` (and listed at `/v1/models`), so any OpenAI client —
the `openai` package, DSPy, another tandem's `openai` backend — can call it. Requests arriving
within `window_s` of each other for the same name are micro-batched into one backend batch (at
most `max_batch`), which is where local models get their throughput.

A pipeline's inputs come from the last user message (or the prompt): the text itself when the
pipeline has one input field, else a JSON object of its inputs. Its reply is the value of its
final output field (one no node reads) when it has one, else a JSON object of those. A failed
example answers HTTP 500 with the pipeline's error message; the rest of its batch is unaffected.

Bad requests get OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, and a
4xx status, and the server keeps serving: 400 for a body that is not UTF-8-encoded JSON, not a
JSON object, or holds text that is not valid Unicode (a lone surrogate escape such as "\\ud800",
in any field), or a field of the wrong type (the message names the field; fields the server does
not read, such as `user` or `frequency_penalty`, are accepted and ignored, as OpenAI does, but
`stream` and `logprobs` are refused since they are not implemented), 400 too for a request's `n`
or `max_tokens` over the server's `max_n` (16) or `max_tokens` (16384), 404 for an unknown model
or route, 405 for a wrong method, 413 for a body over `max_body_bytes` (1 MB by default, whether
or not the client sends a Content-Length). With `api_key` set, every /v1 route requires
`Authorization: Bearer <key>` (401 otherwise) and the interactive docs (/docs, /redoc,
/openapi.json) are off, so nothing answers without the key; `tandem serve --api-key-env VAR`
reads the key from an environment variable.

    app = create_app(models={"tiny": Model("hf", "./tiny")}, programs={"cascade": pipeline})
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' `Request` annotation at
# run time, and `Request` is imported inside `create_app` because FastAPI is an optional extra.
import asyncio
import hmac
import ipaddress
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from queue import Empty, Queue
from typing import Any

from pydantic import ValidationError

from tandemlm.compose import Pipeline
from tandemlm.runtime import ConfigError, GenRequest, GenResult, Model
from tandemlm.serve_requests import (DEFAULT_MAX_TOKENS, MAX_BODY_BYTES, MAX_N, MAX_TOKENS, ApiError,
                                     ChatRequest, CompletionRequest, check_limits, invalid,
                                     read_json, refuse_unsupported)



@dataclass
class _Batcher:
    """Collects calls for one served name and runs them in batches on one worker thread."""

    run: Callable[[list[Any]], list[Any]]
    window_s: float
    max_batch: int
    queue: Queue = field(default_factory=Queue)
    batches: list[int] = field(default_factory=list)  # sizes of the batches run, for stats

    def __post_init__(self) -> None:
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, item: Any) -> Future:
        future: Future = Future()
        self.queue.put((item, future))
        return future

    def _loop(self) -> None:
        while True:
            pending = [self.queue.get()]
            deadline = time.monotonic() + self.window_s
            while len(pending) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    pending.append(self.queue.get(timeout=left))
                except Empty:
                    break
            # A caller that gave up (its request task was cancelled) has cancelled its future;
            # setting a result on it would raise and end this thread, so it is dropped here.
            pending = [(item, future) for item, future in pending if future.set_running_or_notify_cancel()]
            if not pending:
                continue
            self.batches.append(len(pending))
            try:
                results = self.run([item for item, _ in pending])
                if len(results) != len(pending):
                    raise RuntimeError(f"the backend answered {len(results)} of a batch of {len(pending)}")
            except Exception as exc:  # the whole batch failed: each caller learns why
                for _, future in pending:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(pending, results, strict=True):
                future.set_result(result)


# ---- requests ----------------------------------------------------------------------------------
# Unlike tandem's config models these allow extra fields: OpenAI clients send many (`user`,
# `frequency_penalty`, ...) that OpenAI itself ignores. Strict, so "12" is not an integer.

def _authorizer(api_key: str) -> Callable[[Any], None]:
    from fastapi import Request

    expected = api_key.encode()

    def authorize(request: Request) -> None:  # a FastAPI dependency of every /v1 route
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "no API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        # Starlette decodes headers as latin-1, so this gives back the bytes the client sent.
        if not hmac.compare_digest(given.strip().encode("latin-1"), expected):
            raise ApiError(401, "incorrect API key", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
    return authorize


def _pipeline_inputs(pipeline: Pipeline, text: str) -> dict[str, Any]:
    fields = list(pipeline.input_fields)
    if len(fields) == 1:
        return {fields[0]: text}
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        values = None
    if not isinstance(values, dict) or any(f not in values for f in fields):
        raise ValueError(f"pipeline '{pipeline.name}' takes {', '.join(fields)}: send a JSON object "
                         f"with these keys as the user message")
    return {f: values[f] for f in fields}


def _pipeline_reply(pipeline: Pipeline, outputs: dict[str, Any]) -> str:
    consumed = {f for node in pipeline.nodes.values() for f in node.input_fields}
    fields = [f for f in pipeline.output_fields if f not in consumed]  # what no node reads on
    if len(fields) == 1:
        return str(outputs.get(fields[0], ""))
    return json.dumps({f: outputs.get(f) for f in fields}, default=str)


def create_app(models: dict[str, Model] | None = None, programs: dict[str, Pipeline] | None = None, *,
               window_s: float = 0.01, max_batch: int = 64, api_key: str | None = None,
               max_body_bytes: int | None = MAX_BODY_BYTES, max_n: int | None = MAX_N,
               max_tokens: int | None = MAX_TOKENS) -> Any:
    """A FastAPI app serving `models` and `programs` under their names; see the module docstring.
    `api_key`, when given, is required as a bearer token on every /v1 route and turns the
    interactive docs off; `max_body_bytes` caps a request body, `max_n` the choices a request
    asks for, `max_tokens` its `max_tokens` (None: no cap)."""
    try:
        from fastapi import Depends, FastAPI, Request
        from starlette.exceptions import HTTPException
    except ImportError:
        raise ConfigError("tandem serve needs FastAPI and uvicorn: pip install 'tandemlm[serve]'") from None
    models, programs = dict(models or {}), dict(programs or {})
    if not models and not programs:
        raise ConfigError("tandem serve: nothing to serve; name at least one model or program")
    clash = set(models) & set(programs)
    if clash:
        raise ConfigError(f"tandem serve: {', '.join(sorted(clash))} named both a model and a program")
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ConfigError("tandem serve: api_key must be a non-empty string, or None for no key")
    for option, limit in (("max_body_bytes", max_body_bytes), ("max_n", max_n), ("max_tokens", max_tokens)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"tandem serve: {option} must be a positive integer or None for no "
                              f"limit, got {limit!r}")
    batchers = {name: _Batcher(model.generate, window_s, max_batch) for name, model in models.items()}
    batchers.update({name: _Batcher(lambda rows, p=pipe: p.batch(rows), window_s, max_batch)
                     for name, pipe in programs.items()})
    # FastAPI's docs routes take no dependencies: with a key they would describe the server to
    # anyone, so they are off (None turns each one off).
    hidden = dict(docs_url=None, redoc_url=None, openapi_url=None) if api_key is not None else {}
    app = FastAPI(title="tandemlm", description="OpenAI-compatible endpoints for tandem models", **hidden)
    app.state.batchers = batchers
    guard = [Depends(_authorizer(api_key.strip()))] if api_key is not None else []

    @app.get("/v1/models", dependencies=guard)
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "tandemlm"}
                                           for name in batchers]}

    async def complete(request: Request, chat: bool) -> dict[str, Any]:
        raw = await read_json(request, max_body_bytes)
        try:
            body = (ChatRequest if chat else CompletionRequest).model_validate(raw)
        except ValidationError as exc:
            raise invalid(exc) from None
        refuse_unsupported(body)
        check_limits(body, max_n, max_tokens)
        name = body.model
        if name not in batchers:
            raise ApiError(404, f"no model named {name!r}; served: {', '.join(batchers)}", "model",
                           "model_not_found")
        messages = tuple({"role": m.role, "content": m.content} for m in body.messages) if chat else None
        text = (next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
                if chat else body.prompt)
        try:
            if name in models:
                item: Any = GenRequest(
                    messages=messages, prompt=None if chat else text,
                    max_new_tokens=(body.max_tokens or (body.max_completion_tokens if chat else None)
                                    or min(DEFAULT_MAX_TOKENS, max_tokens or DEFAULT_MAX_TOKENS)),
                    temperature=body.temperature or 0.0, top_p=1.0 if body.top_p is None else body.top_p,
                    n=body.n or 1, seed=body.seed, stop=tuple(body.stop or ()))
            else:
                item = _pipeline_inputs(programs[name], text)
        except (ValueError, TypeError, KeyError) as exc:
            raise ApiError(400, str(exc)) from None
        result = await asyncio.wrap_future(batchers[name].submit(item))
        return _response(name, chat, result, programs.get(name))

    @app.post("/v1/chat/completions", dependencies=guard)
    async def chat_completions(request: Request) -> Any:
        return await complete(request, chat=True)

    @app.post("/v1/completions", dependencies=guard)
    async def completions(request: Request) -> Any:
        return await complete(request, chat=False)

    @app.exception_handler(ApiError)
    async def api_error(_: Any, exc: ApiError) -> Any:
        return exc.response()

    @app.exception_handler(HTTPException)  # unknown routes and wrong methods, from the router
    async def http_error(request: Any, exc: HTTPException) -> Any:
        where = f"{request.method} {request.url.path}"
        message = {404: f"no route {where}; served: GET /v1/models, POST /v1/chat/completions, "
                        f"POST /v1/completions",
                   405: f"{where}: method not allowed"}.get(exc.status_code, str(exc.detail))
        return ApiError(exc.status_code, message, headers=exc.headers).response()

    @app.exception_handler(Exception)  # a bug: still answer in OpenAI's shape (the log has it)
    async def server_error(_: Any, exc: Exception) -> Any:
        return ApiError(500, f"internal server error ({type(exc).__name__})").response()

    return app


def api_key_from_env(var: str) -> str:
    """The API key in environment variable `var`, for `tandem serve --api-key-env`."""
    key = os.environ.get(var, "").strip()  # header values arrive stripped: so must the key
    if not key:
        raise ConfigError(f"--api-key-env {var}: the environment variable {var} is unset or empty; "
                          f"set it to the key clients must send as 'Authorization: Bearer <key>'")
    return key


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when `host` is reachable from other machines and no API key is required."""
    if api_key is not None or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"--host {host} is not a loopback address and no --api-key-env is given: anyone who "
            f"can reach this machine can use the served models")


def _response(name: str, chat: bool, result: Any, pipeline: Pipeline | None) -> dict[str, Any]:
    if isinstance(result, GenResult):
        if not result.ok:
            raise ApiError(500, result.error)
        texts, usage = result.texts, (result.tokens_in, result.tokens_out)
    else:  # an ExampleResult of a pipeline
        if not result.ok:
            raise ApiError(500, result.error)
        texts = [_pipeline_reply(pipeline, result.outputs)]
        usage = (sum(t.tokens_in or 0 for t in result.trace), sum(t.tokens_out or 0 for t in result.trace))
    def choice(i: int, text: str) -> dict[str, Any]:
        if chat:
            return {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return {"index": i, "text": text, "finish_reason": "stop", "logprobs": None}
    return {"id": f"tandem-{uuid.uuid4().hex}", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": name,
            "choices": [choice(i, t) for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": usage[0] or 0, "completion_tokens": usage[1] or 0,
                      "total_tokens": (usage[0] or 0) + (usage[1] or 0)}}
