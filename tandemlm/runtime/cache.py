"""A call cache keyed by model fingerprint: the same model on the same request is not run twice.

The compiler runs a pipeline over the same examples many times (before and after each pass, with
a teacher, on the valset); only the nodes whose model changed must run again. A cache entry's key
is (model fingerprint, request), and the fingerprint covers the weights and the LoRA adapter, so a
fine-tuned model never hits the entries of the model it came from.

    cache = CallCache("out/calls.sqlite")          # or CallCache() for memory only
    with use_cache(cache):
        pipeline.batch(examples)                   # every Model call goes through the cache

Sampled requests without a seed are never cached: each call must draw anew. Failed results are
not cached either, so a transient backend error is retried the next time.

The sqlite file is safe under concurrent writers (WAL journal, a busy timeout; entries are
idempotent), can be bounded (`max_entries`: the oldest entries go first), and a damaged file is
moved aside to `<name>.corrupt-<time>` and rebuilt empty with a warning — a cache never stops a
run. An entry that no longer parses is dropped and recomputed.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tandemlm.runtime.types import (ClassifyRequest, ClassifyResult, GenRequest, GenResult,
                                    ScoreRequest, ScoreResult)

_RESULT_TYPES = {"generate": GenResult, "logprobs": ScoreResult, "classify": ClassifyResult}
_ACTIVE: contextvars.ContextVar[CallCache | None] = contextvars.ContextVar("tandem_call_cache",
                                                                          default=None)


def _cacheable(request: Any) -> bool:
    if isinstance(request, GenRequest):
        return request.greedy or request.seed is not None
    return isinstance(request, (ScoreRequest, ClassifyRequest))


def request_key(kind: str, fingerprint: str, request: Any) -> str:
    payload = json.dumps([kind, fingerprint, dataclasses.asdict(request)], sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


class CallCache:
    """Results of model calls by (kind, model fingerprint, request); in memory, and in a sqlite
    file when `path` is given (so an interrupted compile keeps the calls it already paid for)."""

    def __init__(self, path: str | Path | None = None, *, max_entries: int | None = None) -> None:
        self._memory: dict[str, str] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.max_entries = max_entries
        self.hits = self.misses = 0
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open(Path(path))
            except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
                moved = Path(f"{path}.corrupt-{int(time.time())}")
                Path(path).replace(moved)
                warnings.warn(f"call cache {path} was unreadable ({exc}); moved it to {moved} and "
                              f"started an empty cache", stacklevel=2)
                self._db = self._open(Path(path))

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
            db.commit()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def __bool__(self) -> bool:  # a cache is a cache even while empty (`cache or default`)
        return True

    def __len__(self) -> int:
        if self._db is not None:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        return len(self._memory)

    def _get(self, key: str) -> str | None:
        value = self._memory.get(key)
        if value is None and self._db is not None:
            row = self._db.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
            value = row[0] if row else None
        return value

    def _drop(self, key: str) -> None:
        self._memory.pop(key, None)
        if self._db is not None:
            self._db.execute("DELETE FROM calls WHERE key = ?", (key,))
            self._db.commit()

    def _put(self, entries: dict[str, str]) -> None:
        self._memory.update(entries)
        if self._db is not None and entries:
            self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?)", entries.items())
            self._db.commit()
        if self.max_entries is not None:
            self._evict()

    def _evict(self) -> None:
        while len(self._memory) > self.max_entries:
            self._memory.pop(next(iter(self._memory)))  # the oldest first (insertion order)
        if self._db is not None:
            extra = len(self) - self.max_entries
            if extra > 0:
                self._db.execute("DELETE FROM calls WHERE rowid IN (SELECT rowid FROM calls ORDER BY "
                                 "rowid LIMIT ?)", (extra,))
                self._db.commit()

    def call(self, kind: str, fingerprint: str, requests: list, run: Callable[[list], list]) -> list:
        """Answer `requests` from the cache where possible; `run` the rest as one batch."""
        keys = [request_key(kind, fingerprint, r) if _cacheable(r) else None for r in requests]
        result_type = _RESULT_TYPES[kind]
        out: list[Any] = [None] * len(requests)
        with self._lock:
            for i, key in enumerate(keys):
                stored = self._get(key) if key is not None else None
                if stored is not None:
                    try:
                        out[i] = result_type(**json.loads(stored))
                    except (json.JSONDecodeError, TypeError):  # damaged or from another version
                        self._drop(key)
        todo = [i for i, r in enumerate(out) if r is None]
        self.hits += len(requests) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = run([requests[i] for i in todo])
            new = {}
            for i, result in zip(todo, fresh, strict=True):
                out[i] = result
                if keys[i] is not None and result.ok:
                    new[keys[i]] = json.dumps(dataclasses.asdict(result))
            with self._lock:
                self._put(new)
        return out

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def active_cache() -> CallCache | None:
    """The cache model calls go through in this context, if any."""
    return _ACTIVE.get()


@contextmanager
def use_cache(cache: CallCache | None) -> Iterator[CallCache | None]:
    """Route every model call in this context (threads started with a copy of it included)
    through `cache`."""
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)
