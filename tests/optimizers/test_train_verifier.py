"""Small generative judges trained from traces: TrainVerifier (verdicts labelled from the metric,
right and wrong answers both; KALMV's error types told apart with the gold answer and the
evidence) and TrainScorer on a generative Score (its yes/no question); a tiny local judge learns
to judge answers it could not judge before.

The answerer is a scripted test double: right (a word of the asked category) on some questions,
wrong on others. The verifier is the real 2-layer Llama of the Finetune tests."""

from __future__ import annotations

import random

import pytest
import torch

from tandemlm import Model, Pipeline, Solve
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.modules.verify import Verify
from tandemlm.optimizers import compile
from tandemlm.optimizers.train_verifier import TrainVerifier
from tandemlm.runtime import CompileError, ConfigError
from tandemlm.testing import chat_reply, request_field

from finetune_task import LORA, base_model_path, small_model

GOOD = ["apple", "river", "stone", "cloud", "tiger", "bread"]
BAD = ["light", "piano", "grass", "ocean", "money", "house"]


def _data(n, seed, start=0):
    """`n` questions whose scripted answers are the twelve words in turn, shuffled: every word
    is answered equally often (a word seen only three times may stay unlearned, and then decides
    a sixth of a held-out set it happens to fill), and half the answers are right."""
    words = [(GOOD + BAD)[i % len(GOOD + BAD)] for i in range(n)]
    random.Random(seed).shuffle(words)
    return [{"question": f"Name a good word ({start + i}).", "given": word}
            for i, word in enumerate(words)]


def answerer_reply(request):
    """TEST DOUBLE answerer: replies with the example's scripted answer (right or wrong)."""
    return chat_reply(answer=ANSWERS[request_field(request, "question")])


TRAIN, HELD = _data(72, seed=5), _data(36, seed=6, start=72)
ANSWERS = {e["question"]: e["given"] for e in TRAIN + HELD}


def metric(example, prediction, trace=None):
    return prediction.answer in GOOD


def _build(base):
    answerer = Model("scripted", "answerer", reply=answerer_reply)
    # The verifier sees the answer alone: the questions differ only by a number it could memorise.
    verify = Verify("small", inputs=("answer",), options=("wrong", "right"),
                    instructions="Is the answer a good word?", adapter=CompactChatAdapter(),
                    scoring="logprobs")
    return Pipeline([Solve("question -> answer", model=answerer, name="answer"), verify],
                    models={"small": small_model(base)}, name="verified")


@pytest.fixture(scope="module")
def base():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model: one thread is as fast, and immune to contention
    yield base_model_path()
    torch.set_num_threads(threads)


def _verdict_accuracy(pipeline, examples):
    results = pipeline.batch(examples)
    return sum((r.outputs["verdict"] == "right") == (r.outputs["answer"] in GOOD)
               for r in results) / len(results)


def test_the_verifier_learns_to_judge_held_out_answers(base, tmp_path):
    pipeline = _build(base)
    compiled = compile(pipeline, TRAIN, metric, out_dir=tmp_path, progress=False,
                       passes=[TrainVerifier(lora=LORA, epochs=24, lr=3e-3, batch_size=8)])
    details = compiled.compile_report[0].details
    truth = sum(e["given"] in GOOD for e in TRAIN)
    assert details["verdicts"]["verify"] == {"right": truth, "wrong": len(TRAIN) - truth}
    # Untrained, it cannot know which words are good (any constant verdict scores 0.5 here);
    # trained, it judges every word it saw (1.0 over compile seeds 0-4 and 1 or 2 threads; one
    # of the twelve words left unlearned would still pass, at 0.92; labels uncorrelated with
    # the metric reach 0.5, and so does no training).
    before, after = _verdict_accuracy(pipeline, HELD), _verdict_accuracy(compiled, HELD)
    assert after >= 0.85 and after - before >= 0.3, (before, after)
    assert compiled.nodes["verify"].model.adapter.startswith(str(tmp_path / "adapters"))


class _Call:
    def __init__(self, example, inputs, passed=False):
        self.example, self.passed = example, passed
        self.trace = type("T", (), {"inputs": inputs})()


class _Ctx:
    @staticmethod
    def metric(example, prediction, trace=None):
        return prediction.answer == example.answer


def test_kalmv_labels_tell_retrieval_from_generation_errors():
    node = Verify(Model("scripted", "v", reply="x"))
    train = TrainVerifier(gold="answer")
    right = _Call({"answer": "Paris"}, {"question": "q", "evidence": "Paris is big", "answer": "Paris"})
    missed = _Call({"answer": "Paris"}, {"question": "q", "evidence": "Paris is big", "answer": "Rome"})
    absent = _Call({"answer": "Paris"}, {"question": "q", "evidence": "Lyon is big", "answer": "Rome"})
    assert [train.label(node, c, _Ctx) for c in (right, missed, absent)] == \
        ["correct", "generation_error", "retrieval_error"]
    # without gold=, a wrong answer gets the first non-positive option
    assert TrainVerifier().label(node, missed, _Ctx) == "retrieval_error"


def test_misuse_is_refused_with_the_reason(base):
    with pytest.raises(ConfigError, match="no teacher"):
        TrainVerifier(teacher={"small": "small"})
    plain = Pipeline([Solve("question -> answer", model=Model("scripted", "a", reply=answerer_reply))])
    with pytest.raises(CompileError, match="no Verify node"):
        compile(plain, TRAIN[:4], metric, passes=[TrainVerifier()], progress=False)
    only_good = [e for e in TRAIN if e["given"] in GOOD][:6]
    with pytest.raises(CompileError, match="right and wrong answers"):
        compile(_build(base), only_good, metric, passes=[TrainVerifier()], progress=False)


def test_train_scorer_teaches_a_small_generative_judge_its_yes_no(base, tmp_path):
    """A `Score` on a generative model (P(Yes) from log-probabilities) judging a cascade stage:
    TrainScorer fits a LoRA adapter answering the node's own yes/no question."""
    from tandemlm.modules.cascade import Cascade, Stage
    from tandemlm.modules.score import Score
    from tandemlm.optimizers import TrainScorer

    def build():
        answerer = Model("scripted", "answerer", reply=answerer_reply)
        strong = Model("scripted", "strong", reply=lambda r: chat_reply(answer=GOOD[0]))
        judge = Score("small", fields=("answer",), name="judge",
                      instructions="Is the answer a good word?")
        return Pipeline([Cascade([Stage(Solve("question -> answer", model=answerer, name="cheap"),
                                        judge=judge, threshold=0.5),
                                  Stage(Solve("question -> answer", model=strong, name="strong"))])],
                        models={"small": small_model(base)}, name="judged")

    compiled = compile(build(), TRAIN, metric, out_dir=tmp_path, progress=False,
                       passes=[TrainScorer(lora=LORA, epochs=30, lr=3e-3, batch_size=8, holdout=0.25)])
    details = compiled.compile_report[0].details["cascade/judge"]
    assert details["kind"] == "yes_no"
    # On its held-out pairs: 0.14-0.49 before, 1.0 after (compile seeds 0-6; 20 epochs left
    # one seed at 0.94).
    assert details["auc_after"] >= 0.9 and details["auc_after"] - details["auc_before"] >= 0.3, details
    judge_model = compiled.nodes["cascade"].judge_nodes[0].model
    assert judge_model.adapter.startswith(str(tmp_path / "scorers"))

    def outcome(pipeline):
        """(right answers, cheap answers kept, cascade decisions that were right: the cheap
        answer kept exactly when it is right)."""
        results = pipeline.batch(HELD)
        kept = [r.trace[0].info["answered_by"] == 0 for r in results]
        good = [ANSWERS[e["question"]] in GOOD for e in HELD]
        return (sum(r.outputs["answer"] in GOOD for r in results) / len(results),
                sum(kept) / len(kept), sum(k == g for k, g in zip(kept, good, strict=True)) / len(kept))

    # Untrained, the judge does not tell right cheap answers from wrong ones: whatever it trusts
    # (this base model trusts every one), its decisions are right on about half of HELD, where
    # half the cheap answers are right. Trained, it keeps the right ones and escalates the wrong
    # ones (every decision right over compile seeds 0-6; labels uncorrelated with the metric
    # leave the decisions at 0.5).
    _, _, decided_before = outcome(build())
    right, cheap, decided = outcome(compiled)
    assert decided >= 0.85 and decided - decided_before >= 0.3, (decided_before, decided)
    assert right >= 0.9 and cheap >= 0.3, (right, cheap)
