"""`tandem demo`: compiles the OVERRULING cascade from the packaged 2,160-row file (real recorded
API answers, the real MiniLM judge: `TrainScorer(train_encoder=True)` then the certifying
`Calibrate`), evaluates it on the held-out half and writes the report, the per-example results and
the plot; a second run resumes the compile. The compiled artifact is `programs/cascade_compile.py`'s
program: it loads onto that code and answers identically.

One compile serves every test here: it is the suite's slowest piece of work (three epochs of the
MiniLM encoder on 810 training rows, a few minutes on 2 cores)."""

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

DATA = str(packaged_data("overruling_all.jsonl.gz"))
N_TEST = 1080


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])  # not a terminal: piped width
    assert result.exit_code == 0, result.output
    return out, result.output


def test_tandem_demo_prints_the_table_and_writes_report_results_and_plot(demo):
    out, output = demo
    report = json.loads((out / "report.json").read_text())
    cascade, best = report["cascade"], report["best_single"]
    # piped output keeps each table row on one line: the cascade's figures sit beside its name
    row = next(line for line in output.splitlines() if "compiled cascade" in line)
    assert f"{cascade['accuracy']:.3f}" in row and "gpt-4" in output
    _, _, test = splits(DATA)
    assert report["n_test"] == len(test) == N_TEST
    assert report["singles"] == single_models(test)  # recorded figures, recomputed independently
    assert best["model"] == "gpt-4"
    lines = (out / "eval" / "results.jsonl").read_text().splitlines()
    assert len(lines) == N_TEST
    scored = [json.loads(line) for line in lines]
    assert sum(r["score"] for r in scored) / N_TEST == cascade["accuracy"]
    assert abs(sum(r["cost_usd"] for r in scored) - cascade["cost_usd"]) < 1e-9
    # the win: GPT-4's accuracy (within one standard error) at a fraction of its cost
    assert cascade["accuracy"] >= best["accuracy"] - best["stderr"] and cascade["cost_fraction"] <= 0.2
    assert "compiled cascade beats gpt-4" in output or "compiled cascade matches gpt-4" in output
    assert "certified on 270 labelled rows: accuracy >= gpt_4's - 3 pt" in output
    # the test curve of every chain (what the plot draws) is in the report, cheapest first
    costs = [p["cost"] for p in report["test_curve"]]
    assert len(costs) > 3 and costs == sorted(costs)
    assert max(p["quality"] for p in report["test_curve"]) >= best["accuracy"]
    assert (out / "cost_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "compiled" / "program.json").is_file()


def test_the_judge_learned_and_the_chosen_chain_is_certified_against_gpt4(demo):
    out, _ = demo
    passes = json.loads((out / "compiled" / "report.json").read_text())["passes"]
    assert [p["name"] for p in passes] == ["train_scorer", "calibrate"]
    scorer = passes[0]["details"]["cascade/judge_0"]  # held-out slice of the trainset's pairs
    assert scorer["auc_after"] > 0.85 and scorer["auc_after"] > scorer["auc_before"] + 0.2, scorer
    (curve_file,) = (out / "compiled" / "curves").glob("*/curve.json")
    curve = json.loads(curve_file.read_text())
    promise = curve["promise"]
    # certified on the 270 calibration rows: at least GPT-4's accuracy less 3 points, at 90%
    assert promise["certified"] and promise["reference"] == "gpt_4"
    assert (promise["epsilon"], promise["delta"]) == (0.03, 0.1) and promise["bound"] <= 0.03
    assert promise["rows"]["labelled"] == 270 and promise["rows"]["unlabeled"] == 0
    assert curve["reference"]["quality"] == curve["best_single"]["quality"]
    assert curve["chosen"]["cost"] < curve["best_single"]["cost"]
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


def test_tandem_report_renders_the_demo_directory(demo):
    out, _ = demo
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "tandemlm.suite-results/1" and list(results["tasks"]) == ["overruling"]
    entry = results["tasks"]["overruling"]
    report = json.loads((out / "report.json").read_text())
    assert entry["cascade"]["accuracy"] == pytest.approx(report["cascade"]["accuracy"])
    assert entry["best_single"]["model"] == "gpt-4" and entry["n_test"] == N_TEST
    rendered = CliRunner().invoke(app, ["report", str(out)])
    assert rendered.exit_code == 0, rendered.output
    html = (out / "report.html").read_text()
    assert "overruling" in html and "gpt-4" in html and "<table>" in html
