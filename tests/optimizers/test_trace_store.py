"""The trace store: every node's calls with pass/fail (composite children by path), and model
calls paid once per (model fingerprint, request) across passes and across a resumed compile.

Models are scripted test doubles with JSON options (a constant reply), so the call cache keys
them like real models; their request history counts what reached the backend."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tandemlm import LMNode, Model, Pipeline
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.optimizers import Pass, TraceStore, compile
from tandemlm.runtime import CallCache
from tandemlm.testing import chat_reply

QUESTIONS = [{"question": f"q{i}", "gold": "yes" if i % 2 else "no"} for i in range(6)]


def metric(example, prediction, trace=None):
    return prediction.answer == example.gold


@dataclass
class Keep(Pass):
    """A pass that changes nothing: every run after it asks the same requests again."""

    tag: int = 0
    name = "keep"

    def apply(self, pipeline, traces, ctx):
        return ctx.copy(pipeline)


def _model(reply):
    return Model("scripted", f"m-{uuid.uuid4().hex}", reply=chat_reply(answer=reply))


def test_passes_reuse_calls_and_a_resumed_compile_pays_none(tmp_path):
    large = _model("yes")
    pipe = Pipeline([LMNode("question -> answer", model=large, name="solve")])
    compile(pipe, QUESTIONS, metric, passes=[Keep(1), Keep(2), Keep(3)], valset=QUESTIONS[:3],
            out_dir=tmp_path, progress=False)
    # 3 passes x (train before, val before, val after) runs, but each request reached the model once
    assert len(large.backend.history) == len(QUESTIONS)
    large.backend.history.clear()
    compile(pipe, QUESTIONS, metric, passes=[Keep(1), Keep(2), Keep(4)], valset=QUESTIONS[:3],
            out_dir=tmp_path, progress=False)  # the third pass re-runs: its calls are in sqlite
    assert large.backend.history == []


def test_calls_by_path_with_pass_fail_and_cascade_children():
    cheap, strong = _model("no"), _model("yes")
    judge = LMNode("question, answer -> score: float", name="judge",
                   model=Model("scripted", f"j-{uuid.uuid4().hex}", reply=chat_reply(score=0.9)))
    pipe = Pipeline([Cascade([Stage(LMNode("question -> answer", model=cheap, name="cheap"), judge=judge,
                                    threshold=0.5),
                              Stage(LMNode("question -> answer", model=strong, name="strong"))])])
    traces = TraceStore(metric, cache=CallCache(), progress=False).run(pipe, QUESTIONS)
    assert traces.score == 0.5  # the judge trusts every cheap "no": right on half
    cheap_calls = traces.calls("cascade/cheap")
    assert [c.example["question"] for c in cheap_calls] == [q["question"] for q in QUESTIONS]
    assert [c.passed for c in traces.calls("cascade/cheap", passed=True)] == [True] * 3
    assert all(c.trace.outputs == {"answer": "no"} for c in cheap_calls)
    assert len(traces.calls("cascade/judge")) == 6 and traces.calls("cascade/strong") == []
    assert traces.calls("cheap") == []  # paths, not bare names, inside a composite
