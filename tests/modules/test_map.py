"""`Map`, driven by the scripted backend (control flow only): one backend batch for all elements
of all examples, order, empty lists, failure isolation, traces and cost, and pipelines."""

from __future__ import annotations

import uuid

import pytest

from tandemlm import evaluate
from tandemlm.compose import LMNode, Pipeline, Step
from tandemlm.modules import Solve
from tandemlm.modules.decompose import Decompose
from tandemlm.modules.map import Map
from tandemlm.testing import chat_reply as chat, request_field as field
from tandemlm.runtime import ConfigError, GenRequest, Model


def scripted(label: str, reply, **options) -> Model:
    return Model("scripted", f"{label}-{uuid.uuid4().hex}", reply=reply, name=label, **options)


def answering(**options) -> Model:
    """A scripted solver whose answer names the sub-question it was asked."""
    return scripted("large", lambda r: chat(subanswer=f"A({field(r, 'subquestion')})"), **options)


def solve_sub(model="large") -> Solve:
    return Solve("subquestion -> subanswer", model=model, name="solve_sub")


EXAMPLES = [{"subquestions": ["a", "b", "c"]}, {"subquestions": []}, {"subquestions": ["d", "e"]}]


def test_all_elements_of_all_examples_go_in_one_batch_in_order():
    large = answering()
    traces = Pipeline([Map(solve_sub())], models={"large": large}).batch(EXAMPLES)
    assert large.backend.batches == [5]  # 3 + 0 + 2 elements, one backend call
    assert [field(r, "subquestion") for r in large.backend.history] == ["a", "b", "c", "d", "e"]
    assert [t.outputs["subanswers"] for t in traces] == [
        ["A(a)", "A(b)", "A(c)"], [], ["A(d)", "A(e)"]]
    (map_trace,) = traces[0].trace
    assert map_trace.node == "map_solve_sub" and map_trace.info == {"elements": 3}
    assert [c.inputs for c in map_trace.children] == [{"subquestion": s} for s in "abc"]
    assert [c.outputs["subanswer"] for c in map_trace.children] == ["A(a)", "A(b)", "A(c)"]


def test_an_empty_list_gives_empty_answers_and_makes_no_request():
    large = answering()
    (result,) = Pipeline([Map(solve_sub())], models={"large": large}).batch([{"subquestions": []}])
    assert result.ok and result.outputs == {"subanswers": []}
    assert large.backend.batches == [] and result.trace[0].info == {"elements": 0}
    assert result.trace[0].children == []


def test_a_failing_element_fails_its_example_only_with_its_index():
    large = answering(fail=lambda r: field(r, "subquestion") == "e")
    results = Pipeline([Map(solve_sub())], models={"large": large}).batch(EXAMPLES)
    assert large.backend.batches == [5]
    assert results[0].ok and results[1].ok
    assert results[0].outputs["subanswers"] == ["A(a)", "A(b)", "A(c)"]
    assert not results[2].ok
    assert "element 1 of 'subquestions' failed" in results[2].error
    assert "solve_sub" in results[2].error and "scripted failure" in results[2].error
    # The failed example still carries both children's traces (their cost was spent).
    children = results[2].trace[0].children
    assert [c.ok for c in children] == [True, False]


def test_context_fields_are_copied_into_every_element():
    large = scripted("large", lambda r: chat(
        subanswer=f"{field(r, 'question')}|{field(r, 'subquestion')}"))
    node = Solve("question, subquestion -> subanswer", model="large", name="solve_sub")
    mapped = Map(node, context=["question"])
    assert mapped.input_fields.keys() == {"subquestions", "question"}
    results = Pipeline([mapped], models={"large": large}).batch(
        [{"question": "Q1", "subquestions": ["x", "y"]}, {"question": "Q2", "subquestions": ["z"]}])
    assert [r.outputs["subanswers"] for r in results] == [["Q1|x", "Q1|y"], ["Q2|z"]]
    assert large.backend.batches == [3]


def test_map_over_a_python_step_and_a_non_list_field():
    double = Step(lambda n: 2 * n, inputs="n", outputs="doubled", name="double")
    mapped = Map(double, over="numbers", into="doubles")
    results = Pipeline([mapped]).batch([{"numbers": [1, 2, 3]}, {"numbers": "12"}])
    assert results[0].outputs == {"doubles": [2, 4, 6]}
    assert "must be a list" in results[1].error and "str" in results[1].error


def test_fields_are_typed_lists():
    mapped = Map(solve_sub())
    assert mapped.output_fields == {"subanswers": list[str]}
    assert set(mapped.input_fields) == {"subquestions"}
    assert Map(Decompose(model="m", name="d"), over="questions", into="plans").output_fields == {
        "plans": list[list[str]]}


def test_construction_errors_say_what_to_fix():
    two_inputs = Solve("question, subquestion -> subanswer", model="m", name="two")
    with pytest.raises(ConfigError, match="exactly one input field.*question, subquestion.*context="):
        Map(two_inputs)
    with pytest.raises(ConfigError, match="context field.*nope.*not inputs"):
        Map(solve_sub(), context=["nope"])
    with pytest.raises(ConfigError, match="pass output="):
        Map(Solve("subquestion -> subanswer", model="m", reasoning=True))
    with pytest.raises(ConfigError, match="both the mapped list"):
        Map(two_inputs, over="question", context=["question"])
    with pytest.raises(ConfigError, match="must differ"):
        Map(solve_sub(), into="subquestions")


def test_output_picks_one_field_of_a_reasoning_solver():
    large = scripted("large", lambda r: chat(reasoning="so", subanswer=field(r, "subquestion") * 2))
    node = Solve("subquestion -> subanswer", model="large", reasoning=True, name="solve_sub")
    (result,) = Pipeline([Map(node, output="subanswer")], models={"large": large}).batch(
        [{"subquestions": ["p", "q"]}])
    assert result.outputs == {"subanswers": ["pp", "qq"]}


def _decompose_solve(small: Model, large: Model) -> Pipeline:
    return Pipeline([
        Decompose(model="small", max_subquestions=3),
        Map(solve_sub(), over="subquestions", into="subanswers"),
        Solve("question, subquestions: list[str], subanswers: list[str] -> answer", model="large",
              name="final"),
    ], models={"small": small, "large": large})


def _small() -> Model:
    # The number of sub-questions depends on the question: "q3" gets 3, "q0" none.
    return scripted("small", lambda r: chat(subquestions=str(
        [f"{field(r, 'question')}.{k}" for k in range(int(field(r, 'question')[1:]) % 4)])))


def _large() -> Model:
    def reply(r: GenRequest) -> str:
        if "subanswers" in r.messages[-1]["content"]:
            return chat(answer=f"final[{field(r, 'subanswers')}]")
        return chat(subanswer=f"A({field(r, 'subquestion')})")
    return scripted("large", reply)


def _timeless(trace) -> dict:
    data = trace.to_dict()
    data["latency_s"] = 0
    data["children"] = [_timeless(c) for c in trace.children]
    return data


def test_map_in_a_pipeline_batch_equals_one_by_one():
    examples = [{"question": f"q{i}"} for i in range(6)]
    small_b, large_b = _small(), _large()
    batched = _decompose_solve(small_b, large_b).batch(examples)
    assert small_b.backend.batches == [6]
    assert large_b.backend.batches == [0 + 1 + 2 + 3 + 0 + 1, 6]  # all sub-questions, then finals
    small_1, large_1 = _small(), _large()
    single = _decompose_solve(small_1, large_1)
    for example, result in zip(examples, batched, strict=True):
        (alone,) = single.batch([example])
        assert alone.outputs == result.outputs and result.ok
        assert [_timeless(t) for t in alone.trace] == [_timeless(t) for t in result.trace]
        assert single(**example).answer == result.outputs["answer"]
    assert batched[3].outputs["subanswers"] == ["A(q3.0)", "A(q3.1)", "A(q3.2)"]
    assert batched[3].outputs["answer"] == "final[[\"A(q3.0)\", \"A(q3.1)\", \"A(q3.2)\"]]"


def test_cost_of_mapped_calls_is_accounted_per_model():
    small, large = _small(), _large()
    large = scripted("large", large.backend.reply, price=(1.0, 2.0))
    examples = [{"question": f"q{i}", "gold": "x"} for i in range(6)]
    report = evaluate(_decompose_solve(small, large), examples, lambda ex, pred: 1.0, progress=False)
    usage = report.summary["usage"]
    assert usage["small"]["calls"] == 6
    assert usage["large"]["calls"] == 7 + 6  # one per sub-question, one final per example
    mapped = [c for r in report.records for t in r.result.trace if t.node == "map_solve_sub"
              for c in t.children]
    assert len(mapped) == 7 and all(c.cost_usd > 0 for c in mapped)
    finals = [t for r in report.records for t in r.result.trace if t.node == "final"]
    assert usage["large"]["cost_usd"] == pytest.approx(
        sum(c.cost_usd for c in mapped) + sum(t.cost_usd for t in finals))


def test_named_predictors_list_the_mapped_lm_node():
    pipe = _decompose_solve(_small(), _large())
    names = dict(pipe.named_predictors())
    assert any(name.endswith("node") and p.name == "solve_sub" for name, p in names.items()), names
    assert {p.name for p in names.values()} == {"decompose", "solve_sub", "final"}
    assert {m for m in pipe.models_used()} == {"small", "large"}


def test_map_of_a_plain_lm_node_is_a_dspy_predictor_with_demos():
    node = LMNode("subquestion -> subanswer", model="large", name="sub")
    mapped = Map(node, name="each")
    assert mapped.name == "each" and mapped.children() == [node]
    assert [p for _, p in mapped.named_predictors()] == [node]
