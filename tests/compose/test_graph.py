"""Pipeline graph validation: every error names the node and the field; valid graphs have
topological stages, explicit ordering edges and a Mermaid picture."""

from __future__ import annotations

import uuid

import pytest

from tandemlm.compose import LMNode, Pipeline, Step
from tandemlm.runtime import GraphError, Model

MODEL = Model("scripted", f"graph-{uuid.uuid4().hex}", reply="unused", name="tiny")


def step(name: str, inputs, outputs) -> Step:
    """A Python step that is never run: only its declared fields matter here."""
    return Step(lambda **kw: None, inputs=inputs, outputs=outputs, name=name)


# -- errors ------------------------------------------------------------------------------------

def test_cycle_names_the_nodes_and_fields():
    with pytest.raises(GraphError) as info:
        Pipeline([step("a", "q, y", "x"), step("b", "x", "y")])
    message = str(info.value)
    assert "cycle" in message
    assert "a -> b -> a" in message or "b -> a -> b" in message
    assert "'x'" in message and "'y'" in message


def test_cycle_through_an_explicit_edge_is_reported():
    with pytest.raises(GraphError) as info:
        Pipeline([step("a", "q", "x"), step("b", "x", "y")], edges=[("b", "a")])
    message = str(info.value)
    assert "cycle" in message
    assert "a -> b -> a" in message or "b -> a -> b" in message
    assert "'x'" in message


def test_missing_input_with_declared_inputs_names_node_and_field():
    with pytest.raises(GraphError) as info:
        Pipeline([step("verify", "question, evidence", "verdict")], inputs=["question"])
    message = str(info.value)
    assert "node 'verify'" in message and "field 'evidence'" in message
    assert "add it to the inputs" in message


def test_without_declared_inputs_unproduced_fields_become_inputs():
    pipe = Pipeline([step("verify", "question, evidence", "verdict")])
    assert pipe.input_fields == ["question", "evidence"]


def test_two_producers_of_one_field_names_both_nodes_and_the_field():
    with pytest.raises(GraphError) as info:
        Pipeline([step("first", "q", "answer"), step("second", "q", "answer")])
    message = str(info.value)
    assert "field 'answer'" in message and "'first'" in message and "'second'" in message


def test_unknown_model_name_names_node_and_model():
    node = LMNode("question -> answer", model="large", name="solve")
    with pytest.raises(GraphError) as info:
        Pipeline([node], models={"small": MODEL})
    message = str(info.value)
    assert "node 'solve'" in message and "model 'large'" in message
    assert "bound models: small" in message


def test_type_mismatch_names_both_nodes_the_field_and_both_types():
    count = LMNode("q -> n: int", model=MODEL, name="count")
    show = LMNode("n: str -> out", model=MODEL, name="show")
    with pytest.raises(GraphError) as info:
        Pipeline([count, show])
    message = str(info.value)
    assert "field 'n'" in message
    assert "node 'count' produces int" in message and "node 'show' expects str" in message


def test_type_mismatch_between_python_steps():
    with pytest.raises(GraphError, match="field 'items'.*'make' produces list.*'use' expects dict"):
        Pipeline([step("make", "q", {"items": list}), step("use", {"items": dict}, "out")])


def _feeds(produced: dict | str, consumed: dict) -> Pipeline:
    """A pipeline where node 'use' reads the one field node 'make' produces; asserts the edge."""
    pipe = Pipeline([step("make", "q", produced), step("use", consumed, "out")])
    assert pipe.stages() == [["make"], ["use"]]
    assert pipe.graph.edges["make", "use"]["fields"] == list(consumed)
    return pipe


def test_compatible_types_pass():
    # A subclass feeds its base, equal generics match, and an undeclared (Any) field matches...
    _feeds({"flag": bool}, {"flag": int})
    _feeds({"items": list[str]}, {"items": list[str]})
    _feeds("x", {"x": int})
    # ...where the other way round, or with other arguments, is a mismatch.
    with pytest.raises(GraphError, match="field 'flag'.*'make' produces int.*'use' expects bool"):
        _feeds({"flag": int}, {"flag": bool})
    with pytest.raises(GraphError, match="field 'items'"):
        _feeds({"items": list[int]}, {"items": list[str]})


def test_parametrised_type_feeds_its_bare_origin():
    _feeds({"items": list[str]}, {"items": list})
    _feeds({"pairs": dict[str, int]}, {"pairs": dict})
    # a bare type promises nothing about its items, and the origin must still match
    with pytest.raises(GraphError, match="field 'items'"):
        _feeds({"items": list}, {"items": list[str]})
    with pytest.raises(GraphError, match="field 'items'"):
        _feeds({"items": list[str]}, {"items": dict})


def test_declared_input_that_a_node_also_produces():
    with pytest.raises(GraphError, match="field 'x'.*node 'a'"):
        Pipeline([step("a", "q", "x")], inputs=["q", "x"])


def test_duplicate_node_names():
    with pytest.raises(GraphError, match="two nodes are named 'solve'"):
        Pipeline([step("solve", "q", "a"), step("solve", "q", "b")])


def test_unknown_node_in_an_explicit_edge():
    with pytest.raises(GraphError) as info:
        Pipeline([step("a", "q", "x")], edges=[("a", "ghost")])
    message = str(info.value)
    assert "unknown node 'ghost'" in message and "('a', 'ghost')" in message


def test_node_reading_its_own_output():
    with pytest.raises(GraphError, match="node 'loop' reads its own output field 'x'"):
        Pipeline([step("loop", "q, x", "x")])


def test_empty_pipeline():
    with pytest.raises(GraphError, match="at least one node"):
        Pipeline([])


# -- valid graphs ------------------------------------------------------------------------------

def _diamond() -> Pipeline:
    return Pipeline([
        step("join", "left, right", "answer"),
        step("right", "question", "right"),
        step("split", "question", "part"),
        step("left", "part", "left"),
    ])


def test_stages_are_topological_generations():
    pipe = _diamond()
    assert pipe.stages() == [["right", "split"], ["left"], ["join"]]
    assert pipe.input_fields == ["question"]
    graph = pipe.graph
    assert graph.edges["split", "left"]["fields"] == ["part"]
    assert graph.edges["left", "join"]["fields"] == ["left"]
    assert set(graph.edges) == {("split", "left"), ("left", "join"), ("right", "join")}


def test_explicit_edges_add_ordering():
    nodes = [step("a", "q", "x"), step("b", "q", "y")]
    assert Pipeline(nodes).stages() == [["a", "b"]]
    ordered = Pipeline(nodes, edges=[("b", "a")])
    assert ordered.stages() == [["b"], ["a"]]
    assert ordered.graph.edges["b", "a"]["fields"] == []


def test_explicit_edges_order_execution():
    seen: list[str] = []

    def first(q):
        seen.append("first")
        return q

    def second(q):
        seen.append("second")
        return q

    nodes = [Step(first, inputs="q", outputs="x"), Step(second, inputs="q", outputs="y")]
    Pipeline(nodes).batch([{"q": 1}])
    assert seen == ["first", "second"]  # one stage, name order
    seen.clear()
    Pipeline(nodes, edges=[("second", "first")]).batch([{"q": 1}])
    assert seen == ["second", "first"]


def test_mermaid_shows_every_node_model_and_field_edge():
    pipe = Pipeline([
        LMNode("question -> subquestion", model="small", name="decompose"),
        LMNode("question, subquestion -> answer", model=MODEL, name="solve"),
        step("grade", "answer", "grade"),
        step("log", "question", "logged"),
    ], models={"small": MODEL}, edges=[("log", "grade")])
    text = pipe.to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert '  in_question(["question"])' in lines
    assert '  decompose["decompose<br/>small"]' in lines
    assert '  solve["solve<br/>tiny"]' in lines
    assert '  grade["grade<br/>(python)"]' in lines
    assert '  log["log<br/>(python)"]' in lines
    for edge in ("in_question -->|question| decompose", "in_question -->|question| solve",
                 "in_question -->|question| log", "decompose -->|subquestion| solve",
                 "solve -->|answer| grade", "log -.-> grade"):
        assert f"  {edge}" in lines, edge


def test_mermaid_draws_composites_with_their_insides():
    from tandemlm.modules import Cascade, Map, Stage

    pipe = Pipeline([
        Map(LMNode("word -> shout", model="small", name="shout"), over="words", into="shouts"),
        Cascade([Stage(LMNode("shouts -> answer", model="small", name="cheap"),
                       judge=LMNode("shouts, answer -> score: float", model="small", name="judge"),
                       threshold=0.7),
                 Stage(LMNode("shouts -> answer", model=MODEL, name="dear"))]),
    ], models={"small": MODEL})
    lines = pipe.to_mermaid().splitlines()
    assert '  subgraph map_shout["map_shout (Map)"]' in lines
    assert '    map_shout__shout["shout<br/>small"]' in lines  # Map's child and its model
    assert '    cascade__dear["dear<br/>tiny"]' in lines
    assert "    cascade__cheap -.->|1. answer| cascade__judge" in lines
    assert "    cascade__judge -.->|below 0.7| cascade__dear" in lines
    assert "  map_shout -->|shouts| cascade" in lines
