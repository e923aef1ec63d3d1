"""The call cache under faults: another process holding the sqlite file's lock, a damaged file,
entries tampered with, weights rewritten in place.

The models are scripted TEST DOUBLES (see tests/runtime/test_cache.py); the lock is a real one,
held by a second Python process through its own sqlite connection (`BEGIN EXCLUSIVE`).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import contextmanager

import pytest

from checkpoints import fake_checkpoint
from tandemlm import Model
from tandemlm.runtime import CallCache, ClassifyRequest, GenRequest, ScoreRequest, use_cache
from tandemlm.runtime.cache import request_key
from tandemlm.runtime.types import ClassifyResult, GenResult, ScoreResult

_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2]:
    db.execute(f"PRAGMA journal_mode={sys.argv[2]}")
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.rollback()
db.close()
"""


@contextmanager
def held_lock(path, journal: str = ""):
    """Another process holds an exclusive lock on `path` until the block ends. With
    journal="DELETE" (a rollback journal) the lock keeps readers out too; in WAL mode (the
    cache's own) it keeps out writers only."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), journal],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0


def ask(text: str) -> GenRequest:
    return GenRequest(messages=({"role": "user", "content": text},))


def scripted(name: str) -> Model:
    model = Model("scripted", f"fault-{name}", reply="ok")  # TEST DOUBLE
    model.backend.history.clear()  # backends are shared per configuration
    return model


def fill(path, texts, name: str) -> None:
    cache = CallCache(path)
    with use_cache(cache):
        scripted(name).generate([ask(t) for t in texts])
    cache.close()


def rows(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    finally:
        db.close()


# -- a lock is not damage ---------------------------------------------------------------------
def test_a_file_locked_at_open_is_left_in_place_with_its_entries(tmp_path):
    path = tmp_path / "calls.sqlite"
    fill(path, ["a", "b"], "open")
    with held_lock(path, journal="DELETE"):
        with pytest.warns(UserWarning, match="locked by another process"):
            cache = CallCache(path, busy_timeout=0.05)
        model = scripted("open")
        with use_cache(cache):
            (result,) = model.generate([ask("a")])  # the file cannot be read: run the call
        assert result.text == "ok" and len(model.backend.history) == 1
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))
    cache.close()  # the lock is gone: what was computed meanwhile is written now
    assert rows(path) == 2
    with use_cache(CallCache(path)) as reopened:
        model.generate([ask("a"), ask("b")])
    assert len(model.backend.history) == 1 and reopened.hits == 2


def test_a_call_while_another_process_holds_the_lock_returns_its_result(tmp_path):
    path = tmp_path / "calls.sqlite"
    fill(path, ["a"], "call")
    cache = CallCache(path, busy_timeout=0.05, retry_after=0)
    model = scripted("call")
    with use_cache(cache):
        with held_lock(path):
            with pytest.warns(UserWarning, match="locked by another process") as caught:
                results = model.generate([ask("a"), ask("new")])
                model.generate([ask("newer")])
            assert [r.text for r in results] == ["ok", "ok"]
            # "a" came from the file (in WAL mode a writer's lock does not keep readers out)
            assert [m.messages[0]["content"] for m in model.backend.history] == ["new", "newer"]
            assert len(caught) == 1  # one warning, not one per call
            assert rows(path) == 1
        model.generate([ask("new"), ask("last")])  # from memory; the file is free again
    assert len(model.backend.history) == 3
    assert rows(path) == 4  # the entries computed under the lock were written with the next ones
    cache.close()


def test_a_damaged_page_is_still_moved_aside(tmp_path):
    path = tmp_path / "calls.sqlite"
    fill(path, [f"q{i} " + "x" * 500 for i in range(40)], "damaged")
    data = bytearray(path.read_bytes())
    page = 4096
    data[page:3 * page] = b"\xff" * (2 * page)  # the table's pages, not the header
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="unreadable"):
        cache = CallCache(path)
    assert len(cache) == 0 and list(tmp_path.glob("calls.sqlite.corrupt-*"))
    cache.close()


# -- entries are checked before they are returned -----------------------------------------------
GEN, SCORE, CLASSIFY = ask("q"), ScoreRequest(continuations=("Yes", "No"), prompt="q"), \
    ClassifyRequest(text="q")
GOOD = {"generate": GenResult(texts=["right"], tokens_in=3, tokens_out=1),
        "logprobs": ScoreResult(logprobs=[-0.5, -1.5], token_logprobs=[[-0.5], [-1.5]]),
        "classify": ClassifyResult(probs=[0.25, 0.75], logits=[-1.0, 1.0])}


@pytest.mark.parametrize("kind, request_, stored", [
    ("generate", GEN, {"texts": "right", "tokens_in": 3}),  # a string, not a list of strings
    ("generate", GEN, {"texts": [1, 2]}),
    ("generate", GEN, {"texts": ["right"], "tokens_in": "3"}),
    ("generate", GEN, {"texts": ["right"], "tokens_in": True}),
    ("generate", GEN, {"texts": ["right"], "latency_s": None}),
    ("generate", GEN, {"texts": ["right"], "error": "boom"}),  # failed results are never stored
    ("generate", GEN, {"texts": ["right"], "surprise": 1}),
    ("generate", GEN, ["right"]),
    ("generate", GEN, "{not json"),
    ("logprobs", SCORE, {"logprobs": ["-0.5", "-1.5"]}),
    ("logprobs", SCORE, {"logprobs": [-0.5, -1.5], "token_logprobs": [-0.5, -1.5]}),
    ("classify", CLASSIFY, {"probs": [0.25, "0.75"]}),
])
def test_an_entry_of_the_wrong_shape_is_recomputed_not_returned(tmp_path, kind, request_, stored):
    path = tmp_path / "calls.sqlite"
    CallCache(path).close()
    db = sqlite3.connect(path)
    value = stored if isinstance(stored, str) else json.dumps(stored)
    db.execute("INSERT INTO calls VALUES (?, ?)", (request_key(kind, "fp", request_), value))
    db.commit()
    db.close()
    runs: list[list] = []

    def run(requests):  # TEST DOUBLE standing in for the backend
        runs.append(requests)
        return [GOOD[kind]]

    cache = CallCache(path)
    with pytest.warns(UserWarning, match="did not have that result's shape"):
        (result,) = cache.call(kind, "fp", [request_], run)
    assert result == GOOD[kind] and len(runs) == 1
    cache.close()
    again = CallCache(path)  # the entry was overwritten with the recomputed result
    assert again.call(kind, "fp", [request_], run) == [GOOD[kind]] and len(runs) == 1
    again.close()


def test_a_well_formed_entry_is_returned_whole():
    cache = CallCache()
    for kind, request_ in (("generate", GEN), ("logprobs", SCORE), ("classify", CLASSIFY)):
        cache.call(kind, "fp", [request_], lambda requests, kind=kind: [GOOD[kind]])
        assert cache.call(kind, "fp", [request_], lambda requests: pytest.fail("ran")) == [GOOD[kind]]
    assert cache.hits == 3


# -- the key follows the weights ----------------------------------------------------------------
def test_hf_weights_rewritten_in_place_miss_the_cache(tmp_path, monkeypatch):
    checkpoint = tmp_path / "model"
    weights = fake_checkpoint(checkpoint)
    model = Model("hf", str(checkpoint), device="cpu")
    seen: list[int] = []

    def engine(requests):  # TEST DOUBLE for the model: the weights are never loaded, only hashed
        seen.append(len(requests))
        return [GenResult(texts=[weights.read_text()]) for _ in requests]

    monkeypatch.setattr(model.backend, "generate", engine)
    with use_cache(CallCache()):
        assert model.generate([ask("hi")])[0].text == "weights v1"
        assert model.generate([ask("hi")])[0].text == "weights v1" and len(seen) == 1
        weights.write_bytes(b"weights v2")  # e.g. a merged fine-tune saved over the same path
        assert model.generate([ask("hi")])[0].text == "weights v2" and len(seen) == 2
