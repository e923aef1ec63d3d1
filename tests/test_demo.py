"""`tandem demo`: compiles the OVERRULING cascade from the packaged excerpt (real recorded API
answers, the real MiniLM judge), evaluates it on the held-out half and writes the report, the
per-example results and the plot; a second run resumes the compile."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tandemlm.cli import app
from tandemlm.suites.demo import single_models
from tandemlm.suites.overruling import splits
from tandemlm.evaluate import packaged_data


def test_tandem_demo_prints_the_table_and_writes_report_results_and_plot(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out)], terminal_width=160)
    assert result.exit_code == 0, result.output
    assert "compiled cascade" in result.output and "gpt-4" in result.output
    report = json.loads((out / "report.json").read_text())
    _, _, test = splits(packaged_data("overruling_excerpt.jsonl"))
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
    again = CliRunner().invoke(app, ["demo", "--out", str(out)], terminal_width=160)
    assert again.exit_code == 0 and "(resumed)" in again.output
    assert json.loads((out / "report.json").read_text())["cascade"] == report["cascade"]
