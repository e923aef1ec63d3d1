"""Cascade: escalation follows the judge exactly, cost covers every stage tried, one batch per
stage; judges (node, agreement, answer log-probability) on scripted and real models."""

from __future__ import annotations

import math
import uuid

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandemlm import LMNode, Model, Pipeline, Solve, evaluate
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.judges import Agreement, AnswerLogprob
from tandemlm.testing import chat_reply as _chat, request_field as _field
from tandemlm.runtime import ConfigError
from tandemlm.runtime.backends.hf_prompt import encode_continuation, encode_prompt
from tandemlm.tiny import build_tiny_lm, default_corpus, train_tiny_lm

QUESTIONS = [f"q{i}" for i in range(10)]
SCORES = {q: (0.9 if i % 3 else 0.1) for i, q in enumerate(QUESTIONS)}  # q0, q3, q6, q9 rejected


def _model(tag, reply, **kw):
    return Model("scripted", f"{tag}-{uuid.uuid4().hex}", name=tag, reply=reply, **kw)


def _two_stage(small_fail=(), large_fail=()):
    small = _model("small", lambda r: _chat(answer=f"small:{_field(r, 'question')}"), price=(1.0, 1.0),
                   fail=lambda r: _field(r, "question") in small_fail)
    judge = _model("judge", lambda r: _chat(score=SCORES[_field(r, "question")]), price=(2.0, 2.0))
    large = _model("large", lambda r: _chat(answer=f"large:{_field(r, 'question')}"), price=(50.0, 50.0),
                   fail=lambda r: _field(r, "question") in large_fail)
    cascade = Cascade([
        Stage(Solve(model="small", name="small"), judge=LMNode("question, answer -> score: float",
                                                               model="judge", name="judge"),
              threshold=0.5),
        Stage(Solve(model="large", name="large")),
    ])
    pipe = Pipeline([cascade], models={"small": small, "judge": judge, "large": large})
    return pipe, small, judge, large


def test_escalated_examples_are_exactly_those_the_judge_rejects():
    pipe, small, judge, large = _two_stage()
    results = pipe.batch([{"question": q} for q in QUESTIONS])
    rejected = {q for q, s in SCORES.items() if s < 0.5}
    for q, r in zip(QUESTIONS, results, strict=True):
        (trace,) = r.trace
        assert r.outputs["answer"] == (f"large:{q}" if q in rejected else f"small:{q}")
        assert trace.info["answered_by"] == (1 if q in rejected else 0)
        assert trace.info["scores"][0] == pytest.approx(SCORES[q])
    # one batch per stage, and the large model saw only the rejected examples
    assert small.backend.batches == [10] and judge.backend.batches == [10]
    assert large.backend.batches == [len(rejected)]
    assert sorted(_field(r, "question") for r in large.backend.history) == sorted(rejected)


def test_cost_of_an_escalated_example_includes_every_stage_tried():
    pipe, *_ = _two_stage()
    report = evaluate(pipe, [{"question": q} for q in QUESTIONS], lambda e, p: 1.0, progress=False)
    for record in report.records:
        (trace,) = record.result.trace
        costs = [c["usd"] for c in trace.info["stage_costs"]]
        calls = {t.model: t.cost_usd for t in trace.walk() if t.model}
        assert record.to_dict()["cost_usd"] == pytest.approx(sum(costs))
        if trace.info["answered_by"] == 1:
            assert set(calls) == {"small", "judge", "large"} and len(costs) == 2
            assert costs[0] == pytest.approx(calls["small"] + calls["judge"])
        else:
            assert set(calls) == {"small", "judge"} and len(costs) == 1
    usage = report.summary["usage"]
    assert usage["small"]["calls"] == 10 and usage["judge"]["calls"] == 10 and usage["large"]["calls"] == 4


def test_failures_escalate_and_a_failing_last_stage_fails_the_example():
    pipe, _, judge, _ = _two_stage(small_fail={"q1"}, large_fail={"q3"})
    results = {q: r for q, r in zip(QUESTIONS, pipe.batch([{"question": q} for q in QUESTIONS]),
                                    strict=True)}
    assert results["q1"].outputs["answer"] == "large:q1"  # the small model failed: escalated
    assert results["q3"].error is not None and "last stage failed" in results["q3"].error
    assert judge.backend.batches == [9]  # nothing to judge for the failed answer
    assert all(results[q].ok for q in QUESTIONS if q != "q3")


def test_batch_equals_one_by_one_through_a_cascade():
    pipe, *_ = _two_stage()
    examples = [{"question": q} for q in QUESTIONS]
    batched = pipe.batch(examples)
    single = [pipe.batch([e])[0] for e in examples]
    assert [r.outputs for r in batched] == [r.outputs for r in single]
    assert [r.trace[0].info["answered_by"] for r in batched] == \
           [r.trace[0].info["answered_by"] for r in single]


def test_three_stages_and_named_predictors():
    mid = _model("mid", lambda r: _chat(answer="mid"))
    low = _model("low", lambda r: _chat(answer="low"))
    top = _model("top", lambda r: _chat(answer="top"))
    judge = _model("j", lambda r: _chat(score=0.9 if _field(r, "answer") == "mid" else 0.0))
    cascade = Cascade([Stage(Solve(model=low, name="low"), LMNode("question, answer -> score: float",
                                                                  model=judge, name="j1")),
                       Stage(Solve(model=mid, name="mid"), LMNode("question, answer -> score: float",
                                                                  model=judge, name="j2")),
                       Stage(Solve(model=top, name="top"))])
    pipe = Pipeline([cascade])
    result = pipe.batch([{"question": "x"}])[0]
    assert result.outputs["answer"] == "mid" and result.trace[0].info["answered_by"] == 1
    assert top.backend.history == []
    names = [n for n, _ in pipe.named_predictors()]
    assert len(names) == 5 and all("cascade" in n for n in names)


def test_agreement_judge_scores_the_fraction_of_agreeing_samples():
    # greedy answer "A"; the 4 samples: 3 of 4 agree for "easy", 1 of 4 for "hard"
    state = {"easy": iter(["A", "A", "A", "B"]), "hard": iter(["A", "B", "C", "D"])}
    small = _model("s", lambda r: _chat(answer=next(state[_field(r, "question")]) if r.temperature > 0
                                        else "A"))
    large = _model("l", lambda r: _chat(answer="L"))
    cascade = Cascade([Stage(Solve(model=small, name="s"), judge=Agreement(k=4), threshold=0.5),
                       Stage(Solve(model=large, name="l"))])
    easy, hard = Pipeline([cascade]).batch([{"question": "easy"}, {"question": "hard"}])
    assert easy.trace[0].info["scores"][0] == pytest.approx(0.75) and easy.outputs["answer"] == "A"
    assert hard.trace[0].info["scores"][0] == pytest.approx(0.25) and hard.outputs["answer"] == "L"
    sampled = [r for r in small.backend.history if r.temperature > 0]
    assert len(sampled) == 2 and all(r.n == 4 for r in sampled)  # one batched request per example


def test_config_errors():
    solver = Solve(model="m")
    with pytest.raises(ConfigError, match="at least two stages"):
        Cascade([Stage(solver)])
    with pytest.raises(ConfigError, match="needs a judge"):
        Cascade([Stage(solver), Stage(Solve(model="m", name="b"))])
    with pytest.raises(ConfigError, match="same fields"):
        Cascade([Stage(solver, judge=Agreement()), Stage(LMNode("question -> label", model="m"))])
    with pytest.raises(ConfigError, match="no 'score' output"):
        Cascade([Stage(solver, judge=LMNode("question, answer -> verdict", model="m")),
                 Stage(Solve(model="m", name="b"))])


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = build_tiny_lm(tmp_path_factory.mktemp("cascade") / "lm", seed=0)
    train_tiny_lm(path, default_corpus(), steps=40, seed=0)
    return path


def test_answer_logprob_equals_the_mean_token_probability_by_a_manual_forward_pass(tiny_lm):
    small = Model("hf", str(tiny_lm), device="cpu", dtype="float32")
    large = _model("big", lambda r: "BIG")
    solver = LMNode("prompt -> answer", model=small, name="small", prompt_field="prompt", max_tokens=6)
    cascade = Cascade([Stage(solver, judge=AnswerLogprob(), threshold=0.0),
                       Stage(LMNode("prompt -> answer", model=large, name="big", prompt_field="prompt"))])
    prompts = ["The cat", "Question: What is 3 plus", "A robot builds the map"]
    results = Pipeline([cascade]).batch([{"prompt": p} for p in prompts])
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()
    for prompt, result in zip(prompts, results, strict=True):
        trace = result.trace[0]
        completion = trace.children[0].raw[0]
        context, cont = encode_prompt(tokenizer, prompt), encode_continuation(tokenizer, completion)
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([context + cont])).logits[0]
        logp = torch.log_softmax(logits, -1)
        manual = [float(logp[len(context) + j - 1, t]) for j, t in enumerate(cont)]
        assert trace.info["scores"][0] == pytest.approx(math.exp(sum(manual) / len(manual)), rel=1e-3)
        assert trace.info["answered_by"] == 0  # threshold 0 accepts every scored answer
    assert large.backend.history == []
