"""`evaluate(..., out=DIR)`: records stream to DIR/results.jsonl batch by batch, Ctrl-C keeps
them and says where, a re-run resumes running only what is missing (and what changed), and the
files get the mode open() would give them. Models are scripted test doubles (tandemlm.testing)."""

from __future__ import annotations

import json
import os
import stat
import uuid

import pytest

from tandemlm.compose import LMNode, Pipeline
from tandemlm.evaluate import EvaluationInterrupted, evaluate, exact_match
from tandemlm.optimizers import artifacts
from tandemlm.runtime import files
from tandemlm.testing import chat_reply, request_field

ROWS = [{"question": f"{i}+{i}", "answer": str(2 * i)} for i in range(10)]


def _pipeline(model_id: str = "calc") -> tuple[Pipeline, object]:
    from tandemlm.runtime import Model

    model = Model("scripted", f"{model_id}-{uuid.uuid4().hex}", name="calc",
                  reply=lambda r: chat_reply(answer=sum(map(int, request_field(r, "question")
                                                            .split("+")))))
    return Pipeline([LMNode("question -> answer", model=model, name="solve")], name="calc"), model


def _asked(model) -> list[str]:
    return [request_field(r, "question") for r in model.backend.history]


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _interrupting(at: str):
    """A metric that raises KeyboardInterrupt (a Ctrl-C) the first time it scores the example
    whose question is `at`, and scores exact match otherwise: the same metric on the re-run."""
    pressed: list[str] = []

    def metric(example, prediction, trace=None):
        if example.question == at and not pressed:
            pressed.append(at)
            raise KeyboardInterrupt
        return exact_match(example, prediction)
    return metric


def test_ctrl_c_keeps_finished_batches_and_a_rerun_runs_only_the_rest(tmp_path):
    pipe, model = _pipeline()
    out = tmp_path / "run"
    metric = _interrupting("6+6")
    with pytest.raises(EvaluationInterrupted) as info:
        evaluate(pipe, ROWS, metric, batch_size=3, out=out, progress=False)
    assert isinstance(info.value, KeyboardInterrupt)  # Ctrl-C stays Ctrl-C
    assert (info.value.done, info.value.total) == (6, 10)
    assert "interrupted after 6 of 10 examples" in str(info.value)
    assert str(out / "results.jsonl") in str(info.value)
    # The two finished batches are on disk, though the run never got to its end.
    assert [r["index"] for r in _records(out)] == list(range(6))
    assert not (out / "summary.json").exists()

    asked_before = len(model.backend.history)
    result = evaluate(pipe, ROWS, metric, batch_size=3, out=out, progress=False)
    assert _asked(model)[asked_before:] == [r["question"] for r in ROWS[6:]]  # only the rest ran
    assert [r.index for r in result.records] == list(range(10))
    assert result.score == 1.0 and result.summary["n"] == 10 and result.summary["resumed"] == 6
    assert [r["index"] for r in _records(out)] == list(range(10))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 10 and summary["usage"]["calc"]["calls"] == 10  # resumed calls count


def test_a_rerun_of_a_finished_run_runs_nothing_and_fresh_runs_all(tmp_path):
    pipe, model = _pipeline()
    out = tmp_path / "run"
    first = evaluate(pipe, ROWS, exact_match, out=out, progress=False)
    assert len(model.backend.history) == 10
    again = evaluate(pipe, ROWS, exact_match, out=out, progress=False)
    assert len(model.backend.history) == 10
    assert again.summary["metric"] == first.summary["metric"]
    assert again.summary["usage"] == first.summary["usage"]
    evaluate(pipe, ROWS, exact_match, out=out, fresh=True, progress=False)
    assert len(model.backend.history) == 20


def test_changed_examples_run_again_and_a_larger_limit_runs_only_the_new(tmp_path, capsys):
    pipe, model = _pipeline()
    out = tmp_path / "run"
    evaluate(pipe, ROWS, exact_match, out=out, limit=6, progress=False)
    changed = [dict(r) for r in ROWS]
    changed[2] = {"question": "7+7", "answer": "14"}
    asked = len(model.backend.history)
    result = evaluate(pipe, changed, exact_match, out=out, progress=True)
    # index 2 (changed) and 6..9 (beyond the first run's limit); the other five were kept
    assert sorted(_asked(model)[asked:]) == sorted(["7+7", "6+6", "7+7", "8+8", "9+9"])
    assert result.records[2].example == changed[2] and result.summary["resumed"] == 5
    assert [r["example"] for r in _records(out)] == changed
    said = " ".join(capsys.readouterr().out.split())
    assert "1 example(s) recorded in" in said and "differ from the data now" in said
    assert "resuming from" in said and "5 of 10 examples already done" in said


def test_another_program_in_the_same_out_starts_over_and_says_so(tmp_path, capsys):
    pipe, _ = _pipeline()
    out = tmp_path / "run"
    evaluate(pipe, ROWS, exact_match, out=out, progress=False)
    other, model = _pipeline("other")
    result = evaluate(other, ROWS, exact_match, out=out, progress=True)
    assert len(model.backend.history) == 10 and result.summary["resumed"] == 0
    assert "holds results of another evaluation (program differs); starting over" in " ".join(
        capsys.readouterr().out.split())


def test_a_line_cut_short_by_a_kill_runs_that_example_again(tmp_path):
    pipe, model = _pipeline()
    out = tmp_path / "run"
    evaluate(pipe, ROWS[:4], exact_match, out=out, progress=False)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:3]) + lines[3][:40])
    asked = len(model.backend.history)
    result = evaluate(pipe, ROWS[:4], exact_match, out=out, progress=False)
    assert _asked(model)[asked:] == ["3+3"] and result.summary["n"] == 4


def test_max_errors_counts_resumed_failures(tmp_path):
    from tandemlm.runtime import EvaluationAborted, EvaluationWarning, Model

    model = Model("scripted", f"f-{uuid.uuid4().hex}", reply=chat_reply(answer="0"),
                  fail=lambda r: True)
    pipe = Pipeline([LMNode("question -> answer", model=model)], name="broken")
    out = tmp_path / "run"
    with pytest.warns(EvaluationWarning, match="all 3 examples failed"):
        evaluate(pipe, ROWS[:3], exact_match, out=out, progress=False)
    with pytest.raises(EvaluationAborted, match=r"3 examples failed \(max_errors=1\).*most common "
                                                r"\(3 x\)"):
        evaluate(pipe, ROWS[:3], exact_match, out=out, max_errors=1, progress=False)
    assert len(model.backend.history) == 3  # the recorded failures were not paid for again


def test_without_out_an_interrupt_says_nothing_was_saved():
    pipe, _ = _pipeline()
    with pytest.raises(EvaluationInterrupted, match="nothing was saved"):
        evaluate(pipe, ROWS, _interrupting("0+0"), progress=False)


def test_written_files_get_the_mode_open_would_give(tmp_path):
    expected = 0o666 & ~files._UMASK
    pipe, _ = _pipeline()
    out = tmp_path / "run"
    evaluate(pipe, ROWS[:2], exact_match, out=out, progress=False)
    for name in ("results.jsonl", "summary.json", "run.json"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == expected, name
    assert artifacts.atomic_write is files.atomic_write  # one helper, shared
    files.atomic_write(tmp_path / "deep" / "x.txt", "hi")
    assert stat.S_IMODE(os.stat(tmp_path / "deep" / "x.txt").st_mode) == expected


def test_another_metric_in_the_same_out_starts_over(tmp_path, capsys):
    pipe, model = _pipeline()
    out = tmp_path / "run"
    evaluate(pipe, ROWS[:3], exact_match, out=out, progress=False)

    def contains(example, prediction, trace=None):
        return example.answer in prediction.answer

    evaluate(pipe, ROWS[:3], contains, out=out, progress=True)
    assert len(model.backend.history) == 6
    assert "(metric differs); starting over" in " ".join(capsys.readouterr().out.split())
