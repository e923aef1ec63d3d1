"""`tandem eval` on bad input: one line saying what to fix, a non-zero exit, nothing lost — for a
data file in another encoding, a metric returning NaN, a disk that fills up under --out — and
names from a program or data shown on the terminal, never obeyed (escape sequences, markup).
The program is a scripted TEST DOUBLE (tandemlm.testing); the files are real, in tmp_path."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli_data import rows
from tandemlm.cli import app
from tandemlm.evaluate.results_dir import read_records
from tandemlm.testing import fill_disk_after

PROGRAM = '''
from tandemlm import LMNode, Model, Pipeline
from tandemlm.testing import chat_reply, request_field


def build(model_name="toy", program_name="toy"):
    # TEST DOUBLE: upper-cases the question
    model = Model("scripted", "toy", name=model_name, reply=lambda r: chat_reply(
        answer=request_field(r, "question").upper()))
    return Pipeline([LMNode("question -> answer", model=model, name="solve")], name=program_name)


def metric(example, prediction, trace=None):
    return prediction.answer == example.answer


def nan_metric(example, prediction, trace=None):
    return float("nan") if example.question == "w5" else 1.0


program = build()
'''


@pytest.fixture()
def toy(tmp_path):
    (tmp_path / "toy.py").write_text(PROGRAM)
    return str(tmp_path / "toy.py")


def run(*args):
    result = CliRunner().invoke(app, list(args))
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output and len(errors) <= 1, result.output
    return result, errors[0] if errors else ""


def test_a_data_file_in_latin1_is_one_line_naming_it_and_encoding_reads_it(tmp_path, toy):
    data = tmp_path / "dev.csv"
    data.write_bytes("question,answer\ntea,TEA\ncafé,CAFÉ\n".encode("latin-1"))
    result, error = run("eval", f"{toy}:program", "--data", str(data), "--metric", f"{toy}:metric")
    assert result.exit_code == 2
    assert error.startswith(f"error: data file '{data}', line 3: byte 27 (0xe9) is not valid utf-8; "
                            f"re-encode the file as UTF-8, or give its encoding (e.g. --encoding "
                            f"latin-1")
    result, error = run("eval", f"{toy}:program", "--data", str(data), "--metric", f"{toy}:metric",
                        "--encoding", "latin-1")
    assert result.exit_code == 0 and not error, result.output


def test_a_metric_returning_nan_is_one_line_naming_it_and_the_records_stay(tmp_path, toy):
    out = tmp_path / "run"
    data = rows(tmp_path / "d.jsonl", [f"w{i}" for i in range(8)])
    result, error = run("eval", f"{toy}:program", "--data", data, "--metric", f"{toy}:nan_metric",
                        "--out", str(out), "--batch-size", "2")
    assert result.exit_code == 2
    assert error == ("error: metric 'nan_metric' returned nan for example 5; a metric must return "
                     "a finite number or bool. Fix the metric (e.g. return 0.0 where it cannot "
                     "score an example)")
    assert [r["index"] for r in read_records(out / "results.jsonl")] == [0, 1, 2, 3, 4]


def test_a_full_disk_is_one_line_saying_what_was_kept_and_the_rerun_resumes(tmp_path, toy,
                                                                            monkeypatch):
    out = tmp_path / "run"
    data = rows(tmp_path / "d.jsonl", [f"w{i}" for i in range(8)])
    args = ["eval", f"{toy}:program", "--data", data, "--metric", f"{toy}:metric", "--out",
            str(out), "--batch-size", "2"]
    fill_disk_after(monkeypatch, 3)
    result, error = run(*args)
    assert result.exit_code == 2
    results = out / "results.jsonl"
    assert error.startswith(f"error: could not write {results}: No space left on device (ENOSPC); "
                            f"3 of 8 example records are kept in {results}.")
    assert error.endswith("it resumes from them and runs the other 5")
    assert len(read_records(results)) == 3
    result, error = run(*args)
    assert result.exit_code == 0 and "3 of 8 examples already done" in result.output
    assert json.loads((out / "summary.json").read_text())["resumed"] == 3


def test_names_from_the_program_and_the_data_are_shown_not_obeyed(tmp_path, toy):
    data = rows(tmp_path / "d.jsonl", ["cat"])
    program = f"{toy}:build(model_name='gpt\\x1b[31mred\\r\\x07', program_name='toy[bold]\\x1b]0;x')"
    result, error = run("eval", program, "--data", data, "--metric", f"{toy}:metric")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\r" not in result.output and "\x07" not in result.output
    assert "gpt\\x1b[31mred\\x0d\\x07" in result.output
    assert "toy[bold]\\x1b]0;x: metric = 1.000" in result.output  # markup shown, not applied

    # an error naming such a file: one line, shown as written (rich used to choke on "[/]")
    missing = tmp_path / "a[/]\x1b[2Jb.jsonl"
    result, error = run("eval", f"{toy}:program", "--data", str(missing), "--metric",
                        f"{toy}:metric")
    assert result.exit_code == 2 and "\x1b" not in result.output
    assert error == f"error: data file '{tmp_path}/a[/]\\x1b[2Jb.jsonl' does not exist"
