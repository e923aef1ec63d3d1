"""The grammar of a node's output format: it accepts exactly what the adapter writes and parses,
and refuses what its fields' types forbid. Checked with llguidance on a real BPE tokenizer."""

from __future__ import annotations

import enum
import json
from typing import Literal

import dspy
import pytest
from dspy.adapters import ChatAdapter, JSONAdapter, XMLAdapter
from pydantic import BaseModel

from tandemlm import LMNode, Model
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.compose.grammar import output_constraint
from tandemlm.runtime import CapabilityError, ConfigError
from tandemlm.runtime.backends.hf_grammar import GrammarTokenizer
from tandemlm.tiny import build_tokenizer, default_corpus

llguidance = pytest.importorskip("llguidance")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Person(BaseModel):
    name: str
    age: int


class Typed(dspy.Signature):
    """Answer."""

    question: str = dspy.InputField()
    verdict: Literal["yes", "no"] = dspy.OutputField()
    count: int = dspy.OutputField()
    score: float = dspy.OutputField()
    flag: bool = dspy.OutputField()
    color: Color = dspy.OutputField()
    items: list[str] = dspy.OutputField()
    person: Person = dspy.OutputField()
    note: str = dspy.OutputField()


GOOD = {"verdict": "no", "count": -12, "score": 0.25, "flag": True, "color": Color.BLUE,
        "items": ["a b", "c [d]"], "person": Person(name="Ann", age=3),
        "note": "two lines\nof text [with a bracket]"}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tok"), default_corpus(80), vocab_size=400)
    return tokenizer, GrammarTokenizer(tokenizer, len(tokenizer), {tokenizer.eos_token_id})


def accepts(vocab, constraint, text: str) -> bool:
    """Whether the grammar can produce exactly `text` and then stop."""
    tokenizer, grammar_tokenizer = vocab
    matcher = grammar_tokenizer.matcher(constraint)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return matcher.consume_tokens(ids) and matcher.is_accepting()


@pytest.mark.parametrize("adapter", [ChatAdapter(), CompactChatAdapter()], ids=["chat", "compact"])
def test_chat_grammar_accepts_what_the_adapter_writes_and_parses(vocab, adapter):
    constraint = output_constraint(adapter, Typed)
    assert constraint.kind == "lark"
    text = adapter.format_assistant_message_content(Typed, GOOD).rstrip()
    assert accepts(vocab, constraint, text)
    parsed = adapter.parse(Typed, text)
    assert parsed["verdict"] == "no" and parsed["count"] == -12 and parsed["person"].age == 3


@pytest.mark.parametrize("field, bad", [
    ("verdict", "maybe"), ("count", "3.5"), ("count", "twelve"), ("flag", "yes"),
    ("color", "green"), ("items", "a, b"), ("person", '{"name": "Ann"}'),
    ("note", "text [[ ## verdict ## ]]"), ("note", "para one\n\npara two"), ("note", " leading"),
])
def test_chat_grammar_refuses_values_the_type_forbids(vocab, field, bad):
    constraint = output_constraint(ChatAdapter(), Typed)
    good = ChatAdapter().format_assistant_message_content(Typed, GOOD).rstrip()
    blocks = good.split("\n\n[[ ## ")
    index = list(Typed.output_fields).index(field)
    header = blocks[index].split("\n", 1)[0]
    blocks[index] = header + "\n" + bad
    assert not accepts(vocab, constraint, "\n\n[[ ## ".join(blocks))


def test_chat_grammar_requires_every_field_in_order_and_the_end_marker(vocab):
    signature = dspy.Signature("question -> topic, answer")
    constraint = output_constraint(ChatAdapter(), signature)
    assert accepts(vocab, constraint, "[[ ## topic ## ]]\nrivers\n\n[[ ## answer ## ]]\nNile\n\n"
                                      "[[ ## completed ## ]]")
    assert not accepts(vocab, constraint, "[[ ## answer ## ]]\nNile\n\n[[ ## topic ## ]]\nrivers"
                                          "\n\n[[ ## completed ## ]]")
    assert not accepts(vocab, constraint, "[[ ## topic ## ]]\nrivers\n\n[[ ## answer ## ]]\nNile")


def test_json_adapter_grammar_is_the_object_of_the_output_fields(vocab):
    constraint = output_constraint(JSONAdapter(), Typed)
    assert constraint.kind == "json_schema"
    schema = json.loads(constraint.text)
    assert schema["required"] == list(Typed.output_fields) and not schema["additionalProperties"]
    text = JSONAdapter().format_assistant_message_content(Typed, GOOD)
    assert accepts(vocab, constraint, text)
    assert not accepts(vocab, constraint, text.replace('"no"', '"maybe"'))


def test_adapters_of_other_formats_have_no_grammar():
    class OwnParse(ChatAdapter):
        def parse(self, signature, completion):
            return {"answer": completion}

    signature = dspy.Signature("question -> answer")
    assert output_constraint(XMLAdapter(), signature) is None
    assert output_constraint(OwnParse(), signature) is None


def test_constrained_true_is_refused_where_no_grammar_or_engine_exists():
    with pytest.raises(ConfigError, match="XMLAdapter has no grammar"):
        LMNode("question -> answer", model="m", adapter=XMLAdapter(), constrained=True)
    with pytest.raises(ConfigError, match="raw-prompt node"):
        LMNode("prompt -> answer", model="m", prompt_field="prompt", constrained=True)
    with pytest.raises(ConfigError, match="None, True or False"):
        LMNode("question -> answer", model="m", constrained="yes")
    scripted = Model("scripted", "s", reply=lambda request: "[[ ## answer ## ]]\n1")
    assert LMNode("question -> answer", model=scripted).constraint_for(scripted) is None
    with pytest.raises(CapabilityError, match="constrained"):
        LMNode("question -> answer", model=scripted, constrained=True).constraint_for(scripted)


def test_a_json_only_engine_runs_chat_nodes_free_and_json_nodes_constrained():
    """A server that takes JSON schemas only (OpenAI's response_format) constrains a JSONAdapter
    node; a ChatAdapter node's grammar is not one it takes, so that node runs free (or, asked for
    constrained=True, is refused up front)."""
    server = Model("openai", "m", base_url="http://127.0.0.1:9/v1", structured_outputs="json_schema")
    chat = LMNode("question -> answer", model=server)
    assert chat.constraint_for(server) is None
    json_node = LMNode("question -> answer", model=server, adapter=JSONAdapter())
    assert json_node.constraint_for(server).kind == "json_schema"
    with pytest.raises(ConfigError, match="constrains only json_schema"):
        LMNode("question -> answer", model=server, constrained=True).constraint_for(server)


def test_field_constraints_kept_apart_from_the_type_reach_the_grammar(vocab):
    """pydantic keeps `Field(min_length=...)` of a list out of its annotation; the grammar holds
    it: Decompose's sub-questions are 1..max_subquestions non-blank strings under a grammar (a
    bare list[str] let a small model close the list at once), while parsing still takes any."""
    from tandemlm.modules.decompose import Decompose

    node = Decompose("small", max_subquestions=2, adapter=CompactChatAdapter())
    assert accepts(vocab, output_constraint(CompactChatAdapter(), node.grammar_signature()),
                   "[[ ## subquestions ## ]]\n[\"" + "x" * 120 + "\"]\n\n[[ ## completed ## ]]")
    for adapter in (CompactChatAdapter(), JSONAdapter()):
        constraint = output_constraint(adapter, node.grammar_signature())
        write = lambda items: adapter.format_assistant_message_content(  # noqa: E731
            node.signature, {"subquestions": items}).rstrip()
        assert accepts(vocab, constraint, write(["What is a?", "What is b?"]))
        assert accepts(vocab, constraint, write(["What is a?"]))
        assert not accepts(vocab, constraint, write([]))
        assert not accepts(vocab, constraint, write(["a", "b", "c"]))
        assert not accepts(vocab, constraint, write([" "]))
        assert not accepts(vocab, constraint, write(["x" * 121]))
    assert node.parse(CompactChatAdapter().format_assistant_message_content(
        node.signature, {"subquestions": []})) == {"subquestions": []}
