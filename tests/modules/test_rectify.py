"""`Rectify` control flow on scripted models (verdict sequences drive evidence switches and
regenerations; max_turns; only unfinished examples are re-sent; cost of every turn counts), and
the BM25 `Retrieve` it walks (checked against a hand computation)."""

from __future__ import annotations

import math
import re

import pytest

from tandemlm import Model, Pipeline, Step, evaluate
from tandemlm.modules.rectify import Rectify
from tandemlm.modules.retrieve import Retrieve, tokenize
from tandemlm.modules.solve import Solve
from tandemlm.modules.verify import Verify
from tandemlm.runtime import ConfigError
from tandemlm.testing import request_text

QUESTIONS = ["q1", "q2", "q3", "q4", "q5"]
RANKED = {q: [f"{q}-p{i}" for i in range(3)] for q in QUESTIONS}
SEED = 10
# (question, evidence, answer) -> verdict; an answer is "<evidence>@<seed or greedy>"
SCRIPT = {
    ("q1", "q1-p0", "q1-p0@greedy"): "correct",
    ("q2", "q2-p0", "q2-p0@greedy"): "retrieval_error",
    ("q2", "q2-p1", "q2-p1@greedy"): "correct",
    ("q3", "q3-p0", "q3-p0@greedy"): "generation_error",
    ("q3", "q3-p0", f"q3-p0@{SEED + 1}"): "correct",
    ("q4", "q4-p0", "q4-p0@greedy"): "retrieval_error",
    ("q4", "q4-p1", "q4-p1@greedy"): "retrieval_error",
    ("q4", "q4-p2", "q4-p2@greedy"): "retrieval_error",
    ("q5", "q5-p0", "q5-p0@greedy"): "generation_error",
    ("q5", "q5-p0", f"q5-p0@{SEED + 1}"): "retrieval_error",
    ("q5", "q5-p1", "q5-p1@greedy"): "correct",
}


def _field(request, name: str) -> str:
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)\n\n", request.messages[-1]["content"], re.S)
    return match.group(1)


def _solver_reply(request) -> str:
    sample = request.seed if request.temperature > 0 else "greedy"
    return f"[[ ## answer ## ]]\n{_field(request, 'evidence')}@{sample}\n\n[[ ## completed ## ]]"


def _verifier_reply(script):
    def reply(request) -> str:
        key = tuple(_field(request, f) for f in ("question", "evidence", "answer"))
        return f"[[ ## verdict ## ]]\n{script.get(key, 'UNSCRIPTED')}\n\n[[ ## completed ## ]]"
    return reply


def _pipeline(max_turns=3, ranked=RANKED, script=SCRIPT, fail=None, judge_fail=None):
    solver = Model("scripted", "solver", reply=_solver_reply, fail=fail, price=(1.0, 2.0))
    judge = Model("scripted", "judge", reply=_verifier_reply(script), fail=judge_fail,
                  price=(0.5, 0.5))
    rectify = Rectify(Solve("question, evidence -> answer", model="large"),
                      Verify("small", scoring="text"),
                      Step(lambda question: ranked[question], inputs="question",
                           outputs="passages", name="retrieve"),
                      max_turns=max_turns, seed=SEED)
    return Pipeline([rectify], models={"large": solver, "small": judge}), solver, judge


def _by_question(results):
    return {r.inputs["question"]: r for r in results}


def test_verdicts_drive_evidence_switches_and_regenerations():
    pipe, *_ = _pipeline()
    results = _by_question(pipe.batch([{"question": q} for q in QUESTIONS]))
    expected = {"q1": ("q1-p0@greedy", "q1-p0", "correct", 1),
                "q2": ("q2-p1@greedy", "q2-p1", "correct", 2),
                "q3": (f"q3-p0@{SEED + 1}", "q3-p0", "correct", 2),
                "q4": ("q4-p2@greedy", "q4-p2", "retrieval_error", 3),
                "q5": ("q5-p1@greedy", "q5-p1", "correct", 3)}
    for q, (answer, evidence, verdict, turns) in expected.items():
        out = results[q].outputs
        assert (out["answer"], out["evidence"], out["verdict"], out["turns"]) == \
               (answer, evidence, verdict, turns), q
    info = results["q5"].trace[0].info
    assert info["verdicts"] == ["generation_error", "retrieval_error", "correct"]
    assert info["actions"] == ["answer", "regenerate", "retrieve"]
    assert info["evidence_rank"] == [0, 0, 1] and info["stop"] == "correct"
    assert results["q4"].trace[0].info["stop"] == "max_turns"
    assert [c.node for c in results["q2"].trace[0].children] == \
           ["retrieve", "solve", "verify", "solve", "verify"]


def test_only_unfinished_examples_are_resent_one_batch_per_child_per_turn():
    pipe, solver, judge = _pipeline()
    pipe.batch([{"question": q} for q in QUESTIONS])
    # turn 0: all five; turn 1: re-retrieved q2, q4 and resampled q3, q5; turn 2: q4, q5
    assert solver.backend.batches == [5, 2, 2, 2]
    assert judge.backend.batches == [5, 4, 2]
    resampled = solver.backend.history[7:9]
    assert [_field(r, "question") for r in resampled] == ["q3", "q5"]
    assert all(r.temperature == 0.7 and r.seed == SEED + 1 for r in resampled)
    greedy = [r for i, r in enumerate(solver.backend.history) if i not in (7, 8)]
    assert all(r.temperature == 0.0 and r.seed is None for r in greedy)


def test_max_turns_bounds_the_loop():
    pipe, solver, judge = _pipeline(max_turns=1)
    results = _by_question(pipe.batch([{"question": q} for q in QUESTIONS]))
    assert solver.backend.batches == [5] and judge.backend.batches == [5]
    assert results["q2"].outputs["verdict"] == "retrieval_error"
    assert results["q2"].outputs["turns"] == 1
    assert results["q2"].trace[0].info["stop"] == "max_turns"
    assert results["q1"].trace[0].info["stop"] == "correct"


@pytest.mark.parametrize("keep, kept", [("best", 0), ("last", 2)])
def test_an_unresolved_example_keeps_the_best_scored_or_the_last_turn(keep, kept):
    # P(correct) by evidence: 0.38, 0.05, 0.12 -- retrieval_error wins every time
    correct = {"q4-p0": -0.5, "q4-p1": -3.0, "q4-p2": -2.0}
    logprob = lambda r, c: {"retrieval_error": 0.0, "generation_error": -9.0}.get(
        c.split("\n")[-1], correct[_field(r, "evidence")])
    judge = Model("scripted", "judge", logprob=logprob)
    solver = Model("scripted", "solver", reply=_solver_reply)
    rectify = Rectify(Solve("question, evidence -> answer", model=solver), Verify(judge),
                      Step(lambda question: RANKED[question], inputs="question", outputs="passages",
                           name="retrieve"), keep=keep)
    (result,) = Pipeline([rectify]).batch([{"question": "q4"}])
    assert result.outputs["evidence"] == f"q4-p{kept}"
    assert result.outputs["answer"] == f"q4-p{kept}@greedy"
    assert result.outputs["turns"] == 3 and result.trace[0].info["kept_turn"] == kept
    scores = [c.outputs["score"] for c in result.trace[0].children if c.node == "verify"]
    assert scores == pytest.approx([math.exp(-0.5) / (1 + math.exp(-0.5) + math.exp(-9.0)),
                                    math.exp(-3) / (1 + math.exp(-3) + math.exp(-9.0)),
                                    math.exp(-2) / (1 + math.exp(-2) + math.exp(-9.0))])


def test_an_exhausted_ranked_list_stops_the_example():
    ranked = {"q4": ["q4-p0", "q4-p1"]}
    pipe, solver, _ = _pipeline(max_turns=5, ranked=ranked)
    (result,) = pipe.batch([{"question": "q4"}])
    assert result.outputs["turns"] == 2 and result.outputs["evidence"] == "q4-p1"
    assert result.trace[0].info["stop"] == "no more evidence"
    assert solver.backend.batches == [1, 1]


def test_cost_of_every_turn_accumulates_in_the_trace():
    pipe, solver, judge = _pipeline()
    examples = [{"question": q} for q in QUESTIONS]
    report = evaluate(pipe, examples, lambda ex, pred: pred.verdict == "correct", progress=False)
    for model, priced in ((solver, (1.0, 2.0)), (judge, (0.5, 0.5))):
        sent = model.backend.history
        tokens_in = sum(max(1, int(len(request_text(r)) * 0.25)) for r in sent)
        usage = report.summary["usage"][model.name]
        assert usage["calls"] == len(sent) and usage["tokens_in"] == tokens_in
        assert usage["cost_usd"] == pytest.approx(
            (tokens_in * priced[0] + usage["tokens_out"] * priced[1]) / 1e6)
    q5 = next(r for r in report.records if r.example["question"] == "q5")
    calls = [t for t in q5.result.trace[0].walk() if t.model is not None]
    assert sum(t.calls for t in calls) == 6  # three answers and three verdicts
    assert report.score == pytest.approx(4 / 5)


def test_a_failing_child_sinks_turn_zero_but_keeps_a_verified_answer_later():
    fail = lambda r: "q1-p0" in request_text(r) or "q2-p1" in request_text(r)
    pipe, *_ = _pipeline(fail=fail)
    results = _by_question(pipe.batch([{"question": q} for q in QUESTIONS]))
    assert not results["q1"].ok and "solve" in results["q1"].error
    q2 = results["q2"]
    assert q2.ok and q2.outputs["answer"] == "q2-p0@greedy" and q2.outputs["evidence"] == "q2-p0"
    assert q2.outputs["verdict"] == "retrieval_error" and q2.outputs["turns"] == 1
    assert q2.trace[0].info["stop"].startswith("error at turn 1: solve")
    assert results["q5"].outputs["verdict"] == "correct"  # the others are unaffected


def test_a_failing_verifier_sinks_turn_zero_but_keeps_a_verified_answer_later():
    fail = lambda r: "q1-p0@" in request_text(r) or f"q3-p0@{SEED + 1}" in request_text(r)
    pipe, _, judge = _pipeline(judge_fail=fail)
    results = _by_question(pipe.batch([{"question": q} for q in QUESTIONS]))
    assert not results["q1"].ok and "verify" in results["q1"].error
    q3 = results["q3"]
    assert q3.outputs["answer"] == "q3-p0@greedy" and q3.outputs["verdict"] == "generation_error"
    assert q3.outputs["turns"] == 1 and q3.trace[0].info["stop"].startswith("error at turn 1: verify")
    assert judge.backend.batches == [5, 4, 2]  # q3 went no further


def test_batch_equals_one_by_one():
    examples = [{"question": q} for q in QUESTIONS]
    batched = _pipeline()[0].batch(examples)
    single = [_pipeline()[0].batch([e])[0] for e in examples]
    assert [r.outputs for r in batched] == [r.outputs for r in single]


def test_configuration_errors_say_what_to_fix():
    solve = Solve("question, evidence -> answer", model="m")
    retrieve = Retrieve(["a passage"])
    with pytest.raises(ConfigError, match="unmapped verdicts"):
        Rectify(solve, Verify("m", options=("bad", "good")), retrieve)
    with pytest.raises(ConfigError, match="must read 'evidence'"):
        Rectify(Solve("question -> answer", model="m"), Verify("m"), retrieve)
    step = Step(lambda question, evidence: "x", inputs="question, evidence", outputs="answer",
                name="plain")
    with pytest.raises(ConfigError, match="resample"):
        Rectify(step, Verify("m"), retrieve)
    with pytest.raises(ConfigError, match="max_turns"):
        Rectify(solve, Verify("m"), retrieve, max_turns=0)
    custom = Rectify(solve, Verify("m", options=("bad", "good")), retrieve,
                     actions={"bad": "retrieve", "good": "stop"})
    assert set(custom.input_fields) == {"question"}
    assert set(custom.output_fields) == {"answer", "evidence", "verdict", "turns"}


# -- Retrieve -------------------------------------------------------------------------------
CORPUS = ["Zorvik was founded by Ilo.", "The capital of Zorvik is Maltor, the capital of trade.",
          "Kesh was founded by Aya.", "Nothing here."]


def _bm25(query: str, corpus: list[str], k1=1.5, b=0.75) -> list[float]:
    """Okapi BM25 written out term by term."""
    docs = [tokenize(d) for d in corpus]
    avg = sum(len(d) for d in docs) / len(docs)
    scores = []
    for doc in docs:
        score = 0.0
        for term in tokenize(query):
            n = sum(term in d for d in docs)
            tf = doc.count(term)
            idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avg)) if tf else 0.0
        scores.append(score)
    return scores


def test_retrieve_ranks_by_bm25_deterministically():
    retrieve = Retrieve(CORPUS, k=3)
    for query in ("Who founded Zorvik?", "What is the capital of Zorvik?", "founded by"):
        expected = _bm25(query, CORPUS)
        assert retrieve.scores(query).tolist() == pytest.approx(expected)
        order = sorted(range(len(CORPUS)), key=lambda i: (-expected[i], i))[:3]
        assert [i for i, _ in retrieve.search(query)] == order
    assert retrieve.search("Who founded Zorvik?")[0][0] == 0
    assert [i for i, _ in retrieve.search("unrelated words", k=4)] == [0, 1, 2, 3]  # ties: corpus order
    (result,) = Pipeline([retrieve]).batch([{"question": "Who founded Kesh?"}])
    assert result.outputs["passages"][0] == "Kesh was founded by Aya."
    assert result.trace[0].info["ids"][0] == 2 and len(result.outputs["passages"]) == 3
    with pytest.raises(ConfigError, match="non-empty corpus"):
        Retrieve([])


def test_rectify_walks_the_bm25_ranking():
    """A distractor ranks first; the verifier's retrieval_error moves to the next passage."""
    retrieve = Retrieve(CORPUS, k=3)
    query = "Who founded the capital of trade Zorvik?"
    ranked = [CORPUS[i] for i, _ in retrieve.search(query)]
    assert ranked[0] != CORPUS[0]  # the long "capital of trade" passage wins
    script = {(query, p, f"{p}@greedy"): "correct" if "founded" in p else "retrieval_error"
              for p in ranked}
    judge = Model("scripted", "judge", reply=_verifier_reply(script))
    solver = Model("scripted", "solver", reply=_solver_reply)
    pipe = Pipeline([Rectify(Solve("question, evidence -> answer", model=solver),
                             Verify(judge, scoring="text"), retrieve)])
    (result,) = pipe.batch([{"question": query}])
    assert result.outputs["evidence"] == CORPUS[0]
    assert result.outputs["turns"] == ranked.index(CORPUS[0]) + 1
