"""`FeatureJudge` and `answer_key`: a judge reading the answer's confidence and its agreement with
earlier stages, on real recorded answers (the packaged OVERRULING excerpt and recorded files
written here with a reported confidence)."""

from __future__ import annotations

import json
import math

import pytest

from tandemlm import Model, Pipeline
from tandemlm.evaluate import packaged_data
from tandemlm.modules import Cascade, FeatureJudge, Solve, Stage
from tandemlm.modules.feature_judge import agreement
from tandemlm.modules.judges import answer_key
from tandemlm.runtime import ConfigError
from tandemlm.runtime.backends.recorded import read_replay_file

EXCERPT = packaged_data("overruling_excerpt.jsonl")
MODELS = ["gptj_6B", "j1-large", "gpt-4"]


@pytest.mark.parametrize("a, b", [("['A\\\\n']", "a"), ("['C']", "c"), ("The Paris.", "paris"),
                                  ("1,234", "1234"),
                                  ("First 3 + 4 = 7, so the total is 7 * 2 = 14 dollars.", "14")])
def test_answer_key_normalises_formatting_but_keeps_the_answer(a, b):
    assert answer_key(a) == answer_key(b)


def test_answer_key_tells_different_answers_apart():
    assert answer_key("['A']") != answer_key("['B']")
    assert answer_key("Yes") != answer_key("No")
    assert answer_key("A") == "a"  # a lone option letter is not an article


def test_agreement_is_the_fraction_of_earlier_answers_that_agree():
    assert agreement("Yes", []) is None
    assert agreement("Yes", ["yes.", "No", " YES"]) == pytest.approx(2 / 3)


def _cascade(judge_kwargs=None) -> Pipeline:
    stages = []
    for i, name in enumerate(MODELS):
        solver = Solve("prompt -> answer", model=Model("recorded", name, data=str(EXCERPT)),
                       name=f"s{i}", prompt_field="prompt", key_field="id")
        judge = FeatureJudge(**(judge_kwargs or {})) if i < len(MODELS) - 1 else None
        stages.append(Stage(solver, judge=judge, threshold=0.99))
    return Pipeline([Cascade(stages)])


def test_in_a_cascade_each_stage_is_compared_with_the_stages_before_it():
    rows = read_replay_file(EXCERPT).rows[:40]
    pipe = _cascade()
    results = pipe.batch([{"prompt": r["prompt"], "id": r["id"]} for r in rows])
    for row, result in zip(rows, results, strict=True):
        (cascade,) = result.trace
        judged = [c for c in cascade.children if "features" in c.info]
        said = [row["models"][m]["output"] for m in MODELS]
        assert judged[0].info["features"]["agreement"] is None  # nothing before the first stage
        assert judged[0].info["features"]["confidence"] is None  # OVERRULING reports none
        if len(judged) > 1:  # the untrained judge (mean) stops at stage 0 only on agreement
            same = answer_key(said[1]) == answer_key(said[0])
            assert judged[1].info["features"]["agreement"] == float(same)
        # untrained: the score is the mean of the [0, 1] features present, so a first stage
        # with nothing to compare scores 0.5 and escalates under a 0.99 threshold
        assert cascade.info["scores"][0] == 0.5
        answered = cascade.info["answered_by"]
        if answered == 1:
            assert answer_key(said[1]) == answer_key(said[0])
        assert result.outputs["answer"] == said[answered]


def test_trained_weights_combine_confidence_and_agreement_and_survive_state_round_trip(tmp_path):
    judge = FeatureJudge(confidence=True)
    judge.set_state({"features": ["confidence", "agreement"],
                     "weights": {"confidence": 2.0, "confidence_missing": 0.0, "agreement": 1.0,
                                 "agreement_missing": -1.0, "bias": 0.5},
                     "scale": {"confidence": [-1.0, 0.5]}})
    z = 0.5 + 2.0 * (-0.5 + 1.0) / 0.5 + 1.0 * 1.0
    assert judge.combine({"text": None, "confidence": -0.5, "agreement": 1.0}) \
        == pytest.approx(1 / (1 + math.exp(-z)))
    missing = judge.combine({"text": None, "confidence": None, "agreement": None})
    assert missing == pytest.approx(1 / (1 + math.exp(-(0.5 + 2.0 * (0 + 1.0) / 0.5 - 1.0))))
    pipe = _cascade({"confidence": True})
    pipe.nodes["cascade"].judges[0].set_state(judge.state())
    state = json.loads(json.dumps(pipe.nodes["cascade"].state(), allow_nan=False))
    fresh = _cascade({"confidence": True})
    fresh.nodes["cascade"].set_state(state)
    assert fresh.nodes["cascade"].judges[0].state() == judge.state()


def test_rescore_gives_what_the_cascade_computes_after_those_stages():
    judge = FeatureJudge()
    judge.set_state({"features": ["agreement"], "weights": {"agreement": 3.0, "bias": -1.0}})
    got = judge.rescore([{"text": None, "confidence": None, "agreement": None}] * 3,
                        ["Yes", "No", "Yes"], [["yes"], ["Yes", "No"], []])
    assert got == [judge.combine({"agreement": a}) for a in (1.0, 0.5, None)]
    assert judge.rescore([None], ["Yes"], [["yes"]]) == [None]  # a failed judging stays failed


def test_bad_configuration_and_state_are_config_errors():
    with pytest.raises(ConfigError, match="at least one feature"):
        FeatureJudge(confidence=False, agreement=False)
    with pytest.raises(ConfigError, match="cannot use feature"):
        FeatureJudge().set_state({"features": ["text"]})  # no text scorer given
