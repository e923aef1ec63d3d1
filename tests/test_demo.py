"""`tandem demo`: compiles the OVERRULING cascade from the packaged excerpt (real recorded API
answers, the real MiniLM judge: `TrainScorer(train_encoder=True)` then `Calibrate(match=1.0)`),
evaluates it on the held-out half and writes the report, the per-example results and the plot; a
second run resumes the compile. The compiled artifact is `programs/cascade_compile.py`'s program:
it loads onto that code and answers identically.

One compile serves every test here: it is the suite's slowest piece of work (three epochs of the
MiniLM encoder). The same compile on the full 2,160-row file is `benchmarks/cascade_overruling.py`
(GPT-4's accuracy at about an eighth of its cost; about ten minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tandemlm.cli import app
from tandemlm.evaluate import evaluate, packaged_data
from tandemlm.optimizers import load
from tandemlm.suites.demo import single_models
from tandemlm.suites.overruling import build, metric, splits

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

DATA = str(packaged_data("overruling_excerpt.jsonl"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out)], terminal_width=160)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_tandem_demo_prints_the_table_and_writes_report_results_and_plot(demo):
    out, output = demo
    assert "compiled cascade" in output and "gpt-4" in output
    report = json.loads((out / "report.json").read_text())
    _, _, test = splits(DATA)
    assert report["n_test"] == len(test) == 216
    assert report["singles"] == single_models(test)  # recorded figures, recomputed independently
    assert report["best_single"]["model"] == "gpt-4"
    lines = (out / "eval" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 216
    scored = [json.loads(line) for line in lines]
    assert sum(r["score"] for r in scored) / 216 == report["cascade"]["accuracy"]
    assert abs(sum(r["cost_usd"] for r in scored) - report["cascade"]["cost_usd"]) < 1e-9
    assert report["cascade"]["cost_fraction"] < 0.5  # the calibrated chain is far cheaper than GPT-4
    assert (out / "cost_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "compiled" / "program.json").is_file()


def test_the_judge_learned_and_the_chosen_chain_clears_the_calibration_target(demo):
    out, _ = demo
    passes = json.loads((out / "compiled" / "report.json").read_text())["passes"]
    assert [p["name"] for p in passes] == ["train_scorer", "calibrate"]
    scorer = passes[0]["details"]["cascade/judge_0"]  # held-out slice of the trainset's pairs
    assert scorer["auc_after"] > 0.6 and scorer["auc_after"] > scorer["auc_before"] + 0.1, scorer
    (curve_file,) = (out / "compiled" / "curves").glob("*/curve.json")
    curve = json.loads(curve_file.read_text())
    assert curve["chosen"]["quality"] >= curve["best_single"]["quality"]  # match=1.0 on val
    assert (curve_file.parent / "curve.png").stat().st_size > 10_000


def test_the_artifact_loads_onto_its_program_and_answers_identically(demo):
    """The saved program, loaded onto the code it was compiled from, gives the answers and costs
    the demo's own evaluation recorded."""
    out, _ = demo
    _, _, test = splits(DATA)
    loaded = load(out / "compiled", program=lambda: build(DATA))
    sample = test[:100]
    result = evaluate(loaded, sample, metric, progress=False)
    recorded = [json.loads(line) for line in (out / "eval" / "results.jsonl").read_text().splitlines()]
    assert [json.loads(json.dumps(r.result.outputs)) for r in result.records] == \
        [r["outputs"] for r in recorded[:100]]
    assert result.summary["total_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in recorded[:100]))


def test_a_second_run_resumes_the_compile_and_reports_the_same(demo):
    out, _ = demo
    report = json.loads((out / "report.json").read_text())
    again = CliRunner().invoke(app, ["demo", "--out", str(out)], terminal_width=160)
    assert again.exit_code == 0 and "(resumed)" in again.output
    assert json.loads((out / "report.json").read_text())["cascade"] == report["cascade"]
