"""BootstrapDemos: demos from passing traces change what a model does.

The small model is a scripted TEST DOUBLE that learns in context the one thing the task needs:
the task is to upper-case a word, and it upper-cases only when a demo in its prompt shows an
upper-cased word answer. So demos taken from failing traces (lower-case answers), from the wrong
field, or not sent at all leave it wrong, and the metric shows it.
"""

from __future__ import annotations

import pytest

from tandemlm import LMNode, Model, Pipeline, evaluate
from tandemlm.optimizers import BootstrapDemos, compile, lm_nodes, load
from tandemlm.runtime import CompileError, ConfigError
from tandemlm.testing import chat_reply, demo_values, request_field
from recorder import Recorder

PASSING = ["NASA", "IBM", "UNESCO", "FIFA", "NATO", "OPEC"]     # already upper: echoing passes
FAILING = ["cat", "river", "stone", "apple", "lamp"]
NUMBERS = ["42", "7", "311"]                                      # pass, but teach nothing
VAL = [{"question": w, "answer": w.upper()} for w in ["dog", "tree", "cloud", "music"]]


def rows(words):
    return [{"question": w, "answer": w.upper()} for w in words]


def mimic(request):
    """TEST DOUBLE: echoes the word, upper-cased only if a demo answer is an upper-case word."""
    word = request_field(request, "question")
    learned = any(a.isalpha() and a.isupper() for a in demo_values(request, "answer"))
    return chat_reply(answer=word.upper() if learned else word)


def upper(request):
    """TEST DOUBLE for a large model: always right."""
    return chat_reply(answer=request_field(request, "question").upper())


SMALL = Model("scripted", "mimic-small", reply=mimic)
LARGE = Model("scripted", "upper-large", reply=upper)


def build() -> Pipeline:
    return Pipeline([LMNode("question -> answer", model="small", name="solve")],
                    models={"small": SMALL, "large": LARGE}, name="upper")


def exact(example, prediction, trace=None):
    return prediction.answer == example.answer


def run(passes, train, tmp_path, val=VAL, seed=0, reporter=None, program=None):
    return compile(program or build(), train, exact, passes=passes, valset=val, seed=seed,
                   out_dir=tmp_path, progress=False, reporter=reporter)


def demos(pipeline, path="solve"):
    return lm_nodes(pipeline)[path].demos


def test_demos_from_passing_traces_lift_the_metric(tmp_path):
    compiled = run([BootstrapDemos(k=6)], rows(FAILING + PASSING), tmp_path)
    (report,) = compiled.compile_report
    assert (report.metric_before, report.metric_after) == (0.0, 1.0)
    got = demos(compiled)
    # k = the number of passing examples: any failing trace in the pool would show up here.
    assert sorted(d["question"] for d in got) == sorted(PASSING)
    for demo in got:  # inputs + outputs of passing calls only
        assert set(demo) == {"question", "answer"} and demo["answer"] == demo["question"]
    assert report.details["passed"] == "6/11" and report.details["demos"] == {"solve": 6}
    # The compiled program sends them: every request now carries the two demo turns.
    SMALL.backend.history.clear()
    compiled(question="ink")
    (request,) = SMALL.backend.history
    assert demo_values(request, "question") == [d["question"] for d in got]


def test_k_is_respected_and_the_draw_follows_the_seed(tmp_path):
    train = rows(PASSING + FAILING)
    first = demos(run([BootstrapDemos(k=3)], train, tmp_path / "a", seed=0))
    again = demos(run([BootstrapDemos(k=3)], train, tmp_path / "b", seed=0))
    other = demos(run([BootstrapDemos(k=3)], train, tmp_path / "c", seed=1))
    assert len(first) == 3 and first == again
    assert other != first and all(d["question"] in PASSING for d in other)
    few = demos(run([BootstrapDemos(k=10)], train, tmp_path / "d"))
    assert sorted(d["question"] for d in few) == sorted(PASSING)  # fewer passing than k: all


def test_teacher_writes_the_demos_and_the_program_keeps_its_model(tmp_path):
    LARGE.backend.history.clear()
    compiled = run([BootstrapDemos(k=3, teacher={"small": LARGE})], rows(FAILING), tmp_path)
    # The small model alone passes nothing; every demo is the teacher's (right) answer.
    assert len(LARGE.backend.history) == len(FAILING)
    got = demos(compiled)
    assert len(got) == 3
    assert all(d["question"] in FAILING and d["answer"] == d["question"].upper() for d in got)
    assert compiled.models["small"] is SMALL
    (report,) = compiled.compile_report
    assert (report.metric_before, report.metric_after) == (0.0, 1.0)
    assert report.details["teacher_score"] == 1.0
    LARGE.backend.history.clear()
    compiled.batch(VAL)
    assert LARGE.backend.history == []  # the teacher is not in the compiled program


def test_teacher_by_bound_name_and_unknown_name(tmp_path):
    compiled = run([BootstrapDemos(k=1, teacher={"small": "large"})], rows(FAILING), tmp_path)
    assert demos(compiled)[0]["answer"].isupper() and compiled.models["small"] is SMALL
    with pytest.raises(ConfigError, match="binds no model named 'huge'"):
        run([BootstrapDemos(teacher={"small": "huge"})], rows(FAILING), tmp_path / "x")


def test_random_search_keeps_the_best_demo_set_on_val(tmp_path):
    # k=1 from a pool of numbers (teach nothing) and upper-case words (teach the task).
    train = rows(NUMBERS + PASSING[:2] + FAILING)
    compiled = run([BootstrapDemos(k=1, candidates=6)], train, tmp_path, seed=3)
    (report,) = compiled.compile_report
    search = report.details["search"]
    assert len(search) == 7 and search[0] == {"draw": 0, "score": 0.0, "demos": 0}
    scores = [s["score"] for s in search]
    # The draw candidates=0 would keep (draw 1) teaches nothing here; a later one wins.
    assert scores[1] == 0.0 and max(scores) == 1.0
    assert report.details["chosen"] == scores.index(1.0) > 1
    assert demos(compiled)[0]["question"] in PASSING
    assert report.metric_after == 1.0
    plain = run([BootstrapDemos(k=1)], train, tmp_path / "plain", seed=3)
    assert plain.compile_report[0].metric_after == 0.0


def test_random_search_ties_keep_no_demos(tmp_path):
    # Numbers only: no demo set beats the program as it came, so it stays as it came.
    compiled = run([BootstrapDemos(k=2, candidates=3)], rows(NUMBERS + FAILING), tmp_path)
    assert compiled.compile_report[0].details["chosen"] == 0 and demos(compiled) == []


def test_random_search_needs_a_valset(tmp_path):
    with pytest.raises(ConfigError, match="pass valset="):
        run([BootstrapDemos(candidates=2)], rows(PASSING), tmp_path, val=None)


def test_nothing_passing_is_a_compile_error(tmp_path):
    with pytest.raises(CompileError, match=r"none of the 5 training examples passed the metric"):
        run([BootstrapDemos()], rows(FAILING), tmp_path)
    assert not (tmp_path / "program.json").exists()


def test_labelled_demos_fill_up_after_bootstrapped_ones(tmp_path):
    compiled = run([BootstrapDemos(k=1, max_labeled=2)], rows(PASSING[:1] + FAILING), tmp_path)
    got = demos(compiled)
    assert got[0] == {"question": "NASA", "answer": "NASA"}       # the one passing trace
    assert [d["question"] in FAILING for d in got[1:]] == [True, True]
    assert all(d["answer"] == d["question"].upper() for d in got)  # labels, not model output


def test_unknown_node_and_raw_prompt_nodes(tmp_path):
    with pytest.raises(ConfigError, match="no LM node named 'nope'.*LM nodes: solve"):
        run([BootstrapDemos(nodes=["nope"])], rows(PASSING), tmp_path)
    raw = LMNode("question -> answer", model="small", name="raw", prompt_field="question")
    program = Pipeline([raw], models={"small": Model("scripted", "raw", reply="X")}, name="raw")
    notes = Recorder()
    with pytest.raises(CompileError, match="no node .* can take demos"):
        run([BootstrapDemos()], rows(PASSING), tmp_path / "raw", reporter=notes, program=program)
    assert any("raw prompt" in n and "'raw'" in n for n in notes.notes)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="expected an integer >= 0"):
        BootstrapDemos(k=-1)
    with pytest.raises(ConfigError, match="would add no demos"):
        BootstrapDemos(k=0)


def test_demos_survive_save_and_load(tmp_path):
    compiled = run([BootstrapDemos(k=2)], rows(PASSING + FAILING), tmp_path)
    loaded = load(tmp_path, program=build)
    assert demos(loaded) == demos(compiled) and len(demos(loaded)) == 2
    assert loaded.models["small"] is SMALL  # a test double's model is not saved: the code's stays
    fresh = evaluate(build(), VAL, exact, progress=False)
    before, after = (evaluate(p, VAL, exact, progress=False) for p in (compiled, loaded))
    assert [r.result.outputs for r in before.records] == [r.result.outputs for r in after.records]
    assert after.score == before.score == 1.0 and fresh.score == 0.0
