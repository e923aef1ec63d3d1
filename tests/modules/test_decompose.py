"""`Decompose` (DaSLaM): signatures, parsing and truncation (scripted backend, control flow only),
and a Decompose → Map pipeline on a real, briefly trained tiny transformers model that gives the
same results batched as one by one."""

from __future__ import annotations

import random
import uuid

import pytest

from tandemlm.compose import Pipeline
from tandemlm.modules import Solve
from tandemlm.modules.decompose import Decompose
from tandemlm.modules.map import Map
from tandemlm.testing import chat_reply as chat, request_field as field
from tandemlm.runtime import ConfigError, GenRequest, Model, ParseError


def scripted(label: str, reply) -> Model:
    return Model("scripted", f"{label}-{uuid.uuid4().hex}", reply=reply, name=label)


# -- signature and instructions -----------------------------------------------------------------

def test_plain_signature_and_instructions():
    node = Decompose(model="small")
    assert node.name == "decompose"
    assert list(node.input_fields) == ["question"]
    assert node.output_fields == {"subquestions": list[str]}
    assert "at most 5 short sub-questions" in node.instructions
    assert "self-contained" in node.instructions and "Do not answer" in node.instructions
    assert "first attempt" not in node.instructions


def test_conditioned_signature_reads_the_first_attempt():
    node = Decompose(model="small", conditioned=True, max_subquestions=2)
    assert list(node.input_fields) == ["question", "first_attempt"]
    assert node.output_fields == {"subquestions": list[str]}
    assert "first attempt" in node.instructions and "at most 2" in node.instructions
    request = node.request({"question": "What is (1+2)*3?", "first_attempt": "I think 7"})
    assert field(request, "first_attempt") == "I think 7"
    assert "the solver's first attempt" in request.messages[0]["content"]


def test_options_reach_the_lm_node_and_bad_limits_are_refused():
    node = Decompose(model="small", name="plan", instructions="Split it.", max_tokens=40,
                     demos=[{"question": "q", "subquestions": ["a"]}])
    assert node.name == "plan" and node.instructions == "Split it."
    assert node.config["max_tokens"] == 40 and len(node.demos) == 1
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="max_subquestions must be a positive integer"):
            Decompose(model="small", max_subquestions=bad)


# -- parsing ------------------------------------------------------------------------------------

def test_parses_a_list_and_truncates_to_max_subquestions():
    node = Decompose(model="small", max_subquestions=3)
    text = chat(subquestions='["one?", " two? ", "", "three?", "four?", "five?"]')
    assert node.parse(text) == {"subquestions": ["one?", "two?", "three?"]}
    assert node.parse(chat(subquestions="[]")) == {"subquestions": []}


def test_parses_sub_questions_written_one_per_line():
    node = Decompose(model="small", max_subquestions=2)
    text = chat(subquestions="1. What is 2+3?\n2) What is 5*4?\n- What is 20-1?")
    assert node.parse(text) == {"subquestions": ["What is 2+3?", "What is 5*4?"]}


def test_unparsable_output_is_a_parse_error():
    with pytest.raises(ParseError) as info:
        Decompose(model="small").parse("I would rather not.")
    assert info.value.expected == ("subquestions",) and info.value.raw == "I would rather not."


def test_truncation_applies_in_a_pipeline_and_each_kept_question_is_solved():
    small = scripted("small", lambda r: chat(subquestions=str([f"s{k}" for k in range(9)])))
    large = scripted("large", lambda r: chat(subanswer=field(r, "subquestion").upper()))
    pipe = Pipeline([Decompose(model="small", max_subquestions=4),
                     Map(Solve("subquestion -> subanswer", model="large", name="solve_sub"))],
                    models={"small": small, "large": large})
    results = pipe.batch([{"question": "a"}, {"question": "b"}])
    assert [r.outputs["subanswers"] for r in results] == [["S0", "S1", "S2", "S3"]] * 2
    assert large.backend.batches == [8]


def test_conditioned_pipeline_first_attempt_then_decompose_then_map():
    """DaSLaM's loop: the solver tries, the small model decomposes given that attempt, the solver
    answers the sub-questions and then the question."""
    small = scripted("small", lambda r: chat(subquestions=str(
        [f"fix {field(r, 'first_attempt')}", "check"])))

    def large_reply(r: GenRequest) -> str:
        content = r.messages[-1]["content"]
        if "[[ ## subanswers ## ]]" in content:
            return chat(answer=f"final from {field(r, 'subanswers')}")
        if "[[ ## subquestion ## ]]" in content:
            return chat(subanswer=f"ok:{field(r, 'subquestion')}")
        return chat(first_attempt=f"guess({field(r, 'question')})")

    large = scripted("large", large_reply)
    pipe = Pipeline([
        Solve("question -> first_attempt", model="large", name="attempt"),
        Decompose(model="small", conditioned=True),
        Map(Solve("subquestion -> subanswer", model="large", name="solve_sub")),
        Solve("question, first_attempt, subquestions: list[str], subanswers: list[str] -> answer",
              model="large", name="final"),
    ], models={"small": small, "large": large})
    results = pipe.batch([{"question": "q1"}, {"question": "q2"}])
    assert results[1].outputs["subquestions"] == ["fix guess(q2)", "check"]
    assert results[1].outputs["subanswers"] == ["ok:fix guess(q2)", "ok:check"]
    assert results[1].outputs["answer"] == 'final from ["ok:fix guess(q2)", "ok:check"]'
    assert large.backend.batches == [2, 4, 2] and small.backend.batches == [2]


# -- a real tiny model --------------------------------------------------------------------------

WORDS = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "rock"]
SHORT = "Write the sub-questions."


def _nodes() -> list:
    return [Decompose(model="tiny", max_subquestions=3, max_tokens=40, instructions=SHORT),
            Map(Solve("subquestion -> subanswer", model="tiny", name="solve_sub", max_tokens=16))]


def _pipeline(model: Model) -> Pipeline:
    return Pipeline(_nodes(), models={"tiny": model})


def _questions(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": " and ".join(rng.sample(WORDS, rng.randint(1, 3))) + "?"} for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer Llama trained for seconds on both nodes' chats: one sub-question per word of
    the question ("What is red?"), answered with the word's length."""
    from transformers import AutoTokenizer

    from tandemlm.tiny import build_tiny_lm, node_chat_texts, train_tiny_lm

    path = build_tiny_lm(tmp_path_factory.mktemp("decompose") / "lm", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    decompose, mapped = _nodes()
    texts = []
    for example in _questions(80, seed=1):
        subs = [f"What is {w}?" for w in example["question"][:-1].split(" and ")]
        texts += node_chat_texts(decompose, tokenizer, [(example, {"subquestions": subs})])
        texts += node_chat_texts(mapped.node, tokenizer, [({"subquestion": s}, {"subanswer": str(len(s))})
                                                          for s in subs[:1]])
    build_tiny_lm(path, texts=texts, seed=0)
    train_tiny_lm(path, texts, steps=100, batch_size=8, seed=0)
    return Model("hf", str(path), device="cpu", dtype="float32", batch_size=4)


def test_decompose_and_map_on_a_real_model_batched_equals_one_by_one(tiny):
    pipe = _pipeline(tiny)
    examples = _questions(8, seed=7)
    batched = pipe.batch(examples)
    assert sum(r.ok for r in batched) >= 6, [r.error for r in batched]  # it learned the formats
    elements = [r.trace[1].info["elements"] for r in batched if r.ok]
    # The mapped node ran on lists of different lengths, batched across examples (batch_size 4).
    assert min(elements) >= 1 and len(set(elements)) > 1, elements
    for example, result in zip(examples, batched, strict=True):
        (alone,) = pipe.batch([example])
        assert alone.outputs == result.outputs and alone.error == result.error
        assert [c.raw for t in alone.trace for c in t.walk()] == \
               [c.raw for t in result.trace for c in t.walk()]
        if result.ok:
            assert len(result.outputs["subanswers"]) == len(result.outputs["subquestions"])
