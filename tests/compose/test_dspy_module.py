"""DSPy modules go into a pipeline as they are: their LM calls are batched across examples, land
in each example's trace, and the module still behaves as DSPy's (its adapter, its predictors).

Most tests use the `scripted` backend, a labelled TEST DOUBLE whose `batches` records the size of
every backend call; one runs a real (tiny, randomly initialised) transformers model.
"""

from __future__ import annotations

import threading

import dspy
import pytest

from tandemlm import GraphError, LMNode, Model, Pipeline, evaluate
from tandemlm.compose.dspy_module import DSPyModule
from tandemlm.runtime import ConfigError
from tandemlm.runtime.backends.dspy_bridge import as_dspy_lm, as_model
from tandemlm.runtime.barrier import Barrier
from tandemlm.testing import chat_reply, request_field


def upper(request):
    """TEST DOUBLE: a chain of thought that answers the question upper-cased."""
    return chat_reply(reasoning="it is loud", answer=request_field(request, "question").upper())


def scripted(name="dspy-scripted", **options):
    return Model("scripted", name, **options)


class TopicThenAnswer(dspy.Module):
    """A user's DSPy program: two predictors wired in Python."""

    def __init__(self):
        super().__init__()
        self.topic = dspy.Predict("question -> topic")
        self.answer = dspy.ChainOfThought("question, topic -> answer")

    def forward(self, question):
        topic = self.topic(question=question).topic
        if question == "boom":
            raise ValueError("this example's own code failed")
        return self.answer(question=question, topic=topic)


def two_step(request):
    """TEST DOUBLE: answers the topic predictor with a topic, the answer predictor with both."""
    system = request.messages[0]["content"]
    if "`topic`" in system.split("Your output fields are:")[1][:80]:
        return chat_reply(topic="t-" + request_field(request, "question"))
    return chat_reply(reasoning="r", answer=request_field(request, "topic") + "!")


def test_chain_of_thought_batches_and_evaluates():
    model = scripted(reply=upper)
    pipe = Pipeline([dspy.ChainOfThought("question -> answer")], models={"s": model})
    assert list(pipe.nodes) == ["chain_of_thought"]
    assert pipe.input_fields == ["question"] and pipe.output_fields == ["reasoning", "answer"]
    rows = [{"question": f"q{i}", "answer": f"Q{i}"} for i in range(20)]
    result = evaluate(pipe, rows, lambda ex, pred: pred.answer == ex.answer, progress=False)
    assert result.score == 1.0
    assert model.backend.batches == [20]  # twenty examples, one backend call
    trace = result.records[3].result.trace[0]
    assert trace.model == model.name and trace.calls == 1 and trace.tokens_in > 0
    assert result.summary["usage"][model.name]["calls"] == 20


def test_a_user_module_batches_each_of_its_calls_and_fails_alone():
    model = scripted(reply=two_step)
    pipe = Pipeline(TopicThenAnswer(), models={"s": model})
    node = pipe.nodes["topic_then_answer"]
    assert list(node.input_fields) == ["question"]  # from forward's parameters
    assert list(node.output_fields) == ["reasoning", "answer"]  # the last predictor's outputs
    results = pipe.batch([{"question": q} for q in ["a", "b", "boom", "c"]])
    assert [r.outputs.get("answer") for r in results] == ["t-a!", "t-b!", None, "t-c!"]
    assert "ValueError: this example's own code failed" in results[2].error
    assert model.backend.batches == [4, 3]  # the topic call of all four, then the answers
    assert [r.trace[0].calls for r in results] == [2, 2, 1, 2]


def test_a_failed_call_fails_only_its_example():
    model = scripted(reply=upper, fail="[[ ## question ## ]]\nbad")
    pipe = Pipeline([dspy.ChainOfThought("question -> answer")], models={"s": model})
    results = pipe.batch([{"question": "ok"}, {"question": "bad"}])
    assert results[0].outputs["answer"] == "OK"
    assert results[1].error is not None and "scripted failure" in results[1].error


def test_names_and_declared_fields():
    model = scripted(reply=upper)
    with pytest.raises(GraphError, match="two nodes are named 'chain_of_thought'"):
        Pipeline([dspy.ChainOfThought("question -> answer"),
                  dspy.ChainOfThought("answer -> critique")], models={"s": model})
    pipe = Pipeline([DSPyModule(dspy.ChainOfThought("question -> answer"), name="solve",
                                outputs="answer")], models={"s": model})
    assert pipe.output_fields == ["answer"]
    assert pipe(question="hi").answer == "HI"
    with pytest.raises(ConfigError, match="DSPyModule wraps a dspy.Module"):
        DSPyModule(object())
    with pytest.raises(ConfigError, match="must be a tandem Node or a dspy.Module"):
        Pipeline([lambda question: question])


def test_declared_outputs_the_module_does_not_return_fail_clearly():
    pipe = Pipeline([DSPyModule(dspy.ChainOfThought("question -> answer"), outputs="summary")],
                    models={"s": scripted(reply=upper)})
    (result,) = pipe.batch([{"question": "x"}])
    assert "not the fields ['summary']" in result.error and "outputs=" in result.error


def test_dspy_settings_lm_is_the_model_when_none_is_bound():
    model = scripted(reply=upper)
    pipe = Pipeline([dspy.ChainOfThought("question -> answer")])
    with pytest.raises(ConfigError, match="dspy.configure"):
        pipe.batch([{"question": "x"}])
    with dspy.context(lm=as_dspy_lm(model)):
        results = pipe.batch([{"question": "x"}, {"question": "y"}])
    assert [r.outputs["answer"] for r in results] == ["X", "Y"]
    assert model.backend.batches == [2]  # the tandem model behind the dspy.LM, batched


class EchoEngine:
    """TEST DOUBLE: a DSPy custom engine (any provider DSPy reaches) answering in chat format."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def complete(self, request):
        from dspy.lm15 import Message, Response, TextPart, Usage

        with self.lock:
            self.calls += 1
        text = chat_reply(answer=request.messages[-1].text.split("\n")[1].upper())
        return Response(id=None, model=request.model, message=Message.assistant([TextPart(text=text)]),
                        finish_reason="stop", usage=Usage(input_tokens=5, output_tokens=3, total_tokens=8))

    def close(self):
        pass


def test_a_dspy_lm_serves_as_a_pipeline_model():
    tandem = scripted(reply=upper)
    assert as_model(as_dspy_lm(tandem)) is tandem  # unwrapped: its calls batch on its backend
    engine = EchoEngine()
    lm = dspy.LM("echo/upper", engine=engine, cache=False)
    pipe = Pipeline([LMNode("question -> answer", model="big")], models={"big": lm})
    assert pipe.models["big"].backend_name == "dspy"
    results = pipe.batch([{"question": "x"}, {"question": "y"}])
    assert [r.outputs["answer"] for r in results] == ["X", "Y"] and engine.calls == 2
    assert results[0].trace[0].tokens_in == 5
    with pytest.raises(ConfigError, match="not a dspy.LM"):
        as_model(object())


def test_a_program_written_for_dspy_lm_runs_unchanged_on_a_tandem_model():
    """The other direction: plain DSPy, its LM a tandem model."""
    program = TopicThenAnswer()
    with dspy.context(lm=as_dspy_lm(scripted(reply=two_step))):
        assert program(question="q").answer == "t-q!"
        outputs = program.batch([dspy.Example(question=q).with_inputs("question") for q in "ab"],
                                num_threads=2, disable_progress_bar=True)
    assert [o.answer for o in outputs] == ["t-a!", "t-b!"]


def test_state_round_trips_without_lms():
    module = dspy.ChainOfThought("question -> answer")
    module.predict.demos = [dspy.Example(question="q", reasoning="r", answer="A")]
    module.predict.lm = as_dspy_lm(scripted(reply=upper))
    state = DSPyModule(module).state()
    assert state["dspy"]["predict"]["lm"] is None  # an artifact holds data, never an engine
    assert module.predict.lm is not None  # the module keeps its own
    fresh = DSPyModule(dspy.ChainOfThought("question -> answer"))
    fresh.set_state(state)
    assert fresh.module.predict.demos[0]["answer"] == "A"


def test_a_state_naming_an_lm_is_refused_before_dspy_imports_anything():
    """DSPy's load_state rebuilds an LM from the engine class its state names (an import): a
    tampered artifact must not get that far."""
    node = DSPyModule(dspy.ChainOfThought("question -> answer"))
    state = node.state()
    state["dspy"]["predict"]["lm"] = {"model": "x", "engine": {"class": "os:system", "state": {}}}
    with pytest.raises(ConfigError, match="names an LM"):
        node.set_state(state)
    assert node.module.predict.lm is None


def test_dspy_optimizers_see_the_inner_predictors():
    pipe = Pipeline(TopicThenAnswer(), models={"s": scripted(reply=two_step)})
    assert [n for n, _ in pipe.named_predictors()] == [
        "nodes['topic_then_answer'].module.topic",
        "nodes['topic_then_answer'].module.answer.predict"]
    with dspy.context(trace=[]):
        pipe(question="q")
        seen = [type(p).__name__ for p, _, _ in dspy.settings.trace]
    assert seen == ["Predict", "Predict"]  # DSPy's trace, collected inside tandem's threads


def test_barrier_batches_threads_and_goes_without_a_busy_one():
    sizes = []
    barrier = Barrier(lambda items: sizes.append(len(items)) or [i * 2 for i in items], window_s=0.02)
    released = threading.Event()
    out = {}

    def caller(i):
        barrier.enter()
        try:
            out[i] = barrier.submit(i)
        finally:
            barrier.leave()

    def busy():  # inside the barrier, but never calls until the others are done
        barrier.enter()
        try:
            released.wait()
        finally:
            barrier.leave()

    threads = [threading.Thread(target=busy)] + [threading.Thread(target=caller, args=(i,))
                                                 for i in range(5)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    released.set()
    threads[0].join()
    assert out == {i: i * 2 for i in range(5)} and sum(sizes) == 5


def test_barrier_passes_a_batch_failure_to_every_call():
    def send(items):
        raise RuntimeError("backend down")

    barrier = Barrier(send)
    barrier.enter()
    with pytest.raises(RuntimeError, match="backend down"):
        barrier.submit("x")
    barrier.leave()


def test_on_a_real_transformers_model_the_calls_are_one_generate(tmp_path):
    """A real (tiny, random) model: its outputs need not parse, but the module's requests reach
    `generate` as one batch and each example carries its own tokens."""
    pytest.importorskip("transformers")
    from tandemlm.tiny import build_tiny_lm

    model = Model("hf", str(build_tiny_lm(tmp_path / "lm", seed=0)), device="cpu",
                  dtype="float32", batch_size=8)
    sizes = []
    generate = model.backend.generate
    model.backend.generate = lambda requests: sizes.append(len(requests)) or generate(requests)
    pipe = Pipeline([DSPyModule(dspy.Predict("question -> answer"), name="qa")],
                    models={"tiny": model})
    pipe.nodes["qa"].module.config["max_tokens"] = 8
    results = pipe.batch([{"question": f"question {i}"} for i in range(4)])
    assert sizes[0] == 4  # the first call of all four examples, one batch
    for result in results:
        assert result.trace[0].tokens_in > 0 and result.trace[0].calls >= 1
        assert result.ok or "Adapter" in result.error or "parse" in result.error.lower()


def test_dspy_bootstrap_few_shot_compiles_a_pipeline_of_dspy_modules():
    """DSPy's optimizer finds the module's predictor, sees its calls in DSPy's trace (made in
    tandem's threads), and the demos it attaches reach the batched prompts."""
    from tandemlm.testing import demo_values

    def shout(request):
        """TEST DOUBLE: upper-cases the question only if a demo shows an upper-cased answer."""
        question = request_field(request, "question")
        learned = any(a.isupper() for a in demo_values(request, "answer"))
        return chat_reply(reasoning="r", answer=question.upper() if learned or question.isupper()
                          else question)

    model = scripted(reply=shout)
    student = Pipeline([dspy.ChainOfThought("question -> answer")], models={"s": model})
    rows = [dspy.Example(question=w, answer=w.upper()).with_inputs("question")
            for w in ["NASA", "IBM", "cat"]]
    assert student(question="owl").answer == "owl"
    compiled = dspy.BootstrapFewShot(metric=lambda ex, pred, trace=None: pred.answer == ex.answer,
                                     max_bootstrapped_demos=2, max_labeled_demos=0
                                     ).compile(student, trainset=rows)
    assert [len(p.demos) for _, p in compiled.named_predictors()] == [2]
    assert [r.outputs["answer"] for r in compiled.batch([{"question": "emu"}, {"question": "yak"}])] \
        == ["EMU", "YAK"]


def test_a_dspy_module_reports_finished_examples_and_counts_parse_failures():
    """DSPy's adapter failing to parse (ChatAdapter, then its JSON fallback) is counted as a
    parse failure of the node; finished examples are reported to a progress listener."""
    from tandemlm.runtime import progress

    def reply(request):
        if request_field(request, "question") == "q0":
            return "no fields at all"
        return upper(request)

    pipe = Pipeline([dspy.ChainOfThought("question -> answer")], models={"s": scripted(reply=reply)})
    heard = []
    rows = [{"question": f"q{i}", "answer": f"Q{i}"} for i in range(4)]
    with progress.listening(heard.append):
        result = evaluate(pipe, rows, lambda ex, pred: pred.answer == ex.answer, progress=False)
    assert result.summary["node_errors"]["chain_of_thought"] == {
        "runs": 4, "failed": 1, "parse_failed": 1, "recovered": 0}
    assert any(text.startswith("chain_of_thought: ") and text.endswith("/4 examples done")
               for text in heard)
