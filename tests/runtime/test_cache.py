"""The call cache: a model call is paid once per (model fingerprint, request).

The models are scripted TEST DOUBLES configured with JSON options (`rules`, `queue`), which is
what makes them cacheable: a model whose options hold callables has no stable identity and goes
around the cache by design. Their `history` shows which requests really reached the backend.
"""

from __future__ import annotations

from tandemlm import LMNode, Model, Pipeline
from tandemlm.runtime import CallCache, GenRequest, use_cache
from tandemlm.testing import chat_reply


def ask(text: str, **options) -> GenRequest:
    return GenRequest(messages=({"role": "user", "content": text},), **options)


def scripted(name: str, **options) -> Model:
    model = Model("scripted", f"cache-{name}", **options)
    model.backend.history.clear()  # backends are shared per configuration
    return model


def test_the_same_request_to_the_same_model_runs_once():
    model = scripted("same", rules=[["hi", "hello"]], reply="what?")
    cache = CallCache()
    with use_cache(cache):
        first = model.generate([ask("hi"), ask("bye")])
        second = model.generate([ask("hi"), ask("again")])
    assert [r.text for r in first + second] == ["hello", "what?", "hello", "what?"]
    # Only the new request of the second batch reached the backend, as a batch of one.
    assert [m.messages[0]["content"] for m in model.backend.history] == ["hi", "bye", "again"]
    assert model.backend.batches == [2, 1]
    assert (cache.hits, cache.misses) == (1, 3)
    assert second[0].tokens_in == first[0].tokens_in  # the stored result, whole


def test_a_pipeline_run_twice_calls_its_model_once():
    model = scripted("pipeline", reply=chat_reply(answer="4"))
    pipe = Pipeline([LMNode("question -> answer", model="m")], models={"m": model})
    examples = [{"question": "2+2"}, {"question": "3+1"}]
    with use_cache(CallCache()):
        first = pipe.batch(examples)
        second = pipe.batch(examples)
    assert len(model.backend.history) == 2
    assert [r.outputs for r in first] == [r.outputs for r in second] == [{"answer": "4"}] * 2
    # The cost of a cached call is still the call's cost: the trace reports the same tokens.
    assert [t.tokens_in for r in second for t in r.trace] == [t.tokens_in for r in first for t in r.trace]


def test_no_cache_in_context_means_every_call_runs():
    model = scripted("nocache", reply="x")
    model.generate([ask("hi")])
    model.generate([ask("hi")])
    assert len(model.backend.history) == 2


def test_a_retrained_adapter_misses_and_its_old_content_hits(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"weights v1")
    model = scripted("adapter", adapter=str(adapter), reply="tuned")
    before = model.fingerprint
    cache = CallCache()
    with use_cache(cache):
        model.generate([ask("hi")])
        weights.write_bytes(b"weights v2")  # retrained in place: same path, new content
        assert model.fingerprint != before
        model.generate([ask("hi")])
        weights.write_bytes(b"weights v1")
        model.generate([ask("hi")])
    assert len(model.backend.history) == 2
    assert (cache.hits, cache.misses) == (1, 2)


def test_another_model_on_the_same_request_misses():
    first = scripted("first", reply="one")
    other = scripted("other", reply="two")
    with use_cache(CallCache()):
        first.generate([ask("hi")])
        (result,) = other.generate([ask("hi")])
    assert result.text == "two" and len(other.backend.history) == 1


def test_sampled_requests_are_cached_only_with_a_seed():
    model = scripted("sampled", reply="draw")
    cache = CallCache()
    with use_cache(cache):
        for _ in range(2):
            model.generate([ask("hi", temperature=0.7)])
        assert len(model.backend.history) == 2  # each unseeded call must draw anew
        for _ in range(2):
            model.generate([ask("hi", temperature=0.7, seed=3)])
        assert len(model.backend.history) == 3
        model.generate([ask("hi", temperature=0.7, seed=4)])  # another seed, another draw
        assert len(model.backend.history) == 4


def test_failed_results_are_not_cached():
    model = scripted("flaky", queue=[])  # no reply left: the request fails
    cache = CallCache()
    with use_cache(cache):
        (failed,) = model.generate([ask("hi")])
        assert not failed.ok and "no reply" in failed.error
        model.backend.queue.append("recovered")
        (retried,) = model.generate([ask("hi")])
        (cached,) = model.generate([ask("hi")])  # would fail if it reached the empty queue
    assert retried.text == cached.text == "recovered"
    assert len(model.backend.history) == 2


def test_callable_options_go_around_the_cache():
    model = Model("scripted", "cache-callable", reply=lambda request: "fresh")
    with use_cache(CallCache()) as cache:
        model.generate([ask("hi")])
        model.generate([ask("hi")])
    assert len(model.backend.history) == 2 and cache.hits == cache.misses == 0


def test_sqlite_cache_survives_a_new_instance(tmp_path):
    path = tmp_path / "calls.sqlite"
    model = scripted("sqlite", rules=[["hi", "hello"]])
    cache = CallCache(path)
    with use_cache(cache):
        (first,) = model.generate([ask("hi")])
    cache.close()
    reopened = CallCache(path)
    with use_cache(reopened):
        (again,) = model.generate([ask("hi")])
    reopened.close()
    assert len(model.backend.history) == 1 and reopened.hits == 1
    assert again == first



# -- the sqlite file: damage, bounds, concurrent writers ------------------------------------------
def _fill(path, texts, name="file"):
    model = scripted(name, reply="ok")
    cache = CallCache(path)
    with use_cache(cache):
        model.generate([ask(t) for t in texts])
    cache.close()
    return model


def test_a_damaged_cache_file_is_moved_aside_and_rebuilt(tmp_path):
    import pytest

    path = tmp_path / "calls.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.warns(UserWarning, match="unreadable"):
        cache = CallCache(path)
    assert len(cache) == 0 and list(tmp_path.glob("calls.sqlite.corrupt-*"))
    model = scripted("damaged", reply="ok")
    with use_cache(cache):
        assert model.generate([ask("x")])[0].text == "ok"
    assert len(cache) == 1


def test_a_damaged_entry_is_dropped_and_recomputed(tmp_path):
    import sqlite3

    import pytest

    path = tmp_path / "calls.sqlite"
    _fill(path, ["a"], "entry")
    db = sqlite3.connect(path)
    db.execute("UPDATE calls SET value = '{broken'")
    db.commit()
    db.close()
    model = scripted("entry", reply="ok")
    with use_cache(CallCache(path)), pytest.warns(UserWarning, match="not JSON"):
        assert model.generate([ask("a")])[0].text == "ok"
    assert len(model.backend.history) == 1  # recomputed, not crashed on
    with use_cache(CallCache(path)):
        model.generate([ask("a")])
    assert len(model.backend.history) == 1  # and stored again


def test_max_entries_keeps_the_newest(tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite", max_entries=3)
    model = scripted("bounded", reply="ok")
    with use_cache(cache):
        model.generate([ask(f"q{i}") for i in range(5)])
        assert len(cache) == 3
        model.generate([ask("q4"), ask("q0")])  # q4 is kept, q0 was evicted
    assert [m.messages[0]["content"] for m in model.backend.history][-1:] == ["q0"]


def _writer(path: str, start: int) -> None:
    _fill(path, [f"w{i}" for i in range(start, start + 200)], f"writer{start}")


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    import multiprocessing

    path = str(tmp_path / "calls.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, start)) for start in (0, 100, 200)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(CallCache(path)) == 600  # three models (distinct fingerprints), 200 requests each
