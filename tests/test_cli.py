"""The `tandem` command, end to end on the shipped replay program."""

import json
from pathlib import Path

from typer.testing import CliRunner

from tandemlm.cli import app

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = str(ROOT / "programs" / "replay_single.py")
DATA = str(ROOT / "tandemlm" / "data" / "overruling_excerpt.jsonl")


def test_eval_prints_table_and_writes_results(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", f"{PROGRAM}:program", "--data", DATA, "--metric",
                                      f"{PROGRAM}:metric", "--limit", "40", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "gpt-3.5-turbo" in result.output and "$" in result.output
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert summary["n"] == len(records) == 40
    # The recorded model's real accuracy and cost on these rows, read straight from the data.
    rows = [json.loads(line) for line in Path(DATA).read_text().splitlines()[:40]]
    truth = [r["models"]["gpt-3.5-turbo"] for r in rows]
    assert summary["metric"]["mean"] == sum(t["correct"] for t in truth) / 40
    cost = summary["usage"]["gpt-3.5-turbo"]["cost_usd"]
    assert abs(cost - sum(t["cost_usd"] for t in truth)) < 1e-12


def test_eval_bad_program_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["eval", f"{PROGRAM}:nope", "--data", DATA,
                                      "--metric", f"{PROGRAM}:metric"])
    assert result.exit_code == 2
    assert "has no attribute 'nope'" in result.output


def test_eval_missing_data_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["eval", f"{PROGRAM}:program", "--data",
                                      str(tmp_path / "missing.jsonl"), "--metric", f"{PROGRAM}:metric"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_graph_prints_mermaid():
    result = CliRunner().invoke(app, ["graph", f"{PROGRAM}:program"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("flowchart LR")
    assert "solve" in result.output and "-->|prompt| solve" in result.output
