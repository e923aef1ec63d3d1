"""LMNode formatting: the batched request path equals DSPy's own adapter.format per example."""

from __future__ import annotations

from typing import Literal

import dspy
import pytest
from dspy.adapters import ChatAdapter, JSONAdapter

from tandemlm import LMNode, Model, Solve
from tandemlm.runtime import ConfigError


class Verdict(dspy.Signature):
    """Judge whether the answer is supported by the evidence."""

    question: str = dspy.InputField()
    evidence: list[str] = dspy.InputField(desc="retrieved passages")
    answer: str = dspy.InputField()
    verdict: Literal["correct", "retrieval_error", "generation_error"] = dspy.OutputField()
    confidence: float = dspy.OutputField()


EXAMPLES = [
    {"question": "Who wrote Hamlet?", "evidence": ["Hamlet is a play by Shakespeare."],
     "answer": "Shakespeare"},
    {"question": "2+2?", "evidence": [], "answer": "5"},
    {"question": "Capital of France? [[ ## answer ## ]]", "evidence": ["a", "b"], "answer": ""},
]
DEMOS = [{"question": "Sky colour?", "evidence": ["The sky is blue."], "answer": "blue",
          "verdict": "correct", "confidence": 0.9}]


def _expected(node, values):
    inputs = {k: values[k] for k in node.signature.input_fields}
    return tuple(node.adapter.format(node.signature, demos=[dict(d) for d in node.demos],
                                     inputs=inputs))


@pytest.mark.parametrize("adapter", [ChatAdapter(), JSONAdapter()])
@pytest.mark.parametrize("demos", [[], DEMOS])
def test_batched_requests_equal_the_adapters_own_format(adapter, demos):
    node = LMNode(Verdict, model="m", demos=demos, adapter=adapter, instructions="Be strict.")
    requests = node.requests(EXAMPLES)
    assert [r.messages for r in requests] == [_expected(node, v) for v in EXAMPLES]
    assert "Be strict." in requests[0].messages[0]["content"]


def test_string_signature_and_solve_with_reasoning_format_like_dspy():
    node = Solve("question -> answer", model="m", reasoning=True)
    batch = [{"question": q} for q in ("a", "b", "c")]
    assert [r.messages for r in node.requests(batch)] == [_expected(node, v) for v in batch]
    assert list(node.signature.output_fields) == ["reasoning", "answer"]


def test_an_unformattable_example_gets_its_own_error():
    node = LMNode("question -> answer", model="m")
    out = node.requests([{"question": "fine"}, {}, {"question": "also fine"}])
    assert isinstance(out[1], KeyError) and not isinstance(out[0], Exception)
    assert out[2].messages == _expected(node, {"question": "also fine"})


def test_raw_prompt_node_sends_the_prompt_unformatted_with_its_key():
    node = LMNode("prompt -> answer", model="m", prompt_field="prompt", key_field="id", stop=("\n",))
    (request,) = node.requests([{"prompt": "Q: hi\nA:", "id": 7}])
    assert request.prompt == "Q: hi\nA:" and request.messages is None
    assert request.key == "7" and request.stop == ("\n",)
    assert node.parse("  Yes \n") == {"answer": "Yes"}


def test_raw_prompt_node_needs_one_output_and_a_real_field():
    with pytest.raises(ConfigError, match="exactly one output field"):
        LMNode("prompt -> a, b", model="m", prompt_field="prompt")
    with pytest.raises(ConfigError, match="not an input field"):
        LMNode("prompt -> a", model="m", prompt_field="text")


def test_node_alone_runs_on_a_model_and_refuses_a_bare_name():
    model = Model("scripted", "alone", reply="[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]")
    assert LMNode("question -> answer", model=model)(question="2+2").answer == "4"
    with pytest.raises(ConfigError, match="bound to model name 'large'"):
        LMNode("question -> answer", model="large")(question="2+2")


def test_chat_adapter_formats_the_shared_prefix_once_per_batch(monkeypatch):
    node = LMNode(Verdict, model="m", demos=DEMOS)
    calls = []
    original = ChatAdapter.format
    monkeypatch.setattr(ChatAdapter, "format",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    node.requests(EXAMPLES * 4)
    assert len(calls) == 1
