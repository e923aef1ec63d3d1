"""`FitJudges` on real recorded answers: it learns which judge features predict a right answer,
and `Calibrate` then finds cascades in which cheap stages vote (agreement with earlier stages) —
chains a FrugalGPT judge reading one answer cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tandemlm import Model, Pipeline, compile
from tandemlm.evaluate import packaged_data
from tandemlm.modules import Cascade, FeatureJudge, Solve, Stage
from tandemlm.optimizers import Calibrate, FitJudges
from tandemlm.optimizers.fit_judges import logistic
from tandemlm.runtime import CompileError, ConfigError
from tandemlm.runtime.backends.recorded import read_replay_file
from tandemlm.suites.overruling import metric

EXCERPT = packaged_data("overruling_excerpt.jsonl")
MODELS = ["gptj_6B", "j1-large", "gpt-3.5-turbo", "gpt-4"]
MMLU = Path(__file__).resolve().parents[3] / "shared" / "data" / "replay" / "mmlu_train.jsonl"


def _cascade(data: Path, models: list[str], judge=FeatureJudge) -> Pipeline:
    stages = [Stage(Solve("prompt -> answer", model=Model("recorded", m, data=str(data)), name=f"s{i}",
                          prompt_field="prompt", key_field="id"),
                    judge=judge() if i < len(models) - 1 else None)
              for i, m in enumerate(models)]
    return Pipeline([Cascade(stages)])


def _rows(path: Path, family: str | None = None) -> list[dict]:
    return [{"id": r["id"], "prompt": r["prompt"], "gold": r["gold"]}
            for r in read_replay_file(path).rows if r.get("family") == family]


def test_logistic_regression_recovers_known_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    y = (rng.random(4000) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 2.0 * x[:, 1] + 0.5)))).astype(float)
    w = logistic(x, y, l2=0.0)
    assert w == pytest.approx([1.5, -2.0, 0.5], abs=0.15)


def test_logistic_regression_with_more_features_than_rows_solves_in_their_span():
    """The row-space solution is the full solution: same weights, same predictions."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 300))
    y = (x[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(float)
    fast = logistic(x, y, l2=3.0)
    full = logistic(np.hstack([x, np.zeros((40, 300))]), y, l2=3.0)  # 600 > 2 * 40 as well
    xx = np.hstack([x, np.ones((40, 1))])
    ridge = 3.0 * np.eye(301)
    ridge[-1, -1] = 0.0
    p = 1 / (1 + np.exp(-xx @ fast))
    assert np.abs(xx.T @ (p - y) + ridge @ fast).max() < 1e-6  # the gradient vanishes: the optimum
    assert np.allclose(full[:300], fast[:300]) and np.allclose(full[300:600], 0.0)
    assert full[-1] == pytest.approx(fast[-1])


def test_agreement_wins_on_overruling_and_the_cascade_lets_cheap_stages_vote(tmp_path):
    rows = _rows(EXCERPT)
    train = rows[0::2]
    compiled = compile(_cascade(EXCERPT, MODELS), train, metric, out_dir=tmp_path / "out",
                       passes=[FitJudges(), Calibrate(match=1.0, order="cost", max_stages=4)],
                       progress=False)
    fit, calibrate = compiled.compile_report
    # GPT-3.5 agreeing with the cheaper APIs predicts that it is right (GPT-J alone is a coin toss)
    assert fit.details["cascade/s2"]["features"] == ["agreement"]
    assert fit.details["cascade/s2"]["held_out_auc"]["agreement"] > 0.57  # out of fold, pooled
    # the first stage has nothing to agree with and OVERRULING reports no confidence: no feature
    assert fit.details["cascade/s0"]["features"] == []
    assert "confidence" not in fit.details["cascade"]["features_won"]
    # the fitted weights are part of the program: they survive save + load
    from tandemlm import load
    again = load(tmp_path / "out", program=_cascade(EXCERPT, MODELS))
    assert again.nodes["cascade"].state() == compiled.nodes["cascade"].state()
    assert json.loads((tmp_path / "out" / "program.json").read_text())  # strict JSON, no Infinity
    chosen = calibrate.details["cascade"]["chosen"]
    assert chosen["quality"] >= calibrate.details["cascade"]["target"]


@pytest.mark.skipif(not MMLU.is_file(), reason=f"real replay data {MMLU} is not on this machine")
def test_recorded_confidence_wins_where_the_data_has_one(tmp_path):
    rows = _rows(MMLU, "llama")
    models = ["llama3.2-3b", "llama3.1-8b", "llama3.1-70b"]
    compiled = compile(_cascade(MMLU, models, judge=lambda: FeatureJudge(confidence=True)), rows,
                       metric, out_dir=tmp_path / "out", passes=[FitJudges()], progress=False)
    (fit,) = compiled.compile_report
    first = fit.details["cascade/s0"]
    assert first["features"] == ["confidence"]  # nothing before it to agree with
    assert first["held_out_auc"]["confidence"] > 0.7


def test_a_pipeline_without_feature_judges_is_a_compile_error_and_options_are_checked():
    with pytest.raises(ConfigError, match="folds must be >= 2"):
        FitJudges(folds=1)
    solo = Pipeline([Solve("prompt -> answer", model=Model("recorded", "gpt-4", data=str(EXCERPT)),
                           prompt_field="prompt", key_field="id")])
    with pytest.raises(CompileError, match="FeatureJudge"):
        compile(solo, _rows(EXCERPT)[:20], metric, passes=[FitJudges()], progress=False)


def test_calibrate_scores_each_example_with_the_fold_model_that_did_not_see_it(tmp_path):
    from tandemlm.optimizers.cost_quality import cost_quality_points
    from tandemlm.optimizers.passes import CompileContext
    from tandemlm.optimizers.stage_runs import (cascade_inputs, cascades, examples_digest,
                                                run_every_stage)
    from tandemlm.optimizers.trace_store import TraceStore

    train = _rows(EXCERPT)[0::2]
    compiled = compile(_cascade(EXCERPT, MODELS), train, metric, out_dir=tmp_path / "out",
                       passes=[FitJudges(folds=4)], progress=False)
    cascade = next(iter(cascades(compiled).values()))
    judge = cascade.judges[2]  # GPT-3.5's, fitted on agreement with the cheaper stages
    assert judge.features == ["agreement"] and len(judge.cross_fit["folds"]) == 4
    store = TraceStore(metric)
    ctx = CompileContext(trainset=train, valset=[], metric=metric, store=store, out=tmp_path / "c")
    runs = run_every_stage(compiled, "cascade", cascade_inputs(store.run(compiled, train), "cascade"), ctx)
    folds = judge.fold_judges(examples_digest(runs))
    assert folds is not None and judge.fold_judges("another split") is None
    oof, _ = cost_quality_points(runs, cascade.judges, cross_fit=True)
    fitted, _ = cost_quality_points(runs, cascade.judges, cross_fit=False)
    before = (0, 1)
    got, seen = oof.score(2, before), fitted.score(2, before)
    features = [t.info["features"] for t in runs[2].judge_traces]
    answers = [a.outputs["answer"] for a in runs[2].answers]
    earlier = [[runs[j].answers[i].outputs["answer"] for j in before] for i in range(len(answers))]
    for i in range(len(answers)):  # example i: fold i mod 4's model, fitted without it
        expected = folds[i % 4].rescore([features[i]], [answers[i]], [earlier[i]])[0]
        assert got[i] == pytest.approx(expected)
        assert seen[i] == pytest.approx(judge.rescore([features[i]], [answers[i]], [earlier[i]])[0])
    assert not np.allclose(got, seen)  # the fold models differ from the one fitted on everything
    # the fold models are data in the judge's state: they survive save + load
    from tandemlm import load
    again = load(tmp_path / "out", program=_cascade(EXCERPT, MODELS))
    assert again.nodes["cascade"].judges[2].cross_fit == judge.cross_fit
