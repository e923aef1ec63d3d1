"""Bad input to `evaluate` fails with one clear message and loses nothing: a data file in another
encoding or that CSV cannot parse, a metric value that is no finite number, a disk that fills up
under `out=`. Models are scripted test doubles (tandemlm.testing); files are real, in tmp_path."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import uuid

import dspy
import numpy as np
import pytest

from tandemlm.compose import LMNode, Pipeline
from tandemlm.evaluate import evaluate, exact_match, load_data
from tandemlm.evaluate import results as results_module
from tandemlm.evaluate.results_dir import read_records
from tandemlm.runtime import ConfigError, Model, OutputError
from tandemlm.testing import chat_reply, fill_disk_after, request_field

ROWS = [{"id": f"q{i}", "question": f"{i}+{i}", "answer": str(2 * i)} for i in range(8)]


def _pipeline() -> Pipeline:
    # TEST DOUBLE: adds the two numbers of the question
    model = Model("scripted", f"calc-{uuid.uuid4().hex}", name="calc",
                  reply=lambda r: chat_reply(answer=sum(map(int, request_field(r, "question")
                                                            .split("+")))))
    return Pipeline([LMNode("question -> answer", model=model, name="solve")], name="calc")


# -- data files in another encoding ------------------------------------------------------------

LATIN1 = {".jsonl": '{"question": "tea", "answer": "x"}\n{"question": "café", "answer": "x"}\n',
          ".csv": "question,answer\ncafé,x\n",
          ".json": '[{"question": "tea", "answer": "x"},\n {"question": "café", "answer": "x"}]\n'}


@pytest.mark.parametrize("suffix", sorted(LATIN1))
def test_a_latin1_byte_names_the_file_line_and_byte_and_says_what_to_do(tmp_path, suffix):
    path = tmp_path / f"dev{suffix}"
    raw = LATIN1[suffix].encode("latin-1")
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_data(path)
    message = str(info.value)
    assert message.startswith(f"data file '{path}', line 2: byte {raw.index(0xE9)} (0xe9) is not "
                              f"valid utf-8; re-encode the file as UTF-8, or give its encoding")
    assert "--encoding latin-1" in message and "\n" not in message


@pytest.mark.parametrize("suffix", sorted(LATIN1))
def test_the_encoding_reads_such_a_file(tmp_path, suffix):
    path = tmp_path / f"dev{suffix}"
    path.write_bytes(LATIN1[suffix].encode("latin-1"))
    assert load_data(path, encoding="latin-1")[-1] == {"question": "café", "answer": "x"}


def test_an_unknown_encoding_is_a_config_error(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text('{"question": "tea"}\n')
    with pytest.raises(ConfigError, match="unknown encoding 'utf-9'; give a Python codec name"):
        load_data(path, encoding="utf-9")


def test_a_utf8_byte_order_mark_is_not_read_as_data(tmp_path):
    # what spreadsheet programs and Windows editors put first: it would rename the first column
    # to '\ufeffquestion' and fail the first JSON line
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbfquestion,answer\ncat,CAT\n")
    (tmp_path / "d.jsonl").write_bytes(b'\xef\xbb\xbf{"question": "cat", "answer": "CAT"}\n')
    assert load_data(tmp_path / "d.csv") == load_data(tmp_path / "d.jsonl") == [
        {"question": "cat", "answer": "CAT"}]


def test_a_csv_row_csv_cannot_parse_names_the_file_and_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\ncat,CAT\n" + "x" * 200_000 + ",X\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:3: not valid CSV \(field larger"):
        load_data(path)


def test_evaluate_and_compile_read_data_files_in_the_encoding_given(tmp_path):
    from tandemlm.optimizers import BootstrapDemos, compile

    path = tmp_path / "dev.jsonl"
    path.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode("cp1252") + b"\n"
                              for r in [{"question": "1+1", "answer": "2", "note": "\u20ac"}]))
    with pytest.raises(ConfigError, match=rf"data file '{re.escape(str(path))}', line 1: byte"):
        evaluate(_pipeline(), path, exact_match, progress=False)
    result = evaluate(_pipeline(), path, exact_match, progress=False, encoding="cp1252")
    assert result.records[0].example["note"] == "\u20ac" and result.score == 1.0
    with pytest.raises(ConfigError, match=rf"data file '{re.escape(str(path))}', line 1: byte"):
        compile(_pipeline(), path, exact_match, passes=[BootstrapDemos()], progress=False)
    compiled = compile(_pipeline(), path, exact_match, passes=[BootstrapDemos()], progress=False,
                       encoding="cp1252", out_dir=tmp_path / "compiled")
    assert compiled.compile_report[0].metric_after == 1.0


# -- a metric value that is no finite number ---------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), math.inf, -math.inf, np.float64("nan"), None, "0.5",
                                 [1.0], 10**400])
def test_a_metric_value_that_is_no_finite_number_stops_the_evaluation_keeping_the_records(tmp_path,
                                                                                         bad):
    def graded(example, prediction, trace=None):
        return bad if example.id == "q5" else exact_match(example, prediction)

    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        evaluate(_pipeline(), ROWS, graded, batch_size=3, out=out, progress=False)
    shown = repr(bad) if len(repr(bad)) <= 80 else repr(bad)[:77] + "..."
    assert str(info.value) == (
        f"metric '{graded.__qualname__}' returned {shown} for example 5 (id 'q5'); a metric "
        f"must return a finite number or bool. Fix the metric (e.g. return 0.0 where it cannot "
        f"score an example)")
    # raised as soon as it was seen: examples 0-4 are on disk, whole, and nothing after them
    assert [r["index"] for r in read_records(out / "results.jsonl")] == [0, 1, 2, 3, 4]
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("good", [True, False, 0, 3, 0.25, -2.5, np.float32(0.5), np.bool_(True),
                                  dspy.Prediction(score=0.75, feedback="close")])
def test_bools_numbers_and_scored_predictions_are_metric_values(good):
    result = evaluate(_pipeline(), ROWS[:3], lambda e, p, trace=None: good, progress=False)
    assert result.score == pytest.approx(float(good)) and result.summary["metric"]["stderr"] == 0.0


def test_a_recorded_nan_score_is_not_resumed_but_run_again(tmp_path):
    out, pipe = tmp_path / "run", _pipeline()
    evaluate(pipe, ROWS, exact_match, out=out, progress=False)
    lines = (out / "results.jsonl").read_text().splitlines()
    record = json.loads(lines[2])
    lines[2] = json.dumps({**record, "score": float("nan")})  # JSON keeps it as NaN
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    result = evaluate(pipe, ROWS, exact_match, out=out, progress=False)
    assert result.summary["resumed"] == 7 and result.score == 1.0
    assert result.summary["metric"]["stderr"] == 0.0


# -- a disk that fills up under out= -----------------------------------------------------------

def test_a_full_disk_mid_run_says_where_why_and_what_was_kept_and_the_rerun_resumes(
        tmp_path, monkeypatch):
    out, pipe = tmp_path / "run", _pipeline()
    fill_disk_after(monkeypatch, 3)
    with pytest.raises(OutputError) as info:
        evaluate(pipe, ROWS, exact_match, batch_size=2, out=out, progress=False)
    results = out / "results.jsonl"
    assert str(info.value) == (
        f"could not write {results}: No space left on device (ENOSPC); 3 of 8 example records "
        f"are kept in {results}. Free some space (or fix the directory) and run the same "
        f"evaluation again with the same --out / out=: it resumes from them and runs the other 5")
    assert [r["index"] for r in read_records(results)] == [0, 1, 2]  # the half line is not one
    again = evaluate(pipe, ROWS, exact_match, batch_size=2, out=out, progress=False)
    assert again.summary["resumed"] == 3 and again.summary["n"] == 8 and again.score == 1.0


def test_a_full_disk_when_the_summary_is_written_keeps_every_record(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(results_module, "atomic_write", full)
    with pytest.raises(OutputError, match=rf"could not write {re.escape(str(out))}: No space left "
                                          rf"on device \(ENOSPC\); 8 of 8 example records are kept"):
        evaluate(_pipeline(), ROWS, exact_match, out=out, progress=False)
    assert len(read_records(out / "results.jsonl")) == 8 and not (out / "summary.json").exists()
