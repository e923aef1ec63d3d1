"""Test doubles, labelled as such. Nothing here talks to a real model.

`ScriptedBackend` (registered as backend "scripted") answers from rules, so tests can drive
control flow deterministically and inspect every request a node sent:

    model = Model("scripted", "echo", reply=lambda req: "[[ ## answer ## ]]\\n42")
    model.backend.history   # every GenRequest received, in order

Rules, checked in order: `fail` (a predicate or substring: matching requests fail alone),
`replies` (dict: exact prompt text -> reply), `rules` (list of (substring or predicate, reply)),
`queue` (replies consumed in order), then `reply` (a string, or callable(request) -> str).
`adapter` is accepted and ignored by the replies, so a scripted model can stand in for a
fine-tuned one: the adapter's content is part of the `Model`'s fingerprint, as for a real model.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from tandemlm.runtime.backend import Backend
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.types import GenRequest, GenResult, ScoreRequest, ScoreResult

Reply = str | Callable[[GenRequest], str]
Matcher = str | Callable[[GenRequest], bool]


def request_text(request: GenRequest | ScoreRequest) -> str:
    """The whole text of a request: the raw prompt, or all messages joined."""
    if request.prompt is not None:
        return request.prompt
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in request.messages or ())


def chat_reply(**fields: object) -> str:
    """A well-formed ChatAdapter completion carrying `fields`, for scripted replies."""
    return "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in fields.items()) + "[[ ## completed ## ]]"


def request_field(request: GenRequest, name: str) -> str:
    """The value of input field `name` in a ChatAdapter-formatted request's last message."""
    content = request.messages[-1]["content"] if request.messages else request.prompt or ""
    match = re.search(rf"\[\[ ## {re.escape(name)} ## \]\]\n(.*?)(?:\n\n|$)", content, re.S)
    if match is None:
        raise KeyError(f"no field {name!r} in the request")
    return match.group(1)


def demo_values(request: GenRequest, name: str) -> list[str]:
    """The values of field `name` in the demos of a ChatAdapter-formatted request (the turns
    between the system message and the last user message), in order."""
    turns = (request.messages or ())[1:-1]
    pattern = rf"\[\[ ## {re.escape(name)} ## \]\]\n(.*?)(?:\n\n|$)"
    return [m.group(1) for turn in turns for m in [re.search(pattern, turn["content"], re.S)] if m]


def spy_batches(monkeypatch: Any, backend: Backend, method: str,
                record: Callable[[list], Any] = len) -> list:
    """Wrap `backend.<method>` (generate, logprobs, classify) so every batch it receives is
    recorded — by default its size — and still served; returns the list of records."""
    calls: list = []
    real = getattr(backend, method)
    monkeypatch.setattr(backend, method, lambda requests: calls.append(record(list(requests)))
                        or real(requests))
    return calls


def _matches(matcher: Matcher, request: GenRequest) -> bool:
    return matcher(request) if callable(matcher) else matcher in request_text(request)


class ScriptedBackend(Backend):
    """TEST DOUBLE: a deterministic backend driven by rules. Not a model."""

    name = "scripted"
    supports_logprobs = True

    def __init__(self, model_id: str, *, reply: Reply | None = None,
                 replies: dict[str, str] | None = None,
                 rules: list[tuple[Matcher, Reply]] | None = None, queue: list[str] | None = None,
                 fail: Matcher | None = None, adapter: str | None = None,
                 logprob: Callable[[ScoreRequest, str], float] | None = None,
                 tokens_per_char: float = 0.25, **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"unknown scripted backend options: {', '.join(sorted(unknown))}")
        super().__init__(model_id)
        self.reply, self.replies, self.rules = reply, dict(replies or {}), list(rules or [])
        self.queue, self.fail, self.logprob_fn = list(queue or []), fail, logprob
        self.tokens_per_char, self.adapter = tokens_per_char, adapter
        self.history: list[GenRequest] = []
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def _answer(self, request: GenRequest) -> str:
        text = request_text(request)
        if text in self.replies:
            return self.replies[text]
        for matcher, reply in self.rules:
            if _matches(matcher, request):
                return reply(request) if callable(reply) else reply
        if self.queue:
            return self.queue.pop(0)
        if self.reply is None:
            raise ConfigError(f"scripted model '{self.model_id}' has no reply for: {text[:200]!r}")
        return self.reply(request) if callable(self.reply) else self.reply

    def _one(self, request: GenRequest) -> GenResult:
        start = time.perf_counter()
        if self.fail is not None and _matches(self.fail, request):
            return GenResult.failed("scripted failure", time.perf_counter() - start)
        try:
            texts = [self._answer(request) for _ in range(request.n)]
        except ConfigError as exc:
            return GenResult.failed(str(exc))
        texts = [_cut_at_stop(t, request.stop) for t in texts]
        tokens_in = max(1, int(len(request_text(request)) * self.tokens_per_char))
        tokens_out = sum(max(1, int(len(t) * self.tokens_per_char)) for t in texts)
        return GenResult(texts=texts, tokens_in=tokens_in, tokens_out=tokens_out,
                         latency_s=time.perf_counter() - start)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        with self._lock:
            self.history.extend(requests)
            self.batches.append(len(requests))
            return [self._one(r) for r in requests]

    def logprobs(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        if self.logprob_fn is None:
            raise ConfigError(f"scripted model '{self.model_id}' was given no `logprob` function")
        return [ScoreResult(logprobs=[float(self.logprob_fn(r, c)) for c in r.continuations],
                            token_logprobs=[[float(self.logprob_fn(r, c))] for c in r.continuations])
                for r in requests]


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


class FullDisk:
    """TEST DOUBLE for a text file on a disk with room for `room` more writes (lines): the next
    write puts half its text on disk, as write(2) does when the disk fills mid-line, then fails
    with ENOSPC. Everything else goes to the real file `handle`."""

    def __init__(self, handle: Any, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, text: str) -> int:
        if self.room == 0:
            self.handle.write(text[:len(text) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= 1
        return self.handle.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def fill_disk_after(monkeypatch: Any, room: int) -> None:
    """Make the results file of the next `evaluate(..., out=DIR)` (or `tandem eval --out DIR`) a
    `FullDisk` with room for `room` records; the run after it finds room again."""
    from tandemlm.evaluate.results_dir import ResultsDir

    start = ResultsDir.start

    def filling(self: ResultsDir, *args: Any, **kwargs: Any) -> Any:
        done = start(self, *args, **kwargs)
        self._handle = FullDisk(self._handle, room)
        monkeypatch.setattr(ResultsDir, "start", start)
        return done

    monkeypatch.setattr(ResultsDir, "start", filling)
