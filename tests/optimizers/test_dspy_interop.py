"""DSPy's own optimizer compiles a tandem Pipeline: `dspy.BootstrapFewShot` finds the LM nodes
(a Map's child included) through `named_predictors()`, sees their calls in `dspy.settings.trace`,
and the demos it attaches are sent by tandem's executor.

The small model is a scripted TEST DOUBLE that upper-cases a word only when one of its demos
shows an upper-cased word, so a demo that never reaches the prompt, or comes from a failing run,
leaves the program wrong.
"""

from __future__ import annotations

import json
import re

import dspy

from tandemlm import LMNode, Model, Pipeline
from tandemlm.modules import Map
from tandemlm.testing import chat_reply, demo_values, request_field


def shout(request):
    """TEST DOUBLE: echoes the word, upper-cased only if a demo's shout is an upper-case word."""
    word = request_field(request, "word")
    learned = any(s.isalpha() and s.isupper() for s in demo_values(request, "shout"))
    return chat_reply(shout=word.upper() if learned else word)


def join(request):
    """TEST DOUBLE for a large model: joins the shouted words."""
    return chat_reply(answer=" ".join(re.findall(r"«(.*?)»", request_field(request, "shouts"))))


SMALL = Model("scripted", "interop-small", reply=shout)
LARGE = Model("scripted", "interop-large", reply=join)
PASSING = [["NASA", "IBM"], ["UNESCO"], ["FIFA", "NATO"]]
FAILING = [["cat", "dog"], ["river"]]


def build() -> Pipeline:
    return Pipeline([
        Map(LMNode("word -> shout", model="small", name="shout"), over="words", into="shouts"),
        LMNode("words, shouts -> answer", model="large", name="answer"),
    ], models={"small": SMALL, "large": LARGE}, name="shouter")


def example(words):
    return dspy.Example(words=words, answer=" ".join(w.upper() for w in words)).with_inputs("words")


def metric(example, prediction, trace=None):
    return prediction.answer == example.answer


def test_bootstrap_few_shot_compiles_a_pipeline():
    student = build()
    assert [name for name, _ in student.named_predictors()] == ["nodes['map_shout'].node",
                                                               "nodes['answer']"]
    assert student(words=["ink"]).answer == "ink"  # no demos: the small model does not shout
    optimizer = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=2, max_labeled_demos=0)
    trainset = [example(w) for w in FAILING + PASSING]
    compiled = optimizer.compile(student=student, trainset=trainset)

    assert isinstance(compiled, Pipeline) and compiled is not student
    assert all(not p.demos for _, p in student.named_predictors())  # the student is untouched
    predictors = dict(compiled.named_predictors())
    shout_demos = predictors["nodes['map_shout'].node"].demos
    answer_demos = predictors["nodes['answer']"].demos
    assert len(shout_demos) == len(answer_demos) == 2
    passing_words = {w for ws in PASSING for w in ws}
    # Demos come from the traces of the two examples that passed first, never from failing ones.
    assert all(d.word in passing_words and d.shout == d.word for d in shout_demos)
    assert [list(d.words) for d in answer_demos] == PASSING[:2]
    assert all(d.answer == " ".join(d.shouts) for d in answer_demos)

    SMALL.backend.history.clear()
    LARGE.backend.history.clear()
    assert compiled(words=["ink", "pen"]).answer == "INK PEN"
    assert len(SMALL.backend.history) == 2  # one batch of two Map elements
    for request in SMALL.backend.history:
        assert demo_values(request, "word") == [d.word for d in shout_demos]
    (request,) = LARGE.backend.history
    assert demo_values(request, "answer") == [d.answer for d in answer_demos]


def test_compiled_state_is_tandem_state():
    """What DSPy attached is ordinary node state: it saves as JSON and loads onto a new build."""
    from tandemlm.compose.state import pipeline_state, set_pipeline_state

    optimizer = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=1, max_labeled_demos=0)
    compiled = optimizer.compile(student=build(), trainset=[example(w) for w in PASSING])
    state = json.loads(json.dumps(pipeline_state(compiled)["nodes"]))
    fresh = build()
    set_pipeline_state(fresh, {"nodes": state})
    assert fresh(words=["ink"]).answer == "INK"

