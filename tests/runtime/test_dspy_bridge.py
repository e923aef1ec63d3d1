"""The DSPy bridge, both ways, on real tiny transformers models: a tandem Model as a `dspy.LM`
(DSPy's cache keyed by the model's fingerprint) and a `dspy.LM` as a tandem backend."""

from __future__ import annotations

import dspy
import pytest

from dspy.utils.exceptions import AdapterParseError

from tandemlm import LMNode, Model, Pipeline
from tandemlm.runtime import ConfigError, GenRequest
from tandemlm.runtime.backends.dspy_bridge import DSPyBackend, TandemEngine, as_dspy_lm
from tandemlm.testing import chat_reply
from tandemlm.tiny import build_tiny_lm


@pytest.fixture(scope="module")
def tinies(tmp_path_factory):
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    return [Model("hf", str(build_tiny_lm(tmp_path_factory.mktemp(f"t{seed}"), seed=seed)), name="tiny")
            for seed in (0, 1)]


def _ask(text: str, tokens: int = 6) -> GenRequest:
    return GenRequest(messages=({"role": "user", "content": text},), max_new_tokens=tokens)


def test_a_tandem_model_as_a_dspy_lm_answers_as_it_does_in_tandem(tinies):
    model = tinies[0]
    lm = as_dspy_lm(model, max_tokens=6)
    assert lm.model == f"tandem/tiny@{model.fingerprint[:16]}"
    out = lm("Hello there")
    (direct,) = model.generate([_ask("Hello there")])
    assert out == [direct.text]
    assert lm.history[-1]["usage"]["completion_tokens"] == direct.tokens_out


def test_dspy_cache_never_serves_one_model_the_answers_of_another(tinies, monkeypatch):
    a, b = (as_dspy_lm(m, max_tokens=6) for m in tinies)  # same name, different weights
    assert a.model != b.model
    calls = []
    original = TandemEngine.complete
    monkeypatch.setattr(TandemEngine, "complete", lambda self, r: calls.append(r) or original(self, r))
    first, again, other = a("cache me"), a("cache me"), b("cache me")
    assert first == again and len(calls) == 2  # the repeat was DSPy's cache hit; b ran
    (want,) = tinies[1].generate([_ask("cache me")])
    assert other == [want.text]


def test_a_dspy_program_runs_on_a_tandem_model_and_the_engine_state_round_trips(tinies):
    # A model that writes DSPy's fields: the program's prediction is its answer.
    scripted = Model("scripted", "dspy-fields", reply=chat_reply(answer="blue"))
    with dspy.context(lm=as_dspy_lm(scripted)):
        assert dspy.Predict("question -> answer")(question="Colour of the sky?").answer == "blue"
    assert "Colour of the sky?" in scripted.backend.history[-1].messages[-1]["content"]
    # An untrained tiny model cannot write them: DSPy's adapters (chat, then JSON) each get the
    # model's own reply to their prompt, and the parse error carries it.
    lm = as_dspy_lm(tinies[0], max_tokens=4)
    history = len(lm.history)
    with dspy.context(lm=lm), pytest.raises(AdapterParseError) as failed:
        dspy.Predict("question -> answer")(question="What?")
    calls = lm.history[history:]
    assert calls
    for call in calls:
        (direct,) = tinies[0].generate([GenRequest(messages=tuple(call["messages"]), max_new_tokens=4)])
        assert call["outputs"] == [direct.text]
    assert failed.value.lm_response == calls[-1]["outputs"][0]
    engine = TandemEngine.load_state(TandemEngine(tinies[0]).dump_state())
    assert engine.model.fingerprint == tinies[0].fingerprint
    state = TandemEngine(tinies[0]).dump_state()
    state["model"]["options"]["trust_remote_code"] = True  # a saved file may not turn it on
    with pytest.raises(ConfigError, match="trust_remote_code, which is never read from a saved file"):
        TandemEngine.load_state(state)


def test_a_dspy_lm_as_a_tandem_backend_in_a_pipeline(tinies):
    inner = as_dspy_lm(tinies[0], max_tokens=6)
    wrapped = DSPyBackend.wrap(inner, name="via-dspy")
    got = wrapped.generate([_ask("one"), _ask("two"), GenRequest(prompt="raw text", max_new_tokens=6)])
    direct = tinies[0].generate([_ask("one"), _ask("two")])
    assert [g.text for g in got[:2]] == [d.text for d in direct]
    assert got[0].tokens_out == direct[0].tokens_out and all(g.ok for g in got)
    pipe = Pipeline([LMNode("question -> answer", model=wrapped, name="ask", prompt_field="question",
                            max_tokens=6)])
    (result,) = pipe.batch([{"question": "one"}])
    assert result.outputs["answer"] == direct[0].text.strip()
    assert result.trace[0].model == "via-dspy"


def test_provider_errors_fail_alone_and_options_are_checked(tinies, monkeypatch):
    lm = as_dspy_lm(tinies[0], max_tokens=4, num_retries=0)
    wrapped = DSPyBackend.wrap(lm)
    original = TandemEngine.complete

    def flaky(self, request):
        if request.messages[-1].text == "boom":
            raise ConnectionError("provider down")
        return original(self, request)

    monkeypatch.setattr(TandemEngine, "complete", flaky)
    got = wrapped.generate([_ask("fine"), _ask("boom")])
    assert got[0].ok and not got[1].ok and "provider down" in got[1].error
    with pytest.raises(ConfigError, match="lm="):
        DSPyBackend("openai/x", api_base="http://x")
