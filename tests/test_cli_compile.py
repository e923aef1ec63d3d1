"""`tandem compile`, then `tandem eval` on the artifact it wrote.

The program file holds a scripted TEST DOUBLE for a small model that upper-cases a word only when
a demo in its prompt shows an upper-case answer, so only a compile that attached demos from
passing runs lifts the metric that `tandem eval` reads back.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from tandemlm.cli import app

PROGRAM = '''
from tandemlm import LMNode, Model, Pipeline
from tandemlm.testing import chat_reply, demo_values, request_field


def mimic(request):
    """TEST DOUBLE: upper-cases the word only if a demo answer is an upper-case word."""
    word = request_field(request, "question")
    learned = any(a.isalpha() and a.isupper() for a in demo_values(request, "answer"))
    return chat_reply(answer=word.upper() if learned else word)


def build():
    return Pipeline([LMNode("question -> answer", model="small", name="solve")],
                    models={"small": Model("scripted", "cli-mimic", reply=mimic)}, name="upper")


def metric(example, prediction, trace=None):
    return prediction.answer == example.answer
'''


def write_rows(path, words):
    path.write_text("".join(json.dumps({"question": w, "answer": w.upper()}) + "\n" for w in words))
    return str(path)


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "prog.py").write_text(textwrap.dedent(PROGRAM))
    return {"program": f"{tmp_path / 'prog.py'}:build", "metric": f"{tmp_path / 'prog.py'}:metric",
            "train": write_rows(tmp_path / "train.jsonl", ["NASA", "IBM", "FIFA", "cat", "dog"]),
            "val": write_rows(tmp_path / "val.jsonl", ["tree", "lamp", "owl"]),
            "out": str(tmp_path / "out")}


def invoke(*args):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def compile_args(p, *extra):
    return ["compile", p["program"], "--train", p["train"], "--metric", p["metric"],
            "--out", p["out"], *extra]


def test_compile_then_eval_the_artifact(project, tmp_path):
    result = invoke(*compile_args(project, "--val", project["val"], "--passes",
                                  "BootstrapDemos(k=2)", "--seed", "1"))
    assert result.exit_code == 0, result.output
    assert "bootstrap_demos" in result.output and "valset" in result.output
    assert "0.000" in result.output and "1.000" in result.output
    assert f"{project['out']}/program.json" in result.output
    program = json.loads((tmp_path / "out" / "program.json").read_text())
    assert program["source"] == project["program"]
    assert [p["config"]["k"] for p in program["passes"]] == [2]

    for target, mean in [(project["out"], 1.0), (project["program"], 0.0)]:
        runs = tmp_path / f"eval-{mean}"
        result = invoke("eval", target, "--data", project["val"], "--metric", project["metric"],
                        "--out", str(runs))
        assert result.exit_code == 0, result.output
        assert json.loads((runs / "summary.json").read_text())["metric"]["mean"] == mean


def test_compile_resumes_in_the_same_out_dir(project):
    assert invoke(*compile_args(project)).exit_code == 0
    result = invoke(*compile_args(project))
    assert result.exit_code == 0, result.output
    assert "(resumed)" in result.output and "trainset" in result.output


def test_no_cache_keeps_no_call_file(project, tmp_path):
    result = invoke(*compile_args(project, "--no-cache"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "program.json").is_file()
    assert not (tmp_path / "out" / "calls.sqlite").exists()


def test_unknown_pass_lists_the_known_ones(project):
    result = invoke(*compile_args(project, "--passes", "Bootstrap(k=2)"))
    assert result.exit_code == 2
    assert "unknown pass 'Bootstrap'" in result.output and "BootstrapDemos" in result.output


def test_a_failing_pass_is_a_clear_error(project):
    project["train"] = project["val"]  # nothing passes: no demo to take
    result = invoke(*compile_args(project))
    assert result.exit_code == 2
    assert "none of the 3 training examples passed the metric" in result.output


def test_eval_of_a_directory_without_a_program(project, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("eval", str(tmp_path / "empty"), "--data", project["val"], "--metric",
                    project["metric"])
    assert result.exit_code == 2 and "without a program.json" in result.output
