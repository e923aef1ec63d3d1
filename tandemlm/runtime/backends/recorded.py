"""`recorded`: replays what a real model really answered.

Data files are JSONL in the replay format (one row per question, one entry per model):

    {"id": "...", "prompt": "<exact prompt>", "gold": ..., "models": {"gpt-4": {"output": "...",
     "correct": true, "cost_usd": 0.0086, "tokens_in": null, "tokens_out": null, ...}}}

A request is looked up by its `key` when it has one — the row id, or `FILE#ID` (the data file's
name and the row id) for an id that occurs in several files — else by its exact prompt text.
An unknown key, or a prompt recorded with different answers, fails that request with a clear
error: this backend never makes up an answer.

    gpt4 = Model("recorded", "gpt-4", data="overruling_all.jsonl")
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandemlm.runtime.backend import Backend
from tandemlm.runtime.errors import ConfigError, ReplayMiss
from tandemlm.runtime.text_files import decode
from tandemlm.runtime.types import GenRequest, GenResult


@dataclass(frozen=True)
class Recording:
    """One recorded answer of one model to one row."""

    row_id: str
    output: str
    correct: bool | None
    cost_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    latency_s: float | None
    confidence: float | None


@dataclass
class _Table:
    rows: list[dict[str, Any]]
    digest: str


_TABLES: dict[tuple[str, int, int], _Table] = {}
_TABLES_LOCK = threading.Lock()


def read_replay_file(path: str | Path) -> _Table:
    """Parse (once per file version) a replay JSONL file; malformed lines name file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recorded data file '{path}' does not exist; pass data=<path to a replay "
                          f".jsonl file>")
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _TABLES_LOCK:
        if cache_key in _TABLES:
            return _TABLES[cache_key]
    raw = path.read_bytes()
    if path.suffix == ".gz":  # a gzip-compressed replay file (the packaged OVERRULING data)
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"recorded data file '{path}' is not a readable gzip file ({exc}); "
                              f"replace it with a valid copy") from None
    rows, text = [], decode(raw, path, what="recorded data file")
    # split on newlines only: JSON strings may hold U+2028 and other characters splitlines() cuts at
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON ({exc.msg}); each line of a replay "
                              f"file must be one JSON object") from None
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("models"), dict):
            raise ConfigError(f"{path}:{number}: a replay row needs an 'id' and a 'models' object")
        rows.append(row)
    table = _Table(rows=rows, digest=hashlib.sha256(raw).hexdigest())
    with _TABLES_LOCK:
        _TABLES[cache_key] = table
    return table


def _recording(row: dict[str, Any], entry: dict[str, Any]) -> Recording:
    latency = entry.get("latency_ms")
    return Recording(row_id=str(row["id"]), output=str(entry.get("output") or ""),
                     correct=entry.get("correct"), cost_usd=entry.get("cost_usd"),
                     tokens_in=entry.get("tokens_in"), tokens_out=entry.get("tokens_out"),
                     latency_s=latency / 1000.0 if latency is not None else None,
                     confidence=entry.get("confidence"))


class RecordedBackend(Backend):
    """Replays one model's recorded outputs from one or more replay files."""

    name = "recorded"
    remote = True  # the recordings came from hosted APIs

    def __init__(self, model_id: str, *, data: str | list[str] | None = None,
                 **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"unknown recorded backend options: {', '.join(sorted(unknown))}")
        if not data:
            raise ConfigError(f"recorded model '{model_id}' needs data=<replay .jsonl path(s)>")
        super().__init__(model_id)
        self.paths = [Path(p) for p in ([data] if isinstance(data, str | Path) else data)]
        self._by_id: dict[str, Recording] = {}
        self._by_prompt: dict[str, list[Recording]] = {}
        self._digests: tuple[str, ...] = ()
        self._ambiguous: set[str] = set()
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Recording]:
        """Index this model's recordings, again whenever a data file changed on disk."""
        with self._lock:
            tables = [read_replay_file(path) for path in self.paths]  # cached per file version
            digests = tuple(t.digest for t in tables)
            if digests == self._digests:
                return self._by_id
            by_id: dict[str, Recording] = {}
            by_prompt: dict[str, list[Recording]] = {}
            models: set[str] = set()
            ambiguous: set[str] = set()
            for path, table in zip(self.paths, tables, strict=True):
                for row in table.rows:
                    models.update(row["models"])
                    entry = row["models"].get(self.model_id)
                    if entry is None:
                        continue
                    record = _recording(row, entry)
                    by_id[f"{path.name}#{record.row_id}"] = record
                    if record.row_id in by_id:  # in two files: only FILE#ID names it
                        ambiguous.add(record.row_id)
                    by_id[record.row_id] = record
                    if isinstance(row.get("prompt"), str):  # (a multi-turn prompt: by id only)
                        by_prompt.setdefault(row["prompt"], []).append(record)
            if not by_id:
                raise ConfigError(f"no recordings of model '{self.model_id}' in "
                                  f"{', '.join(map(str, self.paths))}; recorded models there: "
                                  f"{', '.join(sorted(models)) or 'none'}")
            for row_id in ambiguous:
                del by_id[row_id]
            self._ambiguous = ambiguous
            self._by_id, self._by_prompt, self._digests = by_id, by_prompt, digests
            return by_id

    def identity(self) -> str:
        return "+".join(read_replay_file(p).digest[:16] for p in self.paths) + f":{self.model_id}"

    def lookup(self, request: GenRequest) -> Recording:
        """The recording that answers `request`; raises `ReplayMiss` when there is none."""
        by_id = self._load()
        if request.key is not None:
            if request.key in self._ambiguous:
                raise ReplayMiss(f"row id '{request.key}' occurs in several data files of model "
                                 f"'{self.model_id}'; send the key as FILE#ID (e.g. "
                                 f"'{self.paths[0].name}#{request.key}')")
            if request.key not in by_id:
                raise ReplayMiss(f"model '{self.model_id}' has no recording with id "
                                 f"'{request.key}'; check that the data file holds this row")
            return by_id[request.key]
        prompt = request.prompt
        if prompt is None:
            users = [m["content"] for m in request.messages or () if m.get("role") == "user"]
            prompt = users[-1] if users else ""
        found = self._by_prompt.get(prompt, [])
        if not found:
            raise ReplayMiss(f"model '{self.model_id}' has no recording for this prompt "
                             f"({prompt[:80]!r}...); recorded models only answer recorded prompts")
        if len({r.output for r in found}) > 1:
            raise ReplayMiss(f"model '{self.model_id}' recorded {len(found)} different answers for "
                             f"this prompt (rows {', '.join(r.row_id for r in found)}); send the row "
                             f"id as the request key")
        return found[0]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results = []
        for request in requests:
            if request.n != 1:
                results.append(GenResult.failed(
                    f"recorded model '{self.model_id}' holds one answer per prompt; n={request.n} "
                    f"samples cannot be replayed"))
                continue
            try:
                record = self.lookup(request)
            except ReplayMiss as exc:  # this request fails alone
                results.append(GenResult.failed(f"{type(exc).__name__}: {exc}"))
                continue
            text = record.output
            cuts = [text.index(s) for s in request.stop if s in text]
            results.append(GenResult(texts=[text[: min(cuts)] if cuts else text],
                                     tokens_in=record.tokens_in, tokens_out=record.tokens_out,
                                     latency_s=record.latency_s or 0.0, cost_usd=record.cost_usd,
                                     confidence=record.confidence))
        return results
