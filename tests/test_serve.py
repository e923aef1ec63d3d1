"""`tandem serve` on 127.0.0.1 with a real tiny transformers model and a pipeline, called by the
official `openai` client and by tandem's own `openai` backend: the same answers as in process,
micro-batched, with OpenAI's error shape for bad requests."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from tandemlm import Model, Pipeline, Step  # noqa: E402
from tandemlm.modules import Solve  # noqa: E402
from tandemlm.runtime import GenRequest  # noqa: E402
from tandemlm.serve import create_app  # noqa: E402
from tandemlm.tiny import build_tiny_lm  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = build_tiny_lm(tmp_path_factory.mktemp("tiny"), seed=0)
    tiny = Model("hf", str(path), name="tiny")
    pipe = Pipeline([Solve("question -> answer", model=tiny, name="solve", prompt_field="question"),
                     Step(lambda answer: answer.upper(), inputs="answer", outputs="shout", name="up")],
                    name="shouter")
    # an untrained tiny model cannot write DSPy's field format: every example fails to parse
    broken = Pipeline([Solve("question -> answer", model=tiny, name="solve")], name="broken")
    app = create_app({"tiny": tiny}, {"shouter": pipe, "broken": broken}, window_s=0.05)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield {"url": f"http://127.0.0.1:{port}/v1", "tiny": tiny, "pipe": pipe, "app": app}
    server.should_exit = True
    thread.join(timeout=10)


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
