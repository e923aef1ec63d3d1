"""An evaluation that talks: per-node failure counts in the summary, a warning when most
examples failed, a one-line summary from `str(result)`, and progress from inside a batch.
Models are scripted test doubles (tandemlm.testing) except where a test says otherwise."""

from __future__ import annotations

import json
import uuid
import warnings

import pytest
from rich.console import Console

from tandemlm.compose import LMNode, Pipeline
from tandemlm.evaluate import evaluate, exact_match
from tandemlm.runtime import EvaluationWarning, GenRequest, Model, progress
from tandemlm.testing import chat_reply, request_field

ROWS = [{"question": f"{a}+{a}", "answer": str(2 * a)} for a in range(1, 7)]


def _model(reply) -> Model:
    return Model("scripted", f"talk-{uuid.uuid4().hex}", name="calc", reply=reply)


def _sum(request: GenRequest) -> int:
    return sum(map(int, request_field(request, "question").split("+")))


def test_node_errors_count_parse_failures_and_recoveries(tmp_path):
    """Chat-format node: '1+1' and '2+2' answer in prose, which neither format parses (parse
    failures); '3+3' answers in prose first and in JSON when asked again (recovered)."""
    def reply(request: GenRequest) -> str:
        question = request_field(request, "question")
        asked_json = "JSON" in str(request.messages)
        if question in ("1+1", "2+2") or (question == "3+3" and not asked_json):
            return "I think the answer is probably something."
        if asked_json:
            return json.dumps({"answer": str(_sum(request))})
        return chat_reply(answer=_sum(request))

    pipe = Pipeline([LMNode("question -> answer", model=_model(reply), name="qa")], name="calc")
    result = evaluate(pipe, ROWS, exact_match, out=tmp_path, progress=False)
    counts = result.summary["node_errors"]["qa"]
    assert counts == {"runs": 6, "failed": 2, "parse_failed": 2, "recovered": 1}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["node_errors"] == {"qa": counts}
    console = Console(record=True, width=200)
    result.print(console)
    text = console.export_text()
    assert ("node 'qa': 2 of 6 runs failed (2 could not parse the model output); 1 parsed only "
            "when asked again in another format") in text


def test_backend_failures_are_counted_apart_from_parse_failures():
    model = Model("scripted", f"talk-{uuid.uuid4().hex}", name="calc",
                  reply=lambda r: chat_reply(answer=_sum(r)),
                  fail=lambda r: request_field(r, "question") == "1+1")
    result = evaluate(Pipeline([LMNode("question -> answer", model=model, name="qa")]), ROWS,
                      exact_match, progress=False)
    assert result.summary["node_errors"]["qa"] == {"runs": 6, "failed": 1, "parse_failed": 0,
                                                   "recovered": 0}


def test_most_examples_failing_warns_with_the_common_error():
    pipe = Pipeline([LMNode("question -> answer", model=_model("no fields here"), name="qa")])
    with pytest.warns(EvaluationWarning, match=r"all 6 examples failed; the score 0.000 counts "
                                               r"them as 0\. Most common error \(6 x\): .*could "
                                               r"not parse"):
        result = evaluate(pipe, ROWS, exact_match, progress=False)
    assert "all 6 examples failed" in str(result)
    with warnings.catch_warnings():  # a caller that reports failures itself
        warnings.simplefilter("error", EvaluationWarning)
        assert evaluate(pipe, ROWS, exact_match, progress=False, warn=False).failure()


def test_a_healthy_evaluation_does_not_warn_and_prints_one_line():
    pipe = Pipeline([LMNode("question -> answer", model=_model(lambda r: chat_reply(answer=_sum(r))),
                            name="qa")], name="calc")
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        result = evaluate(pipe, ROWS, exact_match, progress=False)
    line = str(result)
    assert line.startswith("calc: exact_match = 1.000") and "on 6 examples (0 failed)" in line
    assert repr(result) == f"<EvalResult {line}>"


def test_the_executor_reports_stages_and_nodes_to_a_listener():
    def reply(request: GenRequest) -> str:
        if "answer" in str(request.messages[0]) and "check" not in str(request.messages[0]):
            return chat_reply(answer=_sum(request))
        return chat_reply(verdict="yes")

    model = _model(reply)
    pipe = Pipeline([LMNode("question -> answer", model=model, name="solve"),
                     LMNode("question, answer -> verdict", model=model, name="check")])
    heard: list[str] = []
    with progress.listening(heard.append):
        pipe.batch(ROWS)
    assert heard[:2] == ["stage 1/2: solve", "solve: 6 example(s)"]
    assert "stage 2/2: check" in heard and "check: 6 example(s)" in heard
    heard.clear()
    pipe.batch(ROWS)  # no listener: nothing reported, nothing fails
    assert heard == []


def test_a_failing_listener_does_not_fail_the_batch():
    def broken(text: str) -> None:
        raise RuntimeError("display gone")

    pipe = Pipeline([LMNode("question -> answer", model=_model(lambda r: chat_reply(answer=_sum(r))),
                            name="qa")])
    with progress.listening(broken):
        results = pipe.batch(ROWS)
    assert all(r.error is None for r in results)
