"""`tandem compile`, then `tandem eval` on the artifact it wrote.

The program file holds a scripted TEST DOUBLE for a small model that upper-cases a word only when
a demo in its prompt shows an upper-case answer, so only a compile that attached demos from
passing runs lifts the metric that `tandem eval` reads back.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

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

    # DIR@PROGRAM: the artifact loaded onto the code named (a bare DIR would run the source
    # the artifact records, which needs --trust-source)
    for target, mean in [(f"{project['out']}@{project['program']}", 1.0), (project["program"], 0.0)]:
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


def test_a_full_disk_is_one_line_and_the_finished_passes_resume(project, tmp_path, monkeypatch):
    import errno
    import importlib

    compiling = importlib.import_module("tandemlm.optimizers.compile")  # the module, not the function

    def full(pipeline, out, **kwargs):  # the disk fills as program.json is written
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "program.json"))

    saving = compiling.save_program
    monkeypatch.setattr(compiling, "save_program", full)
    result = invoke(*compile_args(project, "--passes", "BootstrapDemos(k=2)"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = said(result)
    assert f"could not write {project['out']}/program.json: No space left on device (ENOSPC)" in line
    assert "kept in" in line and "resume" in line
    assert list((tmp_path / "out" / "passes").glob("01-*.json"))
    monkeypatch.setattr(compiling, "save_program", saving)
    again = invoke(*compile_args(project, "--passes", "BootstrapDemos(k=2)"))
    assert again.exit_code == 0 and "(resumed)" in again.output, again.output
    assert (tmp_path / "out" / "program.json").is_file()


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


def said(result):
    return " ".join(result.output.split())  # unwrapped, for messages


def test_compile_on_an_empty_trainset_fails_naming_the_file(project, tmp_path):
    project["train"] = write_rows(tmp_path / "empty.jsonl", [])
    result = invoke(*compile_args(project))
    assert result.exit_code == 2
    assert f"training data file '{project['train']}' has no examples" in said(result)


def test_data_files_in_latin1_fail_naming_the_line_and_compile_with_encoding(project, tmp_path):
    for split, words in (("train", ["CAFÉ", "NAÏVE", "FIFA", "crème", "dog"]), ("val", ["thé"])):
        project[split] = str(tmp_path / f"{split}-latin1.jsonl")
        Path(project[split]).write_bytes("".join(
            json.dumps({"question": w, "answer": w.upper()}, ensure_ascii=False) + "\n"
            for w in words).encode("latin-1"))
    result = invoke(*compile_args(project, "--val", project["val"]))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"data file '{project['train']}', line 1: byte 17 (0xc9) is not valid utf-8" in said(result)
    result = invoke(*compile_args(project, "--val", project["val"], "--encoding", "latin-1"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["split"] == "val" and report["metric_after"] == 1.0  # "thé" -> "THÉ", learned


def test_an_empty_valset_given_on_purpose_is_an_error(project, tmp_path):
    empty = write_rows(tmp_path / "empty_val.jsonl", [])
    result = invoke(*compile_args(project, "--val", empty))
    assert result.exit_code == 2
    assert f"validation data file '{empty}' has no examples" in said(result)
    assert "leave the valset out (no --val)" in said(result)
    assert not (tmp_path / "out" / "program.json").exists()


def test_compile_with_a_program_as_metric_is_refused(project):
    project["metric"] = project["program"]
    result = invoke(*compile_args(project))
    assert result.exit_code == 2
    assert "a metric is a function (example, prediction[, trace])" in said(result)


CASCADE = '''
from tandemlm import LMNode, Model, Pipeline, Step
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.testing import chat_reply

STEP_FAILS = True


def broken(question):
    if STEP_FAILS:
        raise RuntimeError("the retriever is down")
    return question


def build():
    # TEST DOUBLES: scripted models behind a step; either the step or every model call fails
    def model(name):
        return Model("scripted", f"cli-{name}-{STEP_FAILS}", reply=chat_reply(answer="x", score=0.9),
                     fail=lambda r: not STEP_FAILS)
    stages = [Stage(LMNode("query -> answer", model=model("cheap"), name="cheap"),
                    judge=LMNode("query, answer -> score: float", model=model("judge"),
                                 name="judge"), threshold=0.5),
              Stage(LMNode("query -> answer", model=model("strong"), name="strong"))]
    return Pipeline([Step(broken, inputs="question", outputs="query", name="retrieve"),
                     Cascade(stages)], name="cascade")


def metric(example, prediction, trace=None):
    return prediction.answer == example.answer
'''


@pytest.mark.parametrize("step_fails, why, common", [
    (True, "no example reached the cascade",
     "the most common error (5 of 5 examples): node 'retrieve': RuntimeError: the retriever is down"),
    (False, "every stage failed on each example that reached the cascade",
     "the most common error (10 of 10 stage runs): backend error: scripted failure"),
])
def test_calibrate_on_examples_that_all_failed_says_why(project, tmp_path, step_fails, why, common):
    code = textwrap.dedent(CASCADE).replace("STEP_FAILS = True", f"STEP_FAILS = {step_fails}")
    (tmp_path / "cascade.py").write_text(code)
    project.update(program=f"{tmp_path / 'cascade.py'}:build",
                   metric=f"{tmp_path / 'cascade.py'}:metric")
    result = invoke(*compile_args(project, "--passes", "Calibrate(match=1.0)"))
    assert result.exit_code == 2, result.output
    text = said(result)
    assert "calibrate cascade: no training example produced a usable stage run" in text
    assert why in text and common in text


AGREEING = '''
from tandemlm import LMNode, Model, Pipeline
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.testing import chat_reply


def build():
    # TEST DOUBLES: a cheap and a strong scripted model that always give the same answer, the
    # strong one priced; a judge sure of the cheap one
    def model(name, price=None):
        return Model("scripted", f"cli-agree-{name}", reply=chat_reply(answer="x", score=0.9),
                     price=price)
    stages = [Stage(LMNode("question -> answer", model=model("cheap"), name="cheap"),
                    judge=LMNode("question, answer -> score: float", model=model("judge"),
                                 name="judge"), threshold=0.5),
              Stage(LMNode("question -> answer", model=model("strong", (100.0, 100.0)),
                           name="strong"))]
    return Pipeline([Cascade(stages)], name="agreeing")


def metric(example, prediction, trace=None):
    return prediction.answer == "x"
'''


def test_compile_certifies_on_unlabeled_inputs_and_states_the_promise(project, tmp_path):
    (tmp_path / "agree.py").write_text(textwrap.dedent(AGREEING))
    project.update(program=f"{tmp_path / 'agree.py'}:build", metric=f"{tmp_path / 'agree.py'}:metric")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"question": f"q{i}"}) + "\n" for i in range(500)))
    result = invoke(*compile_args(project, "--passes", "Calibrate(reference='strong')",
                                  "--unlabeled", str(inputs)))
    assert result.exit_code == 0, result.output
    text = said(result)
    # 5 labelled rows could never certify a saving; 500 inputs on which the cheap model gives
    # strong's answer do, and the CLI states the promise
    assert "cascade: certified on 5 labelled + 500 unlabeled rows: accuracy >= strong's - 1 pt" in text
    assert "cheaper than strong" in text
    details = json.loads((tmp_path / "out" / "report.json").read_text())["passes"][0]["details"]
    assert details["cascade"]["promise"]["rows"]["unlabeled"] == 500
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused = invoke(*compile_args(project, "--passes", "Calibrate", "--unlabeled", str(empty)))
    assert refused.exit_code == 2
    assert "unlabeled inputs" in said(refused) and "has no examples" in said(refused)
