"""The stage-batched executor, driven by the scripted backend: batching, concurrency, error
isolation, traces, and DSPy interop."""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid

import dspy
import pytest

from tandemlm.compose import LMNode, Pipeline, Step
from tandemlm.modules import Solve
from tandemlm.testing import chat_reply as chat, request_field as field
from tandemlm.runtime import ConfigError, Model, TandemError


# -- helpers -----------------------------------------------------------------------------------


def scripted(prefix: str, reply, **options) -> Model:
    # Backend instances are shared per configuration; a unique id gives each test its own.
    return Model("scripted", f"{prefix}-{uuid.uuid4().hex}", reply=reply, name=prefix, **options)


def shout(answer: str) -> str:
    if answer.startswith("boom"):
        raise ValueError(f"cannot shout {answer!r}")
    return answer.upper()


def three_node(small_reply=None, large_reply=None, *, price=None) -> tuple[Pipeline, Model, Model]:
    """hint (small LM) -> solve (large LM, with reasoning) -> final (Python step)."""
    small = scripted("small", small_reply or (
        lambda r: chat(hint=f"think of {field(r, 'question')}")), price=price)
    large = scripted("large", large_reply or (lambda r: chat(
        reasoning="because", answer=f"{field(r, 'question')}/{len(field(r, 'hint'))}")),
        price=price)
    pipe = Pipeline([
        Step(shout, inputs="answer", outputs="final", name="final"),
        Solve("question, hint -> answer", model="large", reasoning=True),
        LMNode("question -> hint", model="small", name="hint"),
    ], models={"small": small, "large": large})
    return pipe, small, large


QUESTIONS = [f"q{i}" for i in range(10)]


def _comparable(trace) -> dict:
    data = trace.to_dict()
    data.pop("latency_s")
    return data


# -- batching ----------------------------------------------------------------------------------

def test_batch_equals_one_by_one_outputs_traces_and_requests():
    examples = [{"question": q, "gold": "ignored label"} for q in QUESTIONS[:5]]
    pipe_b, small_b, large_b = three_node()
    batched = pipe_b.batch(examples)

    pipe_1, small_1, large_1 = three_node()
    one_by_one = [pipe_1(question=e["question"]) for e in examples]
    singles = [pipe_1.batch([e])[0] for e in examples]

    for example, result, prediction, single in zip(examples, batched, one_by_one, singles,
                                                   strict=True):
        q = example["question"]
        answer = f"{q}/{len(f'think of {q}')}"
        expected = {"hint": f"think of {q}", "reasoning": "because", "answer": answer,
                    "final": answer.upper()}
        assert result.ok and result.outputs == expected
        assert prediction.toDict() == expected
        assert result.inputs == {"question": q}  # labels are not inputs
        assert [t.node for t in result.trace] == ["hint", "solve", "final"]
        assert [_comparable(t) for t in result.trace] == [_comparable(t) for t in single.trace]
    # The same prompts reached the same models, in example order.
    assert small_b.backend.history == small_1.backend.history[:5]
    assert large_b.backend.history == large_1.backend.history[:5]


def test_one_backend_batch_per_lm_node_per_stage():
    pipe, small, large = three_node()
    results = pipe.batch([{"question": q} for q in QUESTIONS])
    assert all(r.ok for r in results)
    assert small.backend.batches == [10]
    assert large.backend.batches == [10]
    assert [field(r, "question") for r in large.backend.history] == QUESTIONS


def test_nodes_sharing_a_model_each_send_one_batch():
    model = scripted("shared", lambda r: chat(**{k: field(r, "question") for k in ("a", "b")
                                                  if f"`{k}`" in r.messages[0]["content"]}))
    pipe = Pipeline([LMNode("question -> a", model=model), LMNode("question -> b", model=model)])
    results = pipe.batch([{"question": q} for q in QUESTIONS])
    assert [r.outputs for r in results] == [{"a": q, "b": q} for q in QUESTIONS]
    assert model.backend.batches == [10, 10]


def test_nodes_of_one_stage_on_different_models_run_concurrently():
    # Each reply waits until the other model's backend is inside its batch too: run one after
    # the other, the first wait breaks the barrier and the batch raises.
    barrier = threading.Barrier(2, timeout=10)

    def meet(name):
        def reply(request):
            barrier.wait()
            return chat(**{name: field(request, "question")})
        return reply

    left, right = scripted("left", meet("x")), scripted("right", meet("y"))
    pipe = Pipeline([LMNode("question -> x", model=left), LMNode("question -> y", model=right)])
    assert pipe.stages() == [["x", "y"]]
    results = pipe.batch([{"question": "a"}, {"question": "b"}])
    assert [r.outputs for r in results] == [{"x": "a", "y": "a"}, {"x": "b", "y": "b"}]
    assert [[t.node for t in r.trace] for r in results] == [["x", "y"], ["x", "y"]]


# -- failures stay with their example ----------------------------------------------------------

def _wants_json(request) -> bool:
    return "JSON object" in request.messages[-1]["content"]


def test_parse_failure_is_asked_again_in_another_format_then_recorded():
    def large_reply(request):
        q = field(request, "question")
        return "I refuse to use your format" if q == "q3" else chat(reasoning="r", answer=q)

    pipe, _small, large = three_node(large_reply=large_reply)
    results = pipe.batch([{"question": q} for q in QUESTIONS])
    asked = [field(r, "question") for r in large.backend.history]
    assert asked.count("q3") == 2
    assert all(asked.count(q) == 1 for q in QUESTIONS if q != "q3")
    assert large.backend.batches == [10, 1]  # the retry is one batch of the failures
    first, again = [r for r in large.backend.history if field(r, "question") == "q3"]
    assert not _wants_json(first) and _wants_json(again)  # not the same greedy request twice
    bad = results[3]
    assert not bad.ok
    assert bad.error.count("node 'solve'") == 1 and "could not parse" in bad.error
    assert "I refuse to use your format" in bad.error  # how the output began
    assert "asked again in JSONAdapter's format" in bad.error and "constrained decoding" in bad.error
    assert bad.trace[-1].node == "solve" and bad.trace[-1].calls == 2
    assert bad.trace[-1].raw == ["I refuse to use your format"] * 2
    assert "final" not in bad.outputs  # later stages skip a failed example
    assert [r.outputs["final"] for i, r in enumerate(results) if i != 3] \
        == [q.upper() for q in QUESTIONS if q != "q3"]


def test_parse_failure_then_success_on_retry_counts_both_calls():
    attempts: dict[str, int] = {}

    def flaky(request):
        q = field(request, "question")
        attempts[q] = attempts.get(q, 0) + 1
        if q == "q1" and attempts[q] == 1:
            return "garbled"
        if _wants_json(request):
            return json.dumps({"reasoning": "r", "answer": q})
        return chat(reasoning="r", answer=q)

    pipe, _, large = three_node(large_reply=flaky)
    results = pipe.batch([{"question": q} for q in QUESTIONS[:3]])
    assert all(r.ok for r in results)
    solve = results[1].trace[1]
    assert solve.calls == 2 and solve.raw[0] == "garbled"
    assert solve.info["parsed_with"] == "JSONAdapter" and results[1].outputs["final"] == "Q1"
    first_in = [r for r in large.backend.history if field(r, "question") == "q1"]
    assert len(first_in) == 2
    # Tokens of both attempts are accounted.
    assert solve.tokens_in > results[0].trace[1].tokens_in
    assert results[0].trace[1].calls == 1


def test_backend_failure_for_one_example_does_not_sink_the_batch():
    pipe, small, large = three_node()
    small.backend.fail = lambda request: field(request, "question") == "q5"
    results = pipe.batch([{"question": q} for q in QUESTIONS])
    assert [r.ok for r in results] == [q != "q5" for q in QUESTIONS]
    assert "node 'hint'" in results[5].error and "scripted failure" in results[5].error
    asked = [field(r, "question") for r in small.backend.history]
    assert asked.count("q5") == 1  # a backend error is not a parse error: no retry
    assert large.backend.batches == [9]  # the failed example stops there
    assert "q5" not in [field(r, "question") for r in large.backend.history]


def test_step_raising_fails_only_its_example():
    pipe, _, _ = three_node(large_reply=lambda r: chat(
        reasoning="r", answer=("boom" if field(r, "question") == "q2" else field(r, "question"))))
    results = pipe.batch([{"question": q} for q in QUESTIONS[:4]])
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error == "node 'final': ValueError: cannot shout 'boom'"
    assert results[2].outputs["answer"] == "boom"  # what ran before is kept
    assert [r.outputs.get("final") for r in results] == ["Q0", "Q1", None, "Q3"]


def test_example_missing_an_input_field_fails_alone():
    pipe, small, _ = three_node()
    results = pipe.batch([{"question": "q0"}, {"query": "typo"}, {"question": "q2"}])
    assert [r.ok for r in results] == [True, False, True]
    assert "question" in results[1].error and "lacks input field" in results[1].error
    assert results[1].trace == []
    assert small.backend.batches == [2]


def test_single_example_failure_raises_a_tandem_error():
    pipe, small, _ = three_node()
    small.backend.fail = "q0"
    with pytest.raises(TandemError, match="node 'hint'.*scripted failure"):
        pipe(question="q0")


# -- traces ------------------------------------------------------------------------------------

def test_traces_carry_model_tokens_cost_latency_and_calls():
    def slow_small(request):
        time.sleep(0.002)
        return chat(hint="h")

    pipe, small, large = three_node(small_reply=slow_small, price=(3.0, 15.0))
    (result,) = pipe.batch([{"question": "how much?"}])
    hint, solve, final = result.trace
    for trace, model in ((hint, small), (solve, large)):
        (request,) = model.backend.history
        (raw,) = trace.raw
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in request.messages)
        assert trace.model == model.name
        assert trace.calls == 1
        assert trace.tokens_in == max(1, int(len(text) * 0.25))
        assert trace.tokens_out == max(1, int(len(raw) * 0.25))
        expected_usd = (trace.tokens_in * 3.0 + trace.tokens_out * 15.0) / 1e6
        assert trace.cost_usd == pytest.approx(expected_usd)
        assert trace.flops is None
        assert trace.inputs == {k: v for k, v in {**result.inputs, **result.outputs}.items()
                                if k in pipe.nodes[trace.node].input_fields}
    assert hint.latency_s >= 0.002
    assert (final.model, final.calls, final.tokens_in, final.cost_usd) == (None, 0, None, None)
    assert final.outputs == {"final": result.outputs["answer"].upper()}


def test_unpriced_model_with_params_gets_a_flops_estimate():
    model = scripted("est", lambda r: chat(answer="a"), params=1000)
    (result,) = Pipeline([LMNode("question -> answer", model=model)]).batch([{"question": "q"}])
    trace = result.trace[0]
    assert trace.cost_usd is None
    assert trace.flops == 2.0 * 1000 * (trace.tokens_in + trace.tokens_out)


# -- DSPy interop ------------------------------------------------------------------------------

def test_named_predictors_are_exactly_the_lm_nodes():
    pipe, _, _ = three_node()
    named = dict(pipe.named_predictors())
    assert set(named) == {"nodes['hint']", "nodes['solve']"}
    assert named["nodes['hint']"] is pipe.nodes["hint"]
    assert named["nodes['solve']"] is pipe.nodes["solve"]


def test_deepcopy_shares_model_handles_but_not_node_state():
    pipe, small, large = three_node()
    direct = scripted("direct", lambda r: chat(extra="e"))
    pipe = Pipeline([*pipe.nodes.values(), LMNode("question -> extra", model=direct)],
                    models=pipe.models)
    clone = copy.deepcopy(pipe)
    assert clone.models["small"] is small and clone.models["large"] is large
    assert clone.nodes["extra"].model is direct
    assert clone.nodes["hint"] is not pipe.nodes["hint"]
    assert clone.graph.nodes["hint"]["node"] is clone.nodes["hint"]
    clone.nodes["hint"].demos.append({"question": "d", "hint": "e"})
    assert pipe.nodes["hint"].demos == []
    clone.batch([{"question": "q0"}])
    assert small.backend.batches == [1]  # the copy used the very same backend


def test_dspy_trace_receives_node_inputs_and_predictions():
    pipe, _, _ = three_node()
    with dspy.context(trace=[]):
        pipe(question="q7")
        trace = list(dspy.settings.trace)
    assert [(node.name, inputs) for node, inputs, _ in trace] == [
        ("hint", {"question": "q7"}),
        ("solve", {"question": "q7", "hint": "think of q7"})]
    assert trace[0][0] is pipe.nodes["hint"]
    assert isinstance(trace[1][2], dspy.Prediction)
    assert trace[1][2].answer == "q7/11" and trace[1][2].reasoning == "because"


def test_dspy_trace_skips_failed_calls():
    pipe, small, _ = three_node()
    small.backend.fail = "q1"
    with dspy.context(trace=[]):
        pipe.batch([{"question": "q0"}, {"question": "q1"}])
        names = [(node.name, inputs["question"]) for node, inputs, _ in dspy.settings.trace]
    assert names == [("hint", "q0"), ("solve", "q0")]


def test_dspy_trace_receives_calls_from_a_concurrent_stage():
    left, right = scripted("left", lambda r: chat(x="1")), scripted("right", lambda r: chat(y="2"))
    pipe = Pipeline([LMNode("question -> x", model=left), LMNode("question -> y", model=right)])
    with dspy.context(trace=[]):
        pipe(question="q")
        names = sorted(node.name for node, _, _ in dspy.settings.trace)
    assert names == ["x", "y"]


def test_dspy_trace_respects_max_trace_size():
    pipe, _, _ = three_node()
    with dspy.context(trace=[], max_trace_size=3):
        pipe.batch([{"question": q} for q in QUESTIONS])
        assert len(dspy.settings.trace) == 3


def test_with_models_rebinds_which_backend_receives_requests():
    pipe, small, large = three_node()
    teacher = scripted("teacher", lambda r: chat(hint="from the teacher"))
    rebound = pipe.with_models(small=teacher)
    (result,) = rebound.batch([{"question": "q0"}])
    assert result.outputs["hint"] == "from the teacher"
    assert result.trace[0].model == "teacher"
    assert len(teacher.backend.history) == 1 and small.backend.history == []
    assert len(large.backend.history) == 1  # unchanged bindings still apply
    pipe.batch([{"question": "q0"}])  # the original keeps its binding
    assert len(small.backend.history) == 1 and len(teacher.backend.history) == 1
    with pytest.raises(ConfigError, match="no model named medium"):
        pipe.with_models(medium=teacher)
