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
idempotent) and can be bounded (`max_entries`: the oldest entries go first). A cache never stops
a run:

* a file another process keeps locked past `busy_timeout` seconds is left as it is: calls go on
  without it (one warning), their results are kept in memory and written once it is free again
  (tried every `retry_after` seconds); so does any other sqlite error on a read or a write;
* a damaged file (not a database, a malformed page, a failed integrity check) is moved aside to
  `<name>.corrupt-<time>` and rebuilt empty with a warning; a locked one never is;
* an entry that does not parse, or whose values do not have the types of the result it stands
  for (`texts` a string, a log-probability a string, a stored error), is a miss: recomputed and
  overwritten, with a warning, never returned.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import sqlite3
import threading
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from tandemlm.runtime.types import (ClassifyRequest, ClassifyResult, GenRequest, GenResult,
                                    ScoreRequest, ScoreResult)

_RESULT_TYPES = {"generate": GenResult, "logprobs": ScoreResult, "classify": ClassifyResult}
#: each result type's fields and their declared types, which a stored entry must have
_FIELD_TYPES = {cls: typing.get_type_hints(cls) for cls in _RESULT_TYPES.values()}
_ACTIVE: contextvars.ContextVar[CallCache | None] = contextvars.ContextVar("tandem_call_cache",
                                                                          default=None)
_T = TypeVar("_T")


def _cacheable(request: Any) -> bool:
    if isinstance(request, GenRequest):
        return request.greedy or request.seed is not None
    return isinstance(request, (ScoreRequest, ClassifyRequest))


def request_key(kind: str, fingerprint: str, request: Any) -> str:
    payload = json.dumps([kind, fingerprint, dataclasses.asdict(request)], sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has a result field's declared type (the types results use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if hint is type(None):
        return value is None
    if hint is float:  # an integral float may come back from JSON as an int; a bool is no number
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (int, str):
        return type(value) is hint
    return False  # a field type this check does not know is not trusted


def _load(result_type: type, stored: Any) -> tuple[Any, str | None]:
    """The result a stored entry stands for, or None and what is wrong with the entry."""
    try:
        value = json.loads(stored) if isinstance(stored, str) else None
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON: {exc}"
    hints = _FIELD_TYPES[result_type]
    if not isinstance(value, dict):
        return None, f"a {type(value).__name__}, not an object"
    unknown = sorted(set(value) - set(hints))
    if unknown:
        return None, f"unknown field(s) {', '.join(unknown)}"
    for name, item in value.items():
        if not _fits(item, hints[name]):
            return None, f"{name} should be {hints[name]}, got {json.dumps(item)[:80]}"
    if value.get("error") is not None:  # failed results are never stored
        return None, "a failed result"
    return result_type(**value), None


def _busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock: the file is healthy, only in use."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _damaged(exc: sqlite3.Error) -> bool:
    """The file is no database or a damaged one (not merely locked, unwritable or full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc).lower()
    return not _busy(exc) and any(sign in text for sign in ("not a database", "malformed",
                                                            "integrity check failed"))


class CallCache:
    """Results of model calls by (kind, model fingerprint, request); in memory, and in a sqlite
    file when `path` is given (so an interrupted compile keeps the calls it already paid for).

    `busy_timeout`: seconds a read or write waits for another process's lock on the file before
    the call goes on without it; the file is tried again after `retry_after` seconds.
    """

    def __init__(self, path: str | Path | None = None, *, max_entries: int | None = None,
                 busy_timeout: float = 10.0, retry_after: float = 60.0) -> None:
        self._memory: dict[str, str] = {}
        self._pending: dict[str, str] = {}  # computed while the file could not be written
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.path = Path(path) if path is not None else None
        self.max_entries = max_entries
        self.busy_timeout, self.retry_after = busy_timeout, retry_after
        self.hits = self.misses = 0
        self._retry_at = 0.0  # calls skip the file until time.monotonic() reaches it
        self._warned = False  # one warning for a file that cannot be used, not one per call
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connect()

    @staticmethod
    def _open(path: Path, timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), check_same_thread=False, timeout=timeout)
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
            db.commit()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _connect(self) -> sqlite3.Connection | None:
        """Open the file. A damaged one is moved aside and rebuilt; a locked one (or one that
        fails otherwise: unwritable, disk full) is left as it is and tried again later."""
        assert self.path is not None
        try:
            self._db = self._open(self.path, self.busy_timeout)
        except sqlite3.Error as exc:
            if not _damaged(exc):
                self._unavailable(exc)
                return None
            try:
                self._move_aside(exc)
                self._db = self._open(self.path, self.busy_timeout)
            except (OSError, sqlite3.Error) as again:
                self._unavailable(again)
                return None
        return self._db

    def _move_aside(self, exc: sqlite3.Error) -> None:
        assert self.path is not None
        moved = Path(f"{self.path}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):  # a journal left behind would be replayed into the new file
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(f"{moved}{suffix}")
        warnings.warn(f"call cache {self.path} was unreadable ({exc}); moved it to {moved} and "
                      f"started an empty cache", stacklevel=4)

    def _unavailable(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self.retry_after
        if self._warned:
            return
        self._warned = True
        why = (f"was locked by another process for more than {self.busy_timeout:g} s" if _busy(exc)
               else "could not be used")
        warnings.warn(f"call cache {self.path} {why} ({exc}); calls go on without it: their "
                      f"results are kept in memory and written to it once it can be used "
                      f"(tried again every {self.retry_after:g} s)", stacklevel=4)

    def _file(self, action: Callable[[sqlite3.Connection], _T], default: _T) -> _T:
        """`action` on the sqlite file, or `default` when there is no file or it cannot be used
        now; a sqlite error never leaves this method (see the module docstring)."""
        if self.path is None or time.monotonic() < self._retry_at:
            return default
        db = self._db if self._db is not None else self._connect()
        if db is None:
            return default
        try:
            return action(db)
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                db.rollback()  # a half-begun transaction would keep the file locked for others
            self._unavailable(exc)
            return default

    def __bool__(self) -> bool:  # a cache is a cache even while empty (`cache or default`)
        return True

    def __len__(self) -> int:
        with self._lock:
            stored = self._file(_count, None)
            return len(self._memory) if stored is None else stored + len(self._pending)

    def _get(self, key: str) -> str | None:
        value = self._memory.get(key)
        if value is None:
            row = self._file(lambda db: db.execute("SELECT value FROM calls WHERE key = ?",
                                                   (key,)).fetchone(), None)
            value = row[0] if row else None
        return value

    def _drop(self, key: str) -> None:
        self._memory.pop(key, None)
        self._pending.pop(key, None)

        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM calls WHERE key = ?", (key,))
            db.commit()
        self._file(delete, None)

    def _put(self, entries: dict[str, str]) -> None:
        self._memory.update(entries)
        if self.path is not None:
            self._pending.update(entries)
            if self._pending and self._file(self._write_pending, False):
                self._pending.clear()
        if self.max_entries is not None:
            self._evict()

    def _write_pending(self, db: sqlite3.Connection) -> bool:
        db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?)", self._pending.items())
        db.commit()
        return True

    def _evict(self) -> None:
        assert self.max_entries is not None
        while len(self._memory) > self.max_entries:
            self._memory.pop(next(iter(self._memory)))  # the oldest first (insertion order)
        self._pending = {k: v for k, v in self._pending.items() if k in self._memory}

        def trim(db: sqlite3.Connection) -> None:
            extra = _count(db) - self.max_entries
            if extra > 0:
                db.execute("DELETE FROM calls WHERE rowid IN (SELECT rowid FROM calls ORDER BY "
                           "rowid LIMIT ?)", (extra,))
                db.commit()
        self._file(trim, None)

    def call(self, kind: str, fingerprint: str, requests: list, run: Callable[[list], list]) -> list:
        """Answer `requests` from the cache where possible; `run` the rest as one batch. Never
        raises for the cache's sake: a file that cannot be used is skipped, a bad entry rerun."""
        keys = [request_key(kind, fingerprint, r) if _cacheable(r) else None for r in requests]
        result_type = _RESULT_TYPES[kind]
        out: list[Any] = [None] * len(requests)
        problems: list[str] = []
        with self._lock:
            for i, key in enumerate(keys):
                stored = self._get(key) if key is not None else None
                if stored is not None:
                    out[i], problem = _load(result_type, stored)
                    if problem is not None:  # damaged, tampered with, or from another version
                        problems.append(problem)
                        self._drop(key)
        if problems:
            warnings.warn(f"call cache {self.path or '(memory)'}: {len(problems)} stored "
                          f"{result_type.__name__} entr{'y' if len(problems) == 1 else 'ies'} "
                          f"did not have that result's shape ({problems[0]}); running the "
                          f"call{'' if len(problems) == 1 else 's'} again", stacklevel=2)
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
        """Write what waits to be written (one more try, however recent the last failure) and
        close the file; the cache works from memory afterwards."""
        with self._lock:
            if self._pending:
                self._retry_at = 0.0
                if self._file(self._write_pending, False):
                    self._pending.clear()
            self._retry_at = float("inf")
            if self._db is not None:
                self._db.close()
                self._db = None


def _count(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


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
