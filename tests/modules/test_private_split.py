"""PrivateSplit and the privacy checks: refused at build time, never leaked at run time (also
under fuzzed inputs), re-checked at the backend boundary."""

from __future__ import annotations

import random
import re
import string
import uuid

import pytest

from tandemlm import LMNode, Model, Pipeline, Step
from tandemlm.modules.private_split import PrivateSplit
from tandemlm.runtime import ConfigError, GraphError, request_texts
from tandemlm.tiny import build_tiny_lm


def _field(request, name):
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?:\n\n\[\[|$)", request.messages[-1]["content"], re.S)
    return match.group(1)


def _chat(**fields):
    return "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in fields.items()) + "[[ ## completed ## ]]"


def _models():
    # The remote sketcher echoes everything it was shown into its sketch: a worst case, since
    # anything private it saw would flow on.
    remote = Model("scripted", f"remote-{uuid.uuid4().hex}", name="remote", remote=True,
                   reply=lambda r: _chat(sketch="Dear [NAME], about " + _field(r, "request")))
    local = Model("scripted", f"local-{uuid.uuid4().hex}", name="local",
                  reply=lambda r: _chat(letter=_field(r, "sketch").replace("[NAME]", _field(r, "name"))
                                        + " / " + _field(r, "diagnosis")))
    return remote, local


def _split():
    return PrivateSplit(LMNode("request -> sketch", model="remote", name="sketch"),
                        LMNode("request, sketch, name, diagnosis -> letter", model="local", name="complete"),
                        private=["name", "diagnosis"])


def _secret(rng):
    alphabet = string.ascii_letters + string.digits + " éü漢[]#-_/\\'\""
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 24))).strip() or "x"


def test_private_values_never_reach_the_remote_model_under_fuzzed_inputs():
    remote, local = _models()
    pipe = Pipeline([_split()], models={"remote": remote, "local": local})
    rng = random.Random(0)
    examples = [{"request": f"appointment {i} " + _secret(rng), "name": _secret(rng),
                 "diagnosis": _secret(rng)} for i in range(200)]
    results = pipe.batch(examples)
    secrets = [e[f] for e in examples for f in ("name", "diagnosis")]
    remote_texts = [t for r in remote.backend.history for t in request_texts(r)]
    assert len(remote.backend.history) == 200
    assert not [s for s in secrets if any(s in t for t in remote_texts)]
    local_texts = "\n".join(t for r in local.backend.history for t in request_texts(r))
    assert all(s in local_texts for s in secrets)  # the check above is not vacuous
    for example, result in zip(examples, results, strict=True):
        assert result.ok, result.error
        assert example["name"] in result.outputs["letter"]
        assert example["diagnosis"] in result.outputs["letter"]


def test_graph_sending_a_private_field_to_a_remote_model_is_refused_at_build_time():
    remote, local = _models()
    with pytest.raises(GraphError, match=r"node 'leak' sends field\(s\) 'name'.*remote model 'remote'"):
        Pipeline([LMNode("request, name -> sketch", model="remote", name="leak")],
                 models={"remote": remote}, private=["name"])
    # a field derived from a private one is private too
    with pytest.raises(GraphError, match="'greeting'.*carry private field"):
        Pipeline([Step(lambda name: f"Hi {name}", inputs="name", outputs="greeting", name="greet"),
                  LMNode("greeting -> sketch", model="remote", name="leak")],
                 models={"remote": remote}, private=["name"])
    # PrivateSplit's own private fields count, so a remote completer is refused
    with pytest.raises(GraphError, match="node 'private_split'.*remote model 'remote'"):
        Pipeline([_split()], models={"remote": remote, "local": remote})
    assert Pipeline([_split()], models={"remote": remote, "local": local}).private == {"name", "diagnosis"}


def test_a_sketcher_reading_a_private_field_is_a_config_error():
    with pytest.raises(ConfigError, match="sketcher 'sketch' reads private field"):
        PrivateSplit(LMNode("request, name -> sketch", model="r", name="sketch"),
                     LMNode("sketch, name -> letter", model="l"), private=["name"])
    with pytest.raises(ConfigError, match="not inputs of the completer"):
        PrivateSplit(LMNode("request -> sketch", model="r"), LMNode("sketch -> letter", model="l"),
                     private=["name"])


def test_the_backend_boundary_refuses_a_private_value_hidden_in_a_public_field():
    remote, local = _models()
    pipe = Pipeline([_split()], models={"remote": remote, "local": local})
    examples = [{"request": "renew my prescription", "name": "Ada Byron", "diagnosis": "flu"},
                {"request": "letter for Ada Byron please", "name": "Ada Byron", "diagnosis": "flu"},
                {"request": "a note", "name": "Bo", "diagnosis": "asthma"}]
    ok, leaked, other = pipe.batch(examples)
    assert ok.ok and other.ok
    assert leaked.error is not None and "PrivacyError" in leaked.error
    assert all("Ada Byron" not in t for r in remote.backend.history for t in request_texts(r))
    assert remote.backend.batches == [2]  # the refused request never reached the backend


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("private") / "lm", seed=0)


def test_real_models_refuse_at_build_time_and_guard_at_run_time(tiny_path):
    remote = Model("hf", str(tiny_path), device="cpu", remote=True, name="remote-hf")
    local = Model("hf", str(tiny_path), device="cpu", name="local-hf")
    with pytest.raises(GraphError):
        Pipeline([_split()], models={"remote": remote, "local": remote})
    sketch = LMNode("request -> sketch", model="remote", name="sketch", prompt_field="request",
                    max_tokens=4)
    complete = LMNode("sketch, name -> letter", model="local", name="complete", max_tokens=4)
    pipe = Pipeline([PrivateSplit(sketch, complete, private=["name"])],
                    models={"remote": remote, "local": local})
    fine, leaked = pipe.batch([{"request": "The cat", "name": "Zed"},
                               {"request": "The cat of Zed", "name": "Zed"}])
    assert "PrivacyError" in leaked.error
    assert fine.trace[0].children[0].ok and fine.trace[0].children[0].model == "remote-hf"
