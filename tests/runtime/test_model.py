"""`Model` handles: the backend registry, capabilities, shared backend instances, and the
batch contract (one result per request, a backend failure failing each request alone)."""

from __future__ import annotations

import copy
import sys
import textwrap
import uuid

import pytest

from tandemlm.runtime import (Backend, BackendError, CapabilityError, ConfigError, GenRequest,
                              GenResult, Model, ScoreRequest, Unavailable, register_backend,
                              registered_backends)


def _uid(prefix: str) -> str:
    # Backend instances are shared per configuration across the process; unique ids keep
    # one test's scripted history out of another's.
    return f"{prefix}-{uuid.uuid4().hex}"


class Upper(Backend):
    """A third-party backend: upper-cases the prompt (or the last message)."""

    name = "test-upper"
    created = 0

    def __init__(self, model_id, **options):
        super().__init__(model_id, **options)
        type(self).created += 1

    def generate(self, requests):
        out = []
        for r in requests:
            text = r.prompt if r.prompt is not None else r.messages[-1]["content"]
            out.append(GenResult(texts=[text.upper()], tokens_in=len(text), tokens_out=len(text)))
        return out


class Short(Backend):
    """Returns one result too few: breaks the batch contract."""

    name = "test-short"

    def generate(self, requests):
        return [GenResult(texts=["x"]) for _ in requests[1:]]


class Down(Backend):
    """Raises a BackendError for the whole batch."""

    name = "test-down"

    def generate(self, requests):
        raise Unavailable("server at 127.0.0.1:9 refused the connection")


register_backend("test-upper", Upper)
register_backend("test-short", Short)
register_backend("test-down", Down)


def test_unknown_backend_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        Model("no-such-engine", "m")
    message = str(info.value)
    assert "no-such-engine" in message
    for known in ("hf", "recorded", "scripted", "test-upper"):
        assert known in message
    assert "register_backend" in message


def test_model_id_must_be_a_non_empty_string():
    with pytest.raises(ConfigError, match="non-empty string"):
        Model("scripted", "")


def test_built_in_backends_are_registered():
    assert {"hf", "recorded", "scripted"} <= set(registered_backends())


def test_require_missing_capability_names_model_and_capability():
    model = Model("test-upper", _uid("up"), name="my-upper")
    assert not model.supports("logprobs")
    with pytest.raises(CapabilityError) as info:
        model.require("logprobs")
    message = str(info.value)
    assert "my-upper" in message and "'logprobs'" in message and "test-upper" in message


def test_logprobs_on_a_backend_without_them_raises_before_calling_it():
    model = Model("test-upper", _uid("up"))
    with pytest.raises(CapabilityError, match="logprobs"):
        model.logprobs([ScoreRequest(prompt="p", continuations=("a",))])


def test_require_passes_for_a_declared_capability_and_rejects_unknown_ones():
    model = Model("scripted", _uid("s"), reply="x", logprob=lambda req, c: -float(len(c)))
    model.require("logprobs")
    (result,) = model.logprobs([ScoreRequest(prompt="p", continuations=("a", "bbb"))])
    assert result.logprobs == [-1.0, -3.0]
    with pytest.raises(ConfigError, match="unknown capability 'telepathy'"):
        model.supports("telepathy")


def test_equal_handles_share_one_backend_instance():
    model_id = _uid("up")
    before = Upper.created
    first, second = Model("test-upper", model_id, device="cpu"), Model("test-upper", model_id,
                                                                         device="cpu")
    assert first.backend is second.backend
    assert first.fingerprint == second.fingerprint
    assert Upper.created == before + 1
    other = Model("test-upper", model_id, device="cuda")
    assert other.backend is not first.backend
    assert other.fingerprint != first.fingerprint


def test_deepcopy_returns_the_same_handle():
    model = Model("test-upper", _uid("up"))
    holder = {"model": model, "nested": [model]}
    copied = copy.deepcopy(holder)
    assert copied["model"] is model and copied["nested"][0] is model


def test_a_backend_returning_the_wrong_number_of_results_is_a_backend_error():
    model = Model("test-short", _uid("short"))
    with pytest.raises(BackendError, match="returned 1 results for 2 requests"):
        model.generate([GenRequest(prompt="a"), GenRequest(prompt="b")])


def test_a_backend_error_becomes_one_failed_result_per_request():
    model = Model("test-down", _uid("down"))
    results = model.generate([GenRequest(prompt="a"), GenRequest(prompt="b"),
                              GenRequest(prompt="c")])
    assert len(results) == 3
    assert all(not r.ok and r.finish_reason == "error" for r in results)
    assert all(r.error.startswith("Unavailable: server at 127.0.0.1:9") for r in results)


def test_an_empty_batch_does_not_reach_the_backend():
    model = Model("scripted", _uid("s"), reply="x")
    assert model.generate([]) == []
    assert model.backend.batches == []


def test_a_third_party_backend_runs_end_to_end_in_a_pipeline():
    from tandemlm.compose import LMNode, Pipeline

    model = Model("test-upper", _uid("up"), price=(1.0, 1.0))
    pipe = Pipeline([LMNode("text -> shout", model="m", prompt_field="text", name="shout")],
                    models={"m": model})
    (result,) = pipe.batch([{"text": "hello there"}])
    assert result.ok, result.error
    assert result.outputs == {"shout": "HELLO THERE"}
    trace = result.trace[0]
    assert (trace.tokens_in, trace.tokens_out) == (11, 11)
    assert trace.cost_usd == pytest.approx(22 / 1e6)
    assert pipe(text="again").shout == "AGAIN"


def test_a_backend_registered_by_lazy_import_path(tmp_path, monkeypatch):
    module_name = _uid("plugin").replace("-", "_")
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent("""
        from tandemlm.runtime import Backend, GenResult

        class Reverse(Backend):
            name = "reverse"

            def generate(self, requests):
                return [GenResult(texts=[r.prompt[::-1]]) for r in requests]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    backend_name = _uid("lazy")
    register_backend(backend_name, f"{module_name}:Reverse")
    assert module_name not in sys.modules  # registering imports nothing
    model = Model(backend_name, "r")
    assert model.generate([GenRequest(prompt="abc")])[0].text == "cba"
    sys.modules.pop(module_name, None)


def test_to_dict_round_trips():
    model = Model("test-upper", _uid("up"), name="shown", price=(1.5, 2.5), params=7,
                  device="cpu")
    again = Model.from_dict(model.to_dict())
    assert again.to_dict() == model.to_dict()
    assert again.backend is model.backend
