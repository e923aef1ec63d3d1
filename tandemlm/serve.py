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

    app = create_app(models={"tiny": Model("hf", "./tiny")}, programs={"cascade": pipeline})
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.runtime import ConfigError, GenRequest, GenResult, Model


@dataclass
class _Batcher:
    """Collects calls for one served name and runs them in batches on one worker thread."""

    run: Callable[[list[Any]], list[Any]]
    window_s: float
    max_batch: int
    queue: queue.Queue = field(default_factory=queue.Queue)
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
                except queue.Empty:
                    break
            self.batches.append(len(pending))
            try:
                results = self.run([item for item, _ in pending])
            except Exception as exc:  # the whole batch failed: each caller learns why
                for _, future in pending:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(pending, results, strict=True):
                future.set_result(result)


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
               window_s: float = 0.01, max_batch: int = 64) -> Any:
    """A FastAPI app serving `models` and `programs` under their names; see the module docstring."""
    try:
        from fastapi import FastAPI, HTTPException
        from fastapi.responses import JSONResponse
    except ImportError:
        raise ConfigError("tandem serve needs FastAPI and uvicorn: pip install 'tandemlm[serve]'") from None
    models, programs = dict(models or {}), dict(programs or {})
    if not models and not programs:
        raise ConfigError("tandem serve: nothing to serve; name at least one model or program")
    clash = set(models) & set(programs)
    if clash:
        raise ConfigError(f"tandem serve: {', '.join(sorted(clash))} named both a model and a program")
    batchers = {name: _Batcher(model.generate, window_s, max_batch) for name, model in models.items()}
    batchers.update({name: _Batcher(lambda rows, p=pipe: p.batch(rows), window_s, max_batch)
                     for name, pipe in programs.items()})
    app = FastAPI(title="tandemlm", description="OpenAI-compatible endpoints for tandem models")
    app.state.batchers = batchers

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "tandemlm"}
                                           for name in batchers]}

    async def complete(body: dict[str, Any], chat: bool) -> dict[str, Any]:
        name = body.get("model")
        if name not in batchers:
            raise HTTPException(404, f"no model named {name!r}; served: {', '.join(batchers)}")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise HTTPException(400, "'messages' must be a non-empty list")
            text = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                raise HTTPException(400, "'prompt' must be a string")
        try:
            if name in models:
                item: Any = GenRequest(
                    messages=tuple({"role": m["role"], "content": m["content"]} for m in messages)
                    if chat else None, prompt=None if chat else text,
                    max_new_tokens=int(body.get("max_tokens") or 256),
                    temperature=float(body.get("temperature") or 0.0),
                    top_p=float(body.get("top_p") or 1.0), n=int(body.get("n") or 1),
                    seed=body.get("seed"), stop=_stops(body.get("stop")))
            else:
                item = _pipeline_inputs(programs[name], text)
        except (ValueError, TypeError, KeyError) as exc:
            raise HTTPException(400, str(exc)) from None
        result = await asyncio.wrap_future(batchers[name].submit(item))
        return _response(name, chat, result, programs.get(name))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict[str, Any]) -> Any:
        return await complete(body, chat=True)

    @app.post("/v1/completions")
    async def completions(body: dict[str, Any]) -> Any:
        return await complete(body, chat=False)

    @app.exception_handler(HTTPException)
    async def openai_error(_: Any, exc: HTTPException) -> Any:  # OpenAI's error shape
        return JSONResponse({"error": {"message": exc.detail, "type": "invalid_request_error"}},
                            status_code=exc.status_code)

    return app


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _response(name: str, chat: bool, result: Any, pipeline: Pipeline | None) -> dict[str, Any]:
    from fastapi import HTTPException

    if isinstance(result, GenResult):
        if not result.ok:
            raise HTTPException(500, result.error)
        texts, usage = result.texts, (result.tokens_in, result.tokens_out)
    else:  # an ExampleResult of a pipeline
        if not result.ok:
            raise HTTPException(500, result.error)
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
