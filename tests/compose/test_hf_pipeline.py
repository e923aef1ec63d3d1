"""A pipeline on a real (tiny, briefly trained) transformers model: the stage-batched executor
gives exactly what one-by-one runs give, and one bad example fails alone."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from tandemlm import LMNode, Model, Pipeline, Step, evaluate
from tandemlm.tiny import build_tiny_lm, node_chat_texts, train_tiny_lm

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

WORDS = ["river", "north", "blue", "small", "song", "apple", "map", "door"]


def _nodes(model):
    return [LMNode("question -> topic", model=model, name="topic", max_tokens=16),
            LMNode("question, topic -> answer", model=model, name="answer", max_tokens=16),
            Step(lambda answer: len(answer), inputs="answer", outputs="length", name="length")]


def _questions(n, seed):
    rng = random.Random(seed)
    return [{"question": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) + "?"}
            for _ in range(n)]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A 2-layer Llama trained for seconds on chats in the two nodes' ChatAdapter format."""
    path = build_tiny_lm(tmp_path_factory.mktemp("chat") / "lm", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    topic, answer = _nodes("m")[:2]
    rng = random.Random(0)
    rows = []
    for example in _questions(120, seed=1):
        first = rng.choice(WORDS)
        rows += node_chat_texts(topic, tokenizer, [(example, {"topic": first})])
        rows += node_chat_texts(answer, tokenizer, [({**example, "topic": first},
                                                      {"answer": example["question"].split()[0]})])
    build_tiny_lm(path, texts=rows, seed=0)
    train_tiny_lm(path, rows, steps=120, seed=0)
    return Model("hf", str(path), device="cpu", dtype="float32", batch_size=8)


def test_batch_equals_one_by_one_on_a_real_model(chat_model):
    pipe = Pipeline(_nodes("tiny"), models={"tiny": chat_model})
    examples = _questions(12, seed=7)
    batched = pipe.batch(examples)
    assert sum(r.ok for r in batched) >= 10, [r.error for r in batched]  # the model learned the format
    for example, result in zip(examples, batched, strict=True):
        single = pipe.batch([example])[0]
        assert single.outputs == result.outputs
        assert single.error == result.error
        assert [t.raw for t in single.trace] == [t.raw for t in result.trace]
        assert [(t.tokens_in, t.tokens_out) for t in single.trace] == \
               [(t.tokens_in, t.tokens_out) for t in result.trace]
        if result.ok:
            assert pipe(**example).answer == result.outputs["answer"]


def test_a_too_long_example_fails_alone_and_is_reported(chat_model):
    pipe = Pipeline(_nodes("tiny"), models={"tiny": chat_model})
    examples = _questions(6, seed=3)
    examples.insert(2, {"question": "river " * 3000})  # far beyond 2048 positions
    result = evaluate(pipe, examples, lambda ex, pred: pred.length > 0, progress=False)
    assert result.records[2].error is not None and "topic" in result.records[2].error
    assert all(r.error is None for i, r in enumerate(result.records) if i != 2 and r.result.ok)
    assert sum(r.result.ok for r in result.records) >= 5
    usage = result.summary["usage"][chat_model.name]
    assert usage["tokens_in"] > 0 and usage["flops_estimate"] > 0 and usage["cost_kind"] == "flops_estimate"
