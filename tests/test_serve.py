"""`tandem serve` on 127.0.0.1 with a real tiny transformers model and a pipeline, called by the
official `openai` client and by tandem's own `openai` backend: the same answers as in process,
micro-batched, with OpenAI's error shape for bad requests. The bad-request tests send raw HTTP
(malformed JSON, wrong types, oversized and chunked bodies, API keys) to a server of a scripted
model, and check the server keeps answering good requests afterwards."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from typer.testing import CliRunner  # noqa: E402

from tandemlm import Model, Pipeline, Step  # noqa: E402
from tandemlm.cli import app as cli  # noqa: E402
from tandemlm.modules import Solve  # noqa: E402
from tandemlm.runtime import GenRequest  # noqa: E402
from tandemlm.serve import create_app  # noqa: E402
from tandemlm.testing import request_text  # noqa: E402
from tandemlm.tiny import build_tiny_lm  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(app) -> Iterator[str]:
    """`app` under a real uvicorn server on 127.0.0.1; yields its /v1 base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = build_tiny_lm(tmp_path_factory.mktemp("tiny"), seed=0)
    tiny = Model("hf", str(path), name="tiny")
    pipe = Pipeline([Solve("question -> answer", model=tiny, name="solve", prompt_field="question"),
                     Step(lambda answer: answer.upper(), inputs="answer", outputs="shout", name="up")],
                    name="shouter")
    # an untrained tiny model decoding freely cannot write DSPy's field format: every example
    # fails to parse (constrained decoding would make it parse)
    broken = Pipeline([Solve("question -> answer", model=tiny, name="solve", constrained=False)],
                      name="broken")
    app = create_app({"tiny": tiny}, {"shouter": pipe, "broken": broken}, window_s=0.05)
    with _serving(app) as url:
        yield {"url": url, "tiny": tiny, "pipe": pipe, "app": app}


def test_the_openai_client_gets_what_the_model_says_in_process(served):
    client = openai.OpenAI(base_url=served["url"], api_key="unused")
    assert {m.id for m in client.models.list().data} == {"tiny", "shouter", "broken"}
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12)
    (local,) = served["tiny"].generate([GenRequest(messages=tuple(messages), max_new_tokens=12)])
    assert reply.choices[0].message.content == local.text
    assert reply.usage.completion_tokens == local.tokens_out
    text = client.completions.create(model="tiny", prompt="Once upon", max_tokens=8)
    (raw,) = served["tiny"].generate([GenRequest(prompt="Once upon", max_new_tokens=8)])
    assert text.choices[0].text == raw.text


def test_a_served_pipeline_answers_with_its_output(served):
    client = openai.OpenAI(base_url=served["url"], api_key="unused")
    reply = client.chat.completions.create(model="shouter",
                                           messages=[{"role": "user", "content": "What is red?"}])
    (local,) = served["pipe"].batch([{"question": "What is red?"}])
    assert reply.choices[0].message.content == local.outputs["shout"]


def test_concurrent_requests_share_backend_batches(served):
    client = openai.OpenAI(base_url=served["url"], api_key="unused")
    batcher = served["app"].state.batchers["tiny"]
    before = len(batcher.batches)
    prompts = [f"Question {i}?" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda p: client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": p}], max_tokens=6), prompts))
    sizes = batcher.batches[before:]
    assert sum(sizes) == 16 and len(sizes) < 16 and max(sizes) > 1
    local = served["tiny"].generate([GenRequest(messages=({"role": "user", "content": p},),
                                                max_new_tokens=6) for p in prompts])
    assert [r.choices[0].message.content for r in replies] == [r.text for r in local]


def test_tandems_openai_backend_round_trips_through_the_server(served):
    remote = Model("openai", "tiny", base_url=served["url"])
    requests = [GenRequest(messages=({"role": "user", "content": f"Hi {i}"},), max_new_tokens=5)
                for i in range(4)]
    assert [r.text for r in remote.generate(requests)] == [r.text for r in served["tiny"].generate(requests)]


def test_bad_requests_get_openai_errors(served):
    client = openai.OpenAI(base_url=served["url"], api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="no model named"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="non-empty list"):
        client.chat.completions.create(model="tiny", messages=[])
    with pytest.raises(openai.InternalServerError, match="could not parse"):
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    # a failing example does not take the server down
    assert client.chat.completions.create(model="tiny", max_tokens=2,
                                          messages=[{"role": "user", "content": "x"}]).choices


def test_a_lone_surrogate_never_reaches_the_real_tokenizer(served):
    # JSON allows the escape; the hf tokenizer cannot encode the text it decodes to (it was a 500)
    body = b'{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800"}]}'
    response = httpx.post(f"{served['url']}/chat/completions", content=body)
    assert "not valid Unicode" in _error(response, 400, "messages[0].content")
    good = {"model": "tiny", "max_tokens": 2, "messages": HI}
    assert httpx.post(f"{served['url']}/chat/completions", json=good).status_code == 200


# ---- bad requests, against a scripted model ------------------------------------------------------

KEY = "s3cret-key"
LIMIT = 2_000  # max_body_bytes of the `limited` server
HI = [{"role": "user", "content": "hi"}]


def _scripted() -> Model:
    """TEST DOUBLE: answers "ok" to everything, and fails any request mentioning "explode"."""
    return Model("scripted", "echo", name="echo", reply="ok", fail="explode")


def _encoding() -> Model:
    """TEST DOUBLE: encodes the request's text and stop strings as UTF-8, as a tokenizer or an
    HTTP client does, then answers "ok"."""
    return Model("scripted", "utf8", name="utf8",
                 reply=lambda request: "".join([request_text(request), *request.stop]).encode() and "ok")


@pytest.fixture(scope="module")
def scripted():
    app = create_app({"echo": _scripted(), "utf8": _encoding()})
    with _serving(app) as url:
        yield {"url": url, "app": app}


@pytest.fixture(scope="module")
def limited():
    with _serving(create_app({"echo": _scripted()}, max_body_bytes=LIMIT)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed():
    with _serving(create_app({"echo": _scripted()}, api_key=KEY)) as url:
        yield url


def _error(response, status: int, param: str | None = None, code: str | None = None) -> str:
    """Assert `response` is OpenAI's error shape with this status, param and code; its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert (error["param"], error["code"]) == (param, code), error
    return error["message"]


def _ok(response) -> str:
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


@pytest.mark.parametrize("body, phrase", [
    (b'{"model": "echo", "messages": ', "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[" * 5_000, "not valid JSON"),  # nested past Python's recursion limit
    (b'[{"model": "echo"}]', "must be a JSON object, got a JSON array"),
    (b'"hi"', "must be a JSON object"),
])
def test_a_body_that_is_not_a_json_object_is_a_400(scripted, body, phrase):
    response = httpx.post(f"{scripted['url']}/chat/completions", content=body,
                          headers={"Content-Type": "application/json"})
    assert phrase in _error(response, 400)


@pytest.mark.parametrize("route, body, param, phrase", [
    ("chat/completions", {"model": "echo", "messages": ["hi"]}, "messages[0]", "must be an object"),
    ("chat/completions", {"model": ["r"], "messages": HI}, "model", "must be a string"),
    ("chat/completions", {"messages": HI}, "model", "is required"),
    ("chat/completions", {"model": "echo"}, "messages", "is required"),
    ("chat/completions", {"model": "echo", "messages": [{"role": "user"}]}, "messages[0].content",
     "is required"),
    ("chat/completions", {"model": "echo", "messages": [{"role": "user", "content": ["x"]}]},
     "messages[0].content", "must be a string"),
    ("chat/completions", {"model": "echo", "messages": HI, "max_tokens": "lots"}, "max_tokens",
     "must be an integer"),
    ("chat/completions", {"model": "echo", "messages": HI, "max_tokens": "12"}, "max_tokens",
     "must be an integer"),
    ("chat/completions", {"model": "echo", "messages": HI, "temperature": "hot"}, "temperature",
     "must be a number"),
    ("chat/completions", {"model": "echo", "messages": HI, "n": 0}, "n", "must be >= 1"),
    ("chat/completions", {"model": "echo", "messages": HI, "stop": ["a", 1]}, "stop[1]",
     "must be a string"),
    ("completions", {"model": "echo", "prompt": 5}, "prompt", "must be a string"),
    ("completions", {"model": "echo", "prompt": "x", "seed": 1.5}, "seed", "must be an integer"),
])
def test_a_field_of_the_wrong_type_is_a_400_naming_it(scripted, route, body, param, phrase):
    message = _error(httpx.post(f"{scripted['url']}/{route}", json=body), 400, param)
    assert message.startswith(f"'{param}' {phrase}"), message


@pytest.mark.parametrize("route, body, param, phrase", [
    ("chat/completions", b'{"model": "utf8", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages[0].content", "'messages[0].content' is not valid Unicode text"),
    ("chat/completions", b'{"model": "utf8", "messages": [{"role": "system", "content": "hi"}, '
                         b'{"role": "user", "content": "\\udfff"}]}', "messages[1].content",
     "\\udfff at character 0"),
    ("chat/completions", b'{"model": "utf8", "messages": [{"role": "us\\udc00er", "content": "x"}]}',
     "messages[0].role", "\\udc00 at character 2"),
    ("completions", b'{"model": "utf8", "prompt": "x\\ud800"}', "prompt", "'prompt' is not valid Unicode"),
    ("completions", b'{"model": "utf8", "prompt": "x", "stop": "\\ud800"}', "stop", "'stop' is not valid"),
    ("completions", b'{"model": "utf8", "prompt": "x", "stop": ["a", "\\ud800"]}', "stop[1]", "'stop[1]'"),
    ("completions", b'{"model": "utf8\\ud800", "prompt": "x"}', "model", "'model' is not valid Unicode"),
    ("completions", b'{"model": "utf8", "prompt": "x", "user": "\\ud800"}', "user", "'user' is not valid"),
    ("completions", b'{"model": "utf8", "prompt": "x", "metadata": {"\\ud800": "v"}}', "metadata",
     "a key of 'metadata' is not valid Unicode"),
    # a surrogate encoded in the bytes themselves, and a byte that is no UTF-8 at all
    ("completions", b'{"model": "utf8", "prompt": "a\xed\xa0\x80"}', None, "not valid UTF-8 (byte 0xed"),
    ("chat/completions", b'{"model": "utf8", "messages": [{"role": "user", "content": "\xff"}]}', None,
     "not valid UTF-8 (byte 0xff"),
])
def test_text_that_is_not_valid_unicode_is_a_400_naming_the_field(scripted, route, body, param, phrase):
    response = httpx.post(f"{scripted['url']}/{route}", content=body,
                          headers={"Content-Type": "application/json"})
    assert phrase in _error(response, 400, param)


def test_valid_unicode_escapes_still_reach_the_model(scripted):
    url = f"{scripted['url']}/chat/completions"
    pair = b'{"model": "utf8", "messages": [{"role": "user", "content": "\\ud83d\\ude00 \\u00e9"}]}'
    assert _ok(httpx.post(url, content=pair)) == "ok"
    text = [{"role": "user", "content": "é😀"}]
    assert _ok(httpx.post(url, json={"model": "utf8", "messages": text})) == "ok"
    assert _ok(httpx.post(url, content=b'\xef\xbb\xbf{"model": "utf8", "messages": [{"role": "user", '
                                       b'"content": "x"}]}')) == "ok"  # a UTF-8 byte order mark is ignored


@pytest.mark.parametrize("route, extra, param, limit", [
    ("chat/completions", {"n": 17}, "n", 16),
    ("completions", {"n": 1_000_000}, "n", 16),
    ("chat/completions", {"max_tokens": 16_385}, "max_tokens", 16_384),
    ("chat/completions", {"max_completion_tokens": 10**12}, "max_completion_tokens", 16_384),
    ("completions", {"max_tokens": 16_385}, "max_tokens", 16_384),
])
def test_n_and_max_tokens_over_the_servers_limits_are_a_400(scripted, route, extra, param, limit):
    body = {"model": "echo", **({"messages": HI} if route.startswith("chat") else {"prompt": "x"}), **extra}
    message = _error(httpx.post(f"{scripted['url']}/{route}", json=body), 400, param)
    assert message.startswith(f"'{param}' must be <= {limit}, got {extra[param]}"), message


def test_n_and_max_tokens_at_the_limits_are_served(scripted):
    url = f"{scripted['url']}/chat/completions"
    most = httpx.post(url, json={"model": "echo", "messages": HI, "n": 16, "max_tokens": 16_384})
    assert [c["message"]["content"] for c in most.json()["choices"]] == ["ok"] * 16


def test_a_server_started_with_other_limits_applies_those():
    model = _scripted()
    before = len(model.backend.history)  # scripted backends are shared by equal models
    with _serving(create_app({"echo": model}, max_n=2, max_tokens=50)) as url:
        many = httpx.post(f"{url}/completions", json={"model": "echo", "prompt": "x", "n": 3})
        assert "'n' must be <= 2, got 3" in _error(many, 400, "n")
        long = httpx.post(f"{url}/chat/completions", json={"model": "echo", "messages": HI, "max_tokens": 51})
        assert "'max_tokens' must be <= 50, got 51" in _error(long, 400, "max_tokens")
        most = httpx.post(f"{url}/completions",
                          json={"model": "echo", "prompt": "x", "n": 2, "max_tokens": 50})
        assert [c["text"] for c in most.json()["choices"]] == ["ok", "ok"]
        assert _ok(httpx.post(f"{url}/completions", json={"model": "echo", "prompt": "x"})) == "ok"
    # what the model was asked: the limits themselves, and a default budget (256) cut to the limit
    assert [(r.n, r.max_new_tokens) for r in model.backend.history[before:]] == [(2, 50), (1, 50)]


def test_an_unknown_model_is_a_404_in_openai_shape(scripted):
    response = httpx.post(f"{scripted['url']}/chat/completions", json={"model": "nope", "messages": HI})
    assert "no model named 'nope'" in _error(response, 404, "model", "model_not_found")


def test_unread_openai_fields_are_accepted_but_streaming_and_logprobs_are_refused(scripted):
    url = scripted["url"]
    extras = {"user": "u1", "top_p": 0.9, "frequency_penalty": 0.5, "presence_penalty": 0,
              "logit_bias": {}, "stream": False, "logprobs": False, "stop": "\n"}
    answer = httpx.post(f"{url}/chat/completions", json={"model": "echo", "messages": HI, **extras})
    assert _ok(answer) == "ok"
    stream = httpx.post(f"{url}/chat/completions", json={"model": "echo", "messages": HI, "stream": True})
    assert "streaming is not supported" in _error(stream, 400, "stream")
    scores = httpx.post(f"{url}/completions", json={"model": "echo", "prompt": "x", "logprobs": 0})
    assert "log-probabilities" in _error(scores, 400, "logprobs")


def test_wrong_routes_and_methods_get_openai_errors(scripted):
    assert "no route POST /v1/nope" in _error(httpx.post(f"{scripted['url']}/nope", json={}), 404)
    wrong = httpx.get(f"{scripted['url']}/chat/completions")
    assert "method not allowed" in _error(wrong, 405)
    assert "POST" in wrong.headers["allow"]


def test_a_failing_request_is_a_500_with_the_backends_message(scripted):
    response = httpx.post(f"{scripted['url']}/completions", json={"model": "echo", "prompt": "explode"})
    assert _error(response, 500) == "scripted failure"


def test_the_server_keeps_serving_after_a_run_of_bad_requests(scripted):
    url = f"{scripted['url']}/chat/completions"
    bad = [{"content": b"{"}, {"content": b"[]"}, {"json": {"model": "echo", "messages": ["hi"]}},
           {"json": {"model": ["r"], "messages": HI}}, {"json": {"model": {"a": 1}, "messages": HI}},
           {"json": {"model": "echo", "messages": [{"role": ["user"], "content": "x"}]}},
           {"json": {"model": "echo", "messages": HI, "stop": {"a": 1}}}]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda kwargs: httpx.post(url, **kwargs).status_code, bad * 4))
    assert statuses == [400] * len(bad) * 4
    assert _ok(httpx.post(url, json={"model": "echo", "messages": HI})) == "ok"


def test_a_caller_that_gives_up_does_not_stop_its_batcher():
    gate = threading.Event()
    slow = Model("scripted", "slow", name="slow", reply=lambda request: gate.wait(10) and "ok")
    batcher = create_app({"slow": slow}, window_s=0.0).state.batchers["slow"]
    request = GenRequest(prompt="x", max_new_tokens=1)
    first = batcher.submit(request)
    while not slow.backend.history:  # the first batch is running, blocked on the gate
        time.sleep(0.01)
    abandoned = batcher.submit(request)
    assert abandoned.cancel()  # what asyncio does to the future when a request task is cancelled
    gate.set()
    assert first.result(timeout=10).text == "ok"
    assert batcher.submit(request).result(timeout=10).text == "ok"


def test_a_body_over_the_limit_is_a_413_with_or_without_content_length(limited):
    url = f"{limited}/completions"
    big = {"model": "echo", "prompt": "x" * (2 * LIMIT)}
    assert "limit of 2000 bytes" in _error(httpx.post(url, json=big), 413)
    chunks = [b'{"model": "echo", "prompt": "', *([b"x" * 500] * 8), b'"}']
    chunked = httpx.post(url, content=iter(chunks))  # an iterator is sent chunked, no length
    assert "content-length" not in chunked.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    _error(chunked, 413)
    small = [b'{"model": "echo", "prompt": "', b"x" * 500, b'"}']
    assert _ok(httpx.post(url, content=iter(small))) == "ok"
    assert _ok(httpx.post(url, json={"model": "echo", "prompt": "x" * (LIMIT - 100)})) == "ok"


def test_the_default_limit_is_about_a_megabyte(scripted):
    url = f"{scripted['url']}/completions"
    assert _ok(httpx.post(url, json={"model": "echo", "prompt": "x" * 900_000})) == "ok"
    _error(httpx.post(url, json={"model": "echo", "prompt": "x" * 1_100_000}), 413)


def test_an_api_key_is_required_on_every_v1_route_when_set(keyed):
    chat = {"model": "echo", "messages": HI}
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer café".encode()}]:
        response = httpx.post(f"{keyed}/chat/completions", json=chat, headers=headers)
        assert KEY not in _error(response, 401, code="invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
        _error(httpx.get(f"{keyed}/models", headers=headers), 401, code="invalid_api_key")
    right = {"Authorization": f"Bearer {KEY}"}
    assert _ok(httpx.post(f"{keyed}/chat/completions", json=chat, headers=right)) == "ok"
    assert httpx.get(f"{keyed}/models", headers=right).json()["data"][0]["id"] == "echo"
    client = openai.OpenAI(base_url=keyed, api_key=KEY, max_retries=0)
    assert client.chat.completions.create(model="echo", messages=HI).choices[0].message.content == "ok"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed, api_key="wrong", max_retries=0).models.list()


def test_with_an_api_key_the_interactive_docs_are_off(keyed, scripted):
    root = keyed.removesuffix("/v1")
    for path in ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]:
        for headers in [{}, {"Authorization": f"Bearer {KEY}"}]:
            response = httpx.get(f"{root}{path}", headers=headers)
            assert f"no route GET {path}" in _error(response, 404), path  # the error, not the page
    # without a key nothing is private, and the docs stay
    assert httpx.get(f"{scripted['url'].removesuffix('/v1')}/openapi.json").status_code == 200


# ---- the command line ------------------------------------------------------------------------------

@pytest.fixture
def started(monkeypatch):
    """`tandem serve` with uvicorn.run replaced: records what it would have served, and where."""
    runs: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: runs.append({"app": app, **kwargs}))
    return runs


def test_serve_command_requires_the_key_from_the_named_variable(started, monkeypatch):
    monkeypatch.setenv("TANDEM_TEST_KEY", f" {KEY}\n")
    result = CliRunner().invoke(cli, ["serve", "--model", "echo=scripted:echo", "--api-key-env",
                                      "TANDEM_TEST_KEY", "--max-body-bytes", "500", "--max-n", "3",
                                      "--max-tokens", "40"])
    assert result.exit_code == 0, result.output
    assert KEY not in result.output and "warning" not in result.output
    (run,) = started
    assert run["host"] == "127.0.0.1"
    with _serving(run["app"]) as url:
        _error(httpx.get(f"{url}/models"), 401, code="invalid_api_key")
        right = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{url}/models", headers=right).status_code == 200
        big = {"model": "echo", "prompt": "x" * 600}
        _error(httpx.post(f"{url}/completions", json=big, headers=right), 413)
        many = {"model": "echo", "prompt": "x", "n": 4}
        _error(httpx.post(f"{url}/completions", json=many, headers=right), 400, "n")
        long = {"model": "echo", "prompt": "x", "max_tokens": 41}
        _error(httpx.post(f"{url}/completions", json=long, headers=right), 400, "max_tokens")
        _error(httpx.get(f"{url.removesuffix('/v1')}/docs"), 404)


@pytest.mark.parametrize("value", [None, "", "  "])
def test_serve_command_refuses_an_unset_or_empty_key_variable(started, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("TANDEM_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("TANDEM_TEST_KEY", value)
    result = CliRunner().invoke(cli, ["serve", "--model", "echo=scripted:echo", "--api-key-env",
                                      "TANDEM_TEST_KEY"])
    assert result.exit_code == 2, result.output
    assert "TANDEM_TEST_KEY is unset or empty" in " ".join(result.output.split())  # rich wraps
    assert not started


def test_serve_command_warns_when_listening_beyond_loopback_without_a_key(started):
    result = CliRunner().invoke(cli, ["serve", "--model", "echo=scripted:echo", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "not a loopback address" in " ".join(result.output.split())
    assert started[0]["host"] == "0.0.0.0"
    for host in ["127.0.0.1", "::1", "localhost"]:
        quiet = CliRunner().invoke(cli, ["serve", "--model", "echo=scripted:echo", "--host", host])
        assert quiet.exit_code == 0 and "warning" not in quiet.output, quiet.output
