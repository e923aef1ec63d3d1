"""What `evaluate` refuses up front (no examples, a field the pipeline reads missing from the data,
something that is not a metric), how a program spec's call is checked, and how failed examples
are counted and reported. Models are scripted test doubles (tandemlm.testing)."""

from __future__ import annotations

import csv
import json
import re
import textwrap
import uuid

import pytest
from rich.console import Console

from tandemlm.compose import LMNode, Pipeline
from tandemlm.evaluate import check_metric, evaluate, exact_match, load_metric, load_program
from tandemlm.runtime import ConfigError, EvaluationWarning, GenRequest, Model
from tandemlm.testing import chat_reply, request_field

ROWS = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"},
        {"question": "3+3", "answer": "6"}, {"question": "4+4", "answer": "8"}]


def _calculator(fail_on: set[str] = frozenset(), broken: str | None = None) -> Pipeline:
    """Sums right; the questions in `fail_on` fail alone; `broken`: every call raises that."""
    def reply(request: GenRequest) -> str:
        if broken is not None:
            raise RuntimeError(broken)
        return chat_reply(answer=sum(map(int, request_field(request, "question").split("+"))))

    model = Model("scripted", f"calc-{uuid.uuid4().hex}", name="calc", reply=reply,
                  fail=lambda r: request_field(r, "question") in fail_on)
    return Pipeline([LMNode("question -> answer", model=model, name="solve")], name="calculator")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- no examples -------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", "\n\n"])
def test_an_empty_data_file_is_refused_naming_it(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=rf"data file '{re.escape(str(path))}' has no examples"):
        evaluate(_calculator(), path, exact_match, progress=False)


def test_no_examples_from_a_list_or_a_zero_limit_is_refused():
    with pytest.raises(ConfigError, match=r"the data \(a list\) has no examples"):
        evaluate(_calculator(), [], exact_match, progress=False)
    with pytest.raises(ConfigError, match="limit=0 leaves no examples"):
        evaluate(_calculator(), ROWS, exact_match, limit=0, progress=False)


# -- fields the pipeline reads -----------------------------------------------------------------

def test_a_csv_without_a_column_the_pipeline_reads_is_refused_before_running(tmp_path):
    path = tmp_path / "dev.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "answer"])
        writer.writeheader()
        writer.writerow({"prompt": "1+1", "answer": "2"})
    pipe = _calculator()
    with pytest.raises(ConfigError) as info:
        evaluate(pipe, path, exact_match, progress=False)
    message = str(info.value)
    assert f"data file '{path}' lacks the input field(s) 'question'" in message
    assert "pipeline 'calculator'" in message and "its columns are: answer, prompt" in message
    assert pipe.nodes["solve"].model.backend.history == []  # nothing ran


def test_a_field_missing_from_some_examples_fails_those_alone(tmp_path):
    rows = [ROWS[0], {"answer": "4"}, ROWS[2]]
    result = evaluate(_calculator(), _write_jsonl(tmp_path / "d.jsonl", rows), exact_match,
                      progress=False)
    assert [r.error is None for r in result.records] == [True, False, True]
    assert "lacks input field(s) question" in result.records[1].error


# -- metrics -----------------------------------------------------------------------------------

def _pipeline_metric():
    return _calculator()


@pytest.mark.parametrize("metric, what", [
    (_pipeline_metric(), "is a Pipeline (a program), not a metric"),
    (3, "is a int, not a function"),
    (lambda prediction: True, "cannot be called as metric(example, prediction)"),
    (lambda example, prediction, trace, extra: True, "cannot be called as metric(example, prediction)"),
])
def test_what_is_not_a_metric_is_refused_before_running(metric, what):
    pipe = _calculator()
    with pytest.raises(ConfigError) as info:
        evaluate(pipe, ROWS, metric, progress=False)
    assert what in str(info.value)
    assert "a metric is a function (example, prediction[, trace]) -> number or bool" in str(info.value)
    assert pipe.nodes["solve"].model.backend.history == []


def test_metrics_of_every_accepted_shape_pass_the_check():
    class Scorer:
        def __call__(self, example, prediction, trace=None):
            return 1.0

    for metric in (exact_match, lambda ex, pred: True, lambda *args: 1, Scorer(), max):
        assert check_metric(metric) is metric
    assert evaluate(_calculator(), ROWS, lambda ex, pred: True, progress=False).score == 1.0


def test_load_metric_names_the_spec(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("THRESHOLD = 0.5\n\ndef one(example):\n    return 1\n")
    with pytest.raises(ConfigError, match=rf"metric '{re.escape(str(path))}:THRESHOLD' is a float"):
        load_metric(f"{path}:THRESHOLD")
    with pytest.raises(ConfigError, match=r"metric '.*:one' has the signature \(example\)"):
        load_metric(f"{path}:one")
    assert load_metric("tandemlm.evaluate.metrics:exact_match") is exact_match


# -- program specs -----------------------------------------------------------------------------

BUILDERS = '''
from tandemlm import LMNode, Model, Pipeline


def build(data="x.jsonl", size=3):
    return Pipeline([LMNode("question -> answer", model=Model("scripted", "b"))], name=f"p{size}")


def needs(data):
    return build(data)


def buggy(data="x"):
    return len(5)  # a TypeError inside the builder, not in the call


def nothing():
    return None
'''


@pytest.fixture()
def builders(tmp_path):
    path = tmp_path / "builders.py"
    path.write_text(textwrap.dedent(BUILDERS))
    return str(path)


def test_a_keyword_typo_names_the_accepted_parameters(builders):
    with pytest.raises(ConfigError) as info:
        load_program(f"{builders}:build(dat='y.jsonl')")
    message = str(info.value)
    assert f"program '{builders}:build(dat='y.jsonl')'" in message
    assert "unknown option(s) 'dat' (did you mean 'data'?)" in message
    assert "build() accepts: data, size" in message
    assert load_program(f"{builders}:build(size=5)").name == "p5"


def test_a_missing_required_argument_says_how_to_give_it(builders):
    with pytest.raises(ConfigError, match=r"needs\(\) needs option\(s\) data; give them like "
                                          r".*:needs\(data=\.\.\.\)"):
        load_program(f"{builders}:needs")


def test_a_type_error_inside_the_builder_is_not_taken_for_a_typo(builders):
    with pytest.raises(TypeError, match="has no len"):
        load_program(f"{builders}:buggy(data='y')")


def test_a_builder_returning_no_pipeline_is_a_config_error(builders):
    with pytest.raises(ConfigError, match=r"nothing\(\) returned a NoneType, not a tandemlm Pipeline"):
        load_program(f"{builders}:nothing")
    with pytest.raises(ConfigError, match=r"nothing\(\) returned a NoneType"):
        load_program(f"{builders}:nothing()")


# -- failures reported -------------------------------------------------------------------------

def test_when_every_example_fails_the_result_says_why():
    pipe = _calculator(broken="quota exceeded")
    with pytest.warns(EvaluationWarning, match="all 4 examples failed"):
        result = evaluate(pipe, ROWS, exact_match, progress=False)
    assert result.failure() == "all 4 examples failed"
    (common,) = result.error_counts()
    assert common[1] == 4 and "quota exceeded" in common[0]
    assert result.summary["errors"] == 4
    assert result.summary["error_counts"] == [{"error": common[0], "count": 4}]
    console = Console(record=True, width=200)
    result.print(console)
    text = console.export_text()
    assert "4 of 4 examples failed; most common error(s):" in text
    assert f"4 x {common[0]}" in text


def test_more_than_half_failed_is_a_failure_half_is_not():
    half = evaluate(_calculator(fail_on={"1+1", "2+2"}), ROWS, exact_match, progress=False)
    assert half.failure() is None and half.summary["errors"] == 2
    with pytest.warns(EvaluationWarning, match=r"3 of 4 examples failed \(more than 50%\)"):
        most = evaluate(_calculator(fail_on={"1+1", "2+2", "3+3"}), ROWS, exact_match,
                        progress=False)
    assert most.failure() == "3 of 4 examples failed (more than 50%)"
    clean = evaluate(_calculator(), ROWS, exact_match, progress=False)
    assert clean.failure() is None and clean.error_counts() == []
    console = Console(record=True, width=200)
    clean.print(console)
    assert "failed" not in console.export_text()
