"""The command line loads a compiled artifact onto code the user names (`DIR@PROGRAM`), or runs
the source it records only when told to (`--trust-source`, or "yes" on a terminal)."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

import tandemlm.cli as cli
from tandemlm.cli import app
from tandemlm.optimizers.specs import load_any_program
from tandemlm.runtime import ArtifactError

PROGRAM = '''
from tandemlm import LMNode, Model, Pipeline
from tandemlm.testing import chat_reply, request_field


def shout(request):
    """TEST DOUBLE: upper-cases the question."""
    return chat_reply(answer=request_field(request, "question").upper())


def build():
    return Pipeline([LMNode("question -> answer", model="small", name="solve")],
                    models={"small": Model("scripted", "cli-shout", reply=shout)}, name="shout")


def metric(example, prediction, trace=None):
    return prediction.answer == example.answer
'''


@pytest.fixture()
def compiled(tmp_path):
    """An artifact whose program.json names a source that would leave a mark if it ran."""
    (tmp_path / "prog.py").write_text(textwrap.dedent(PROGRAM))
    (tmp_path / "pwn.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nprogram = None\n")
    rows = "".join(json.dumps({"question": w, "answer": w.upper()}) + "\n" for w in ["owl", "fox"])
    (tmp_path / "data.jsonl").write_text(rows)
    program, out = f"{tmp_path / 'prog.py'}:build", tmp_path / "out"
    result = CliRunner().invoke(app, ["compile", program, "--train", str(tmp_path / "data.jsonl"),
                                      "--metric", f"{tmp_path / 'prog.py'}:metric", "--passes",
                                      "BootstrapDemos(k=1)", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "program.json").read_text())
    meta["source"] = f"{tmp_path / 'pwn.py'}:program"  # outside the checksummed state
    (out / "program.json").write_text(json.dumps(meta))
    return tmp_path, program, out


def said(result) -> str:
    """The command's output with line wrapping undone."""
    return " ".join(result.output.split())


def eval_args(tmp_path, target, *extra):
    return ["eval", target, "--data", str(tmp_path / "data.jsonl"), "--metric",
            f"{tmp_path / 'prog.py'}:metric", *extra]


def test_eval_of_a_bare_artifact_names_its_source_and_runs_nothing(compiled):
    tmp_path, _, out = compiled
    result = CliRunner().invoke(app, eval_args(tmp_path, str(out)), terminal_width=300)
    assert result.exit_code == 2, result.output
    assert "never runs code it names" in said(result) and "pwn.py:program" in said(result)
    assert "--trust-source" in said(result)
    assert not (tmp_path / "ran").exists()


def test_eval_loads_the_artifact_onto_the_code_the_user_names(compiled):
    tmp_path, program, out = compiled
    result = CliRunner().invoke(app, eval_args(tmp_path, f"{out}@{program}"), terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "1.000" in result.output and not (tmp_path / "ran").exists()


def test_trust_source_runs_the_recorded_source(compiled):
    tmp_path, _, out = compiled
    result = CliRunner().invoke(app, eval_args(tmp_path, str(out), "--trust-source"),
                                terminal_width=300)
    assert (tmp_path / "ran").exists()  # the user said so; pwn.py's `program` is no Pipeline
    assert result.exit_code == 2 and "not a tandemlm Pipeline" in said(result)


def test_a_terminal_user_is_asked_and_no_means_no(compiled):
    _, _, out = compiled
    asked = []
    with pytest.raises(ArtifactError, match="never runs code it names"):
        load_any_program(str(out), confirm=lambda source: asked.append(source) or False)
    assert asked and asked[0].endswith("pwn.py:program")


def test_serve_refuses_a_bare_artifact(compiled, monkeypatch):
    tmp_path, _, out = compiled
    monkeypatch.setattr(cli, "_interactive", lambda: False, raising=False)
    result = CliRunner().invoke(app, ["serve", "--program", f"shout={out}"], terminal_width=300)
    assert result.exit_code == 2 and "never runs code it names" in said(result)
    assert not (tmp_path / "ran").exists()


def test_graph_takes_an_artifact_like_eval(compiled):
    tmp_path, program, out = compiled
    result = CliRunner().invoke(app, ["graph", f"{out}@{program}"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("flowchart LR") and 'solve["solve<br/>small"]' in result.output
    refused = CliRunner().invoke(app, ["graph", str(out)])  # bare: names its source, runs nothing
    assert refused.exit_code == 2 and not (tmp_path / "ran").exists()


def test_compile_continues_from_an_artifact_loaded_onto_its_code(compiled):
    tmp_path, program, out = compiled
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["compile", f"{out}@{program}", "--train",
                                      str(tmp_path / "data.jsonl"), "--metric",
                                      f"{tmp_path / 'prog.py'}:metric", "--passes",
                                      "BootstrapDemos(k=1)", "--out", str(again)],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    assert json.loads((again / "program.json").read_text())["source"] == program
    assert f"tandem eval {again}@{program}" in said(result) and not (tmp_path / "ran").exists()
