"""Constrained decoding on the `hf` backend, on an untrained tiny Llama: its free output is noise
that never parses, so every parse under the grammar is the grammar's doing."""

from __future__ import annotations

from typing import Literal

import dspy
import pytest

from tandemlm import LMNode, Model, Pipeline
from tandemlm.runtime import Constraint, GenRequest, progress
from tandemlm.tiny import build_tiny_lm

pytest.importorskip("llguidance")


class Judge(dspy.Signature):
    """Judge the claim."""

    claim: str = dspy.InputField()
    verdict: Literal["yes", "no", "unsure"] = dspy.OutputField()
    count: int = dspy.OutputField()
    flag: bool = dspy.OutputField()


CLAIMS = [{"claim": c} for c in ["the river is blue", "north is up", "a small song", "maps lie",
                                 "doors open", "apples fall"]]


@pytest.fixture(scope="module")
def noise_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("noise") / "lm", seed=3)


def _run(path, constrained, **node_options):
    model = Model("hf", str(path), device="cpu", dtype="float32", batch_size=4,
                  constrained=constrained)
    node = LMNode(Judge, model="m", name="judge", max_tokens=200, **node_options)
    return Pipeline([node], models={"m": model}).batch(CLAIMS)


def test_free_noise_never_parses_and_constrained_noise_always_does(noise_lm):
    free = _run(noise_lm, constrained=False)
    assert all(r.error for r in free)
    for result in _run(noise_lm, constrained=True):
        assert result.error is None, result.error
        assert result.outputs["verdict"] in ("yes", "no", "unsure")
        assert isinstance(result.outputs["count"], int) and isinstance(result.outputs["flag"], bool)


def test_sampled_rows_parse_and_one_example_samples_as_in_a_batch(noise_lm):
    batch = _run(noise_lm, constrained=True, temperature=1.0, seed=7)
    assert all(r.error is None for r in batch)
    model = Model("hf", str(noise_lm), device="cpu", dtype="float32", batch_size=4)
    node = LMNode(Judge, model="m", name="judge", max_tokens=200, temperature=1.0, seed=7)
    alone = Pipeline([node], models={"m": model}).batch(CLAIMS[2:3])[0]
    assert alone.outputs == batch[2].outputs


def test_rows_of_one_batch_keep_their_own_grammar(noise_lm):
    """A constrained row does not constrain its neighbours, and a bad grammar fails its request
    alone with the grammar's error."""
    model = Model("hf", str(noise_lm), device="cpu", dtype="float32", batch_size=8)
    prompt = dict(messages=({"role": "user", "content": "say something"},), max_new_tokens=12)
    free = model.generate([GenRequest(**prompt)])[0].text
    digits = GenRequest(**prompt, constraint=Constraint("regex", "[0-9]{3}"))
    bad = GenRequest(**prompt, constraint=Constraint("regex", "(unclosed"))
    out = model.generate([GenRequest(**prompt), digits, bad])
    assert out[0].text == free
    assert out[1].text.isdigit() and len(out[1].text) == 3 and out[1].finish_reason == "stop"
    assert out[2].error is not None and "invalid regex constraint" in out[2].error


def test_constrained_false_models_declare_no_capability(noise_lm):
    assert Model("hf", str(noise_lm)).supports("constrained")
    model = Model("hf", str(noise_lm), constrained=False)
    assert not model.supports("constrained")
    request = GenRequest(prompt="x", max_new_tokens=2, constraint=Constraint("regex", "a"))
    assert "constrained=False" in model.generate([request])[0].error


def test_a_last_free_text_field_is_closed_before_the_budget_runs_out(noise_lm):
    """Noise rambles on in a str field; with the close text forced in time the output still ends
    with ChatAdapter's completed marker (and stops), where the bare grammar runs out."""
    from dataclasses import replace

    from dspy.adapters import ChatAdapter

    from tandemlm.compose.grammar import output_constraint

    signature = dspy.Signature("claim -> verdict: Literal['yes', 'no'], note")
    closing = output_constraint(ChatAdapter(), signature)
    bare = replace(closing, close="")
    model = Model("hf", str(noise_lm), device="cpu", dtype="float32", batch_size=8)
    prompts = [dict(messages=({"role": "user", "content": c["claim"]},), max_new_tokens=60)
               for c in CLAIMS]
    closed = model.generate([GenRequest(**p, constraint=closing) for p in prompts])
    cut = model.generate([GenRequest(**p, constraint=bare) for p in prompts])
    assert all(r.text.endswith("[[ ## completed ## ]]") and r.finish_reason == "stop" for r in closed)
    assert all(r.tokens_out <= 60 for r in closed)
    assert any(r.finish_reason == "length" for r in cut)
    for result in closed:
        assert ChatAdapter().parse(signature, result.text)["verdict"] in ("yes", "no")


def test_latency_is_per_request_and_token_steps_are_reported(noise_lm):
    """Two requests in one microbatch: the grammar ends the digits row after a few tokens while
    the free row decodes its whole budget, so the digits request's latency is its own, shorter
    one, not the microbatch's; the backend reports its token steps to a listener."""
    model = Model("hf", str(noise_lm), device="cpu", dtype="float32", batch_size=8)
    prompt = dict(messages=({"role": "user", "content": "say something"},), max_new_tokens=48)
    heard: list[str] = []
    with progress.listening(heard.append):
        free, digits = model.generate([GenRequest(**prompt),
                                       GenRequest(**prompt, constraint=Constraint("regex", "[0-9]{3}"))])
    assert free.finish_reason == "length" and free.tokens_out == 48
    assert digits.finish_reason == "stop" and digits.tokens_out < 10
    assert 0 < digits.latency_s < free.latency_s / 2
    assert heard and heard[0].endswith("microbatch 1/1 · token 1/48")
