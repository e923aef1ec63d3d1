"""The `tandem` command, end to end on the shipped replay program, and `tandem eval` on a scripted
test-double program: what it refuses, how it fails, interrupts and resumes."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_data import rows
from tandemlm.cli import app
from tandemlm.evaluate import load_object
from tandemlm.testing import request_field

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


# -- refused up front, failures, interrupts and resume ----------------------------------------

TOY = '''
import os
from pathlib import Path

from tandemlm import LMNode, Model, Pipeline
from tandemlm.testing import chat_reply, request_field


def build(model_id="toy"):
    # TEST DOUBLE: upper-cases the question; questions starting with "bad" fail
    model = Model("scripted", model_id, reply=lambda r: chat_reply(answer=request_field(
        r, "question").upper()), fail=lambda r: request_field(r, "question").startswith("bad"))
    return Pipeline([LMNode("question -> answer", model=model, name="solve")], name="toy")


def metric(example, prediction, trace=None):
    # TEST DOUBLE for a Ctrl-C: a marker file makes the metric raise KeyboardInterrupt once.
    marker = Path(os.environ["TOY_MARKER"])
    if marker.exists() and marker.read_text() == example.question:
        marker.unlink()
        raise KeyboardInterrupt
    return prediction.answer == example.answer


program = build()
'''


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy.py").write_text(TOY)
    monkeypatch.setenv("TOY_MARKER", str(tmp_path / "ctrl-c"))
    return str(tmp_path / "toy.py")


def run(*args):
    result = CliRunner().invoke(app, list(args), terminal_width=240)
    return result, " ".join(result.output.split())  # unwrapped, for messages


def test_eval_of_an_empty_data_file_fails_naming_it(tmp_path, toy):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result, said = run("eval", f"{toy}:program", "--data", str(empty), "--metric", f"{toy}:metric")
    assert result.exit_code == 2
    assert f"data file '{empty}' has no examples" in said and "0 examples" not in said


def test_eval_of_a_csv_without_the_input_column_fails_naming_it(tmp_path, toy):
    data = tmp_path / "dev.csv"
    data.write_text("prompt,answer\ncat,CAT\n")
    result, said = run("eval", f"{toy}:program", "--data", str(data), "--metric", f"{toy}:metric")
    assert result.exit_code == 2
    assert f"data file '{data}' lacks the input field(s) 'question'" in said
    assert "its columns are: answer, prompt" in said


def test_eval_with_a_pipeline_as_metric_is_refused(tmp_path, toy):
    data = rows(tmp_path / "d.jsonl", ["cat"])
    result, said = run("eval", f"{toy}:program", "--data", data, "--metric", f"{toy}:program")
    assert result.exit_code == 2
    assert f"metric '{toy}:program' is a Pipeline" in said
    assert "a metric is a function (example, prediction[, trace])" in said


def test_eval_with_a_keyword_typo_in_the_program_is_a_clear_error(tmp_path, toy):
    data = rows(tmp_path / "d.jsonl", ["cat"])
    result, said = run("eval", f"{toy}:build(model_di='x')", "--data", data, "--metric",
                       f"{toy}:metric")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "unknown option(s) 'model_di' (did you mean 'model_id'?); build() accepts: model_id" in said


def test_eval_where_every_example_fails_says_why_and_exits_1(tmp_path, toy):
    out = tmp_path / "run"
    data = rows(tmp_path / "d.jsonl", ["bad1", "bad2", "bad3"])
    result, said = run("eval", f"{toy}:program", "--data", data, "--metric", f"{toy}:metric",
                       "--out", str(out))
    assert result.exit_code == 1
    assert "3 of 3 examples failed; most common error(s):" in said and "scripted failure" in said
    assert "error: all 3 examples failed" in said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 3 and summary["error_counts"][0]["count"] == 3


def test_eval_where_more_than_half_fail_exits_1_and_half_does_not(tmp_path, toy):
    most = rows(tmp_path / "most.jsonl", ["bad1", "bad2", "cat"])
    result, said = run("eval", f"{toy}:program", "--data", most, "--metric", f"{toy}:metric")
    assert result.exit_code == 1 and "2 of 3 examples failed (more than 50%)" in said
    half = rows(tmp_path / "half.jsonl", ["bad1", "cat"])
    result, said = run("eval", f"{toy}:program", "--data", half, "--metric", f"{toy}:metric")
    assert result.exit_code == 0 and "1 of 2 examples failed" in said


def test_eval_interrupted_keeps_records_and_the_rerun_resumes(tmp_path, toy):
    out = tmp_path / "run"
    words = [f"w{i}" for i in range(8)]
    data = rows(tmp_path / "d.jsonl", words)
    (tmp_path / "ctrl-c").write_text("w5")
    args = ["eval", f"{toy}:program", "--data", data, "--metric", f"{toy}:metric", "--out",
            str(out), "--batch-size", "2"]
    result, said = run(*args)
    assert result.exit_code == 130, result.output
    # w4 was scored, and so written, before the Ctrl-C while scoring w5
    assert "interrupted after 5 of 8 examples" in said and f"{out}/results.jsonl" in said
    done = [json.loads(line)["index"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert done == [0, 1, 2, 3, 4]

    result, said = run(*args)
    assert result.exit_code == 0, result.output
    assert "resuming from" in said and "5 of 8 examples already done" in said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 8 and summary["resumed"] == 5 and summary["metric"]["mean"] == 1.0
    model = load_object(f"{toy}:program").nodes["solve"].model  # the very object both runs used
    asked = [request_field(r, "question") for r in model.backend.history]
    assert asked == words[:6] + words[5:]  # the re-run ran only w5 (unscored) and the rest

    result, said = run(*args, "--fresh")
    assert result.exit_code == 0 and "resuming" not in said
    assert json.loads((out / "summary.json").read_text())["resumed"] == 0


def test_version_prints_the_installed_version_and_exits():
    from importlib.metadata import version

    import tandemlm

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"tandemlm {version('tandemlm')}" == f"tandemlm {tandemlm.__version__}"


def test_graph_writes_html_png_and_markdown(tmp_path):
    for name in ("g.html", "g.png", "g.md", "g.mmd"):
        result = CliRunner().invoke(app, ["graph", f"{PROGRAM}:program", "--out",
                                          str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    page = (tmp_path / "g.html").read_text()
    assert '<pre class="mermaid">flowchart LR' in page and "mermaid.initialize" in page
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "g.md").read_text().count("```") == 2
    bad = CliRunner().invoke(app, ["graph", f"{PROGRAM}:program", "--out", str(tmp_path / "g.svg")])
    assert bad.exit_code == 2 and ".html, .png" in bad.output


def test_help_shows_flags_as_flags():
    """typer's help gives options a type column; a flag must not read as taking a value."""
    for command in (["suite", "--help"], ["compile", "--help"], ["--help"]):
        result = CliRunner().invoke(app, command, terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output and "--help" in result.output
    assert "<path>" in CliRunner().invoke(app, ["suite", "--help"], terminal_width=200).output
