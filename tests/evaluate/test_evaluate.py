"""Data loading, `evaluate()` (score, stderr, error isolation, abort, files) and `load_object`."""

from __future__ import annotations

import csv
import json
import math
import random
import re
import statistics
import textwrap
import uuid

import dspy
import pytest

from tandemlm.compose import LMNode, Pipeline, Step
from tandemlm.evaluate import bootstrap_stderr, evaluate, exact_match, load_data, load_object
from tandemlm.runtime import ConfigError, EvaluationAborted, GenRequest, Model

ROWS = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"},
        {"question": "3+3", "answer": "6"}, {"question": "4+4", "answer": "9"}]


# -- data --------------------------------------------------------------------------------------

def test_load_jsonl_skips_blank_lines_and_limits(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(ROWS[0]), json.dumps(ROWS[1]), "", json.dumps(ROWS[2])]
    path.write_text("\n".join(lines) + "\n")
    assert load_data(path) == ROWS[:3]
    assert load_data(str(path), limit=2) == ROWS[:2]


def test_load_json_csv_dicts_and_examples(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    with (tmp_path / "d.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(ROWS)
    examples = [dspy.Example(**r).with_inputs("question") for r in ROWS]
    assert load_data(tmp_path / "d.json") == ROWS
    assert load_data(tmp_path / "d.csv") == ROWS
    assert load_data(tmp_path / "d.csv", limit=1) == ROWS[:1]
    assert load_data(ROWS, limit=3) == ROWS[:3]
    assert load_data(examples) == ROWS
    assert load_data(iter(examples), limit=2) == ROWS[:2]


def test_loaded_dicts_are_copies():
    rows = [dict(r) for r in ROWS]
    loaded = load_data(rows)
    loaded[0]["question"] = "changed"
    assert rows[0]["question"] == "1+1"


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "2+2",\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:2: not valid JSON"):
        load_data(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(ConfigError, match=r":2: each line must be a JSON object"):
        load_data(path)


def test_bad_sources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_data(tmp_path / "missing.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown format '.txt'"):
        load_data(tmp_path / "d.txt")
    (tmp_path / "d.json").write_text(json.dumps({"question": "not a list"}))
    with pytest.raises(ConfigError, match="must hold a list of objects"):
        load_data(tmp_path / "d.json")
    with pytest.raises(ConfigError, match="got int"):
        load_data([1, 2])


def test_malformed_json_file_is_a_config_error(tmp_path):
    (tmp_path / "d.json").write_text('[{"question": "1+1"')
    with pytest.raises(ConfigError, match="d.json"):
        load_data(tmp_path / "d.json")


# -- evaluate ----------------------------------------------------------------------------------

def _question(request: GenRequest) -> str:
    return re.search(r"\[\[ ## question ## \]\]\n(.*?)\n\n", request.messages[-1]["content"],
                     re.S).group(1)


def _sum(request: GenRequest) -> str:
    total = sum(map(int, _question(request).split("+")))
    return f"[[ ## answer ## ]]\n{total}\n\n[[ ## completed ## ]]"


def _calculator(fail_on: set[str] = frozenset()) -> tuple[Pipeline, Model]:
    """One LM node that answers sums correctly (so '4+4' with gold '9' scores 0)."""
    model = Model("scripted", f"calc-{uuid.uuid4().hex}", name="calc", price=(1.0, 2.0),
                  reply=_sum,
                  fail=lambda r: _question(r) in fail_on)
    pipe = Pipeline([LMNode("question -> answer", model=model, name="solve"),
                     Step(lambda answer: len(answer), inputs="answer", outputs="length",
                          name="measure")], name="calculator")
    return pipe, model


def test_mean_score_and_bootstrap_stderr():
    rows = [{"question": f"{i}+{i}", "answer": str(2 * i if i % 3 else -1)} for i in range(30)]
    pipe, model = _calculator()
    result = evaluate(pipe, rows, exact_match, progress=False, batch_size=8)
    scores = [r.score for r in result.records]
    assert scores == [0.0 if i % 3 == 0 else 1.0 for i in range(30)]
    assert result.score == pytest.approx(20 / 30)
    stderr = result.summary["metric"]["stderr"]
    assert stderr == bootstrap_stderr(scores)  # the same seeded bootstrap
    # ... which estimates the analytic standard error of a mean of 0/1 scores.
    analytic = statistics.pstdev(scores) / math.sqrt(len(scores))
    assert stderr == pytest.approx(analytic, rel=0.15)
    assert model.backend.batches == [8, 8, 8, 6]


def test_bootstrap_stderr_matches_a_direct_computation():
    values = [0.0, 1.0, 1.0, 0.5, 0.25, 1.0, 0.0]
    rng = random.Random(3)
    means = [statistics.fmean(rng.choices(values, k=len(values))) for _ in range(200)]
    assert bootstrap_stderr(values, resamples=200, seed=3) == pytest.approx(statistics.stdev(means))
    assert bootstrap_stderr([1.0]) is None
    assert bootstrap_stderr([1.0, 1.0, 1.0]) == 0.0


def test_a_failing_example_and_a_raising_metric_do_not_sink_the_evaluation():
    def picky(example, prediction, trace=None):
        if example.question == "3+3":
            raise KeyError("no gold for this one")
        return exact_match(example, prediction)

    pipe, _ = _calculator(fail_on={"2+2"})
    result = evaluate(pipe, ROWS, picky, progress=False)
    assert [r.score for r in result.records] == [1.0, 0.0, 0.0, 0.0]
    assert [r.error is None for r in result.records] == [True, False, False, True]
    assert "scripted failure" in result.records[1].error
    assert result.records[2].error == "metric raised KeyError: 'no gold for this one'"
    assert result.summary["errors"] == 2
    assert result.score == pytest.approx(0.25)


def test_a_metric_returning_a_non_number_stops_the_evaluation_naming_it():
    # not one example's failure: the metric is broken, on every example it returns that for
    # (tests/evaluate/test_bad_input.py: NaN, infinity, None, and the records kept)
    pipe, _ = _calculator()
    with pytest.raises(ConfigError, match=r"metric '\S*<lambda>' returned 'yes' for example 0; "
                                          r"a metric must return a finite number or bool"):
        evaluate(pipe, ROWS[:2], lambda e, p, trace=None: "yes", progress=False)


def test_max_errors_exceeded_aborts_and_writes_partial_results(tmp_path):
    rows = [{"question": f"{i}+0", "answer": str(i)} for i in range(10)]
    pipe, model = _calculator(fail_on={"1+0", "2+0", "3+0"})
    out = tmp_path / "run"
    with pytest.raises(EvaluationAborted) as info:
        evaluate(pipe, rows, exact_match, batch_size=2, max_errors=2, out=out, progress=False)
    message = str(info.value)
    assert "3 examples failed (max_errors=2)" in message
    assert "example 1" in message and str(out) in message
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]  # two chunks of two, then it stopped
    assert [r["error"] is not None for r in records] == [False, True, True, True]
    assert json.loads((out / "summary.json").read_text())["n"] == 4
    assert model.backend.batches == [2, 2]


def test_max_errors_not_exceeded_finishes():
    pipe, _ = _calculator(fail_on={"1+1", "2+2"})
    result = evaluate(pipe, ROWS, exact_match, max_errors=2, progress=False)
    assert len(result.records) == 4 and result.summary["errors"] == 2


def test_out_writes_results_and_summary(tmp_path):
    pipe, _ = _calculator()
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    result = evaluate(pipe, data, exact_match, out=tmp_path / "run", progress=False, limit=3)

    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    for i, (record, row) in enumerate(zip(records, ROWS[:3], strict=True)):
        solve, measure = record["trace"]
        assert record["index"] == i and record["example"] == row
        assert record["outputs"] == {"answer": row["answer"], "length": len(row["answer"])}
        assert record["score"] == 1.0 and record["error"] is None
        assert (solve["node"], solve["model"], solve["inputs"]) == ("solve", "calc",
                                                                    {"question": row["question"]})
        assert (measure["node"], measure["model"]) == ("measure", None)
        assert record["tokens_in"] == solve["tokens_in"] > 0
        assert record["tokens_out"] == solve["tokens_out"] > 0
        assert record["cost_usd"] == pytest.approx((solve["tokens_in"] * 1.0
                                                    + solve["tokens_out"] * 2.0) / 1e6)

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == result.summary | {"wall_s": summary["wall_s"],
                                        "examples_per_s": summary["examples_per_s"]}
    assert summary["program"] == "calculator" and summary["n"] == 3 and summary["errors"] == 0
    assert summary["metric"]["name"] == "exact_match"
    assert summary["metric"]["mean"] == 1.0 and summary["metric"]["stderr"] == 0.0
    assert list(summary["usage"]) == ["calc"]  # the Python step is no model
    usage = summary["usage"]["calc"]
    assert usage["calls"] == 3 and usage["cost_kind"] == "usd"
    assert usage["tokens_in"] == sum(r["tokens_in"] for r in records)
    assert usage["tokens_out"] == sum(r["tokens_out"] for r in records)
    assert usage["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records))
    assert summary["total_cost_usd"] == pytest.approx(usage["cost_usd"])


def test_summary_usage_counts_retries_as_calls():
    attempts: list[str] = []

    def reply(request):
        attempts.append(_question(request))
        if _question(request) == "1+1" and attempts.count("1+1") == 1:
            return "unparseable"
        if "JSON object" in request.messages[-1]["content"]:  # the retry asks for JSON
            return json.dumps({"answer": str(sum(map(int, _question(request).split("+"))))})
        return _sum(request)

    model = Model("scripted", f"retry-{uuid.uuid4().hex}", name="retry", reply=reply)
    pipe = Pipeline([LMNode("question -> answer", model=model)])
    result = evaluate(pipe, ROWS[:2], exact_match, progress=False)
    assert result.score == 1.0
    assert result.summary["usage"]["retry"]["calls"] == 3


def test_evaluate_with_progress_bar_and_table():
    pipe, _ = _calculator()
    result = evaluate(pipe, ROWS, exact_match)  # the default progress bar must not get in the way
    table = result.table()
    assert "exact_match = 0.750" in table.title and "on 4 examples" in table.title


# -- load_object -------------------------------------------------------------------------------

def test_load_object_from_a_module():
    assert load_object("tandemlm.evaluate.metrics:exact_match") is exact_match


def test_load_object_from_a_file(tmp_path):
    path = tmp_path / "my_metric.py"
    path.write_text(textwrap.dedent("""
        def contains(example, prediction, trace=None):
            return example.answer in prediction.answer
    """))
    metric = load_object(f"{path}:contains", what="metric")
    assert metric(dspy.Example(answer="4"), dspy.Prediction(answer="it is 4")) is True
    assert load_object(f"{path}:contains") is metric  # loaded once


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "must look like MODULE:NAME or FILE.py:NAME"),
    ("module:", "must look like MODULE:NAME"),
    (":name", "must look like MODULE:NAME"),
    ("no_such_module_xyz:thing", "cannot import module 'no_such_module_xyz'"),
    ("tandemlm.evaluate.metrics:nope", "'tandemlm.evaluate.metrics' has no attribute 'nope'"),
])
def test_load_object_errors(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_object(spec, what="metric")


def test_load_object_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"metric file '.*missing\.py' does not exist"):
        load_object(f"{tmp_path / 'missing.py'}:f", what="metric")
    path = tmp_path / "m.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="has no attribute 'f'"):
        load_object(f"{path}:f")
