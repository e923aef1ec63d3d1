"""Shipped programs run on the shipped data and report what the recorded models really did."""

import json
from pathlib import Path

import pytest

from tandemlm import evaluate
from tandemlm.evaluate import load_object, packaged_data
from tandemlm.runtime import ConfigError

PROGRAM = str(Path(__file__).resolve().parents[1] / "programs" / "replay_single.py")


def _rows():
    return [json.loads(line) for line in packaged_data("overruling_excerpt.jsonl").open()]


@pytest.mark.parametrize("model", ["gpt-4", "gptj_6B"])
def test_replay_single_reproduces_each_models_recorded_accuracy(model, monkeypatch):
    build = load_object(f"{PROGRAM}:build")
    metric = load_object(f"{PROGRAM}:metric")
    rows = _rows()
    result = evaluate(build(model), rows, metric, progress=False)
    recorded = [r["models"][model] for r in rows]
    assert result.score == pytest.approx(sum(r["correct"] for r in recorded) / len(rows))
    usage = result.summary["usage"][model]
    assert usage["calls"] == len(rows)
    assert usage["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in recorded))
    answers = [rec.result.outputs["answer"] for rec in result.records]
    assert answers == [r["output"].strip() for r in recorded]


def test_replay_single_unknown_model_is_a_clear_error():
    build = load_object(f"{PROGRAM}:build")
    with pytest.raises(ConfigError, match="no recordings of model 'gpt-5'"):
        build("gpt-5").batch(_rows()[:1])
