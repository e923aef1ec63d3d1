"""Escalate on a real tiny model: the cascade's small first stage fails the task, so the certified
cascade passes everything up to the reference; it learns from the reference's answers to the
inputs it escalated (LoRA through the real peft + transformers path), the certified cost falls,
and the loop stops — keeping the best round — when a round no longer lowers it.

The task and the small model are `finetune_task.py`'s (a letter code -> a word); the codes here
carry two digits, so there are enough distinct inputs to learn from and to certify on. The
reference stage is the task's rule (a scripted test double) at a price."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from finetune_task import LORA, WORDS, base_model_path, metric, rule_reply, small_model, word_node

from tandemlm import LMNode, Model, Pipeline, evaluate
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.judges import AnswerLogprob
from tandemlm.optimizers import Calibrate, Escalate, compile, load
from tandemlm.optimizers.escalate import _split
from tandemlm.runtime import CompileError, ConfigError
from tandemlm.testing import chat_reply

pytestmark = [pytest.mark.heavy, pytest.mark.usefixtures("one_torch_thread")]

pytest.importorskip("peft")


def _codes() -> list[dict]:
    codes = [f"{letter}{n:02d}" for letter in WORDS for n in range(100)]
    random.Random(3).shuffle(codes)
    return [{"code": c, "word": WORDS[c[0]]} for c in codes]


def _build(base: Path) -> Pipeline:
    # TEST DOUBLE reference: the rule, priced, in the last stage's seat
    rule = Model("scripted", "rule", reply=rule_reply, price=(1000.0, 1000.0))
    reference = LMNode("code -> word", model=rule, name="rule", max_tokens=24)
    return Pipeline([Cascade([Stage(word_node(small_model(base)), judge=AnswerLogprob(), threshold=0.5),
                              Stage(reference)])], name="escalating")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rows = _codes()
    labelled, unlabeled = rows[:60], [{"code": r["code"]} for r in rows[60:660]]
    out = tmp_path_factory.mktemp("escalate") / "out"
    step = Escalate(Calibrate(epsilon=0.05), rounds=4, min_saving=0.05, **{
        "lora": LORA, "epochs": 6, "lr": 3e-3, "batch_size": 8, "max_examples": 80})
    compiled = compile(_build(base_model_path()), labelled, metric, unlabeled=unlabeled,
                       passes=[step], out_dir=out, progress=False)
    return compiled, out, labelled, unlabeled, rows[660:760]


def test_the_certified_cost_falls_after_learning_and_the_loop_stops_when_it_does_not(run):
    compiled, _, _, _, held = run
    (step,) = compiled.compile_report
    rounds = step.details["rounds"]
    first = rounds[0]
    print("\n" + "\n".join(f"round {r['round']}: cost {r['cost_fraction']:.3f}, first stage "
                           f"{r['first_stage_accuracy']:.3f}, learnt {r['learnt']}, kept {r['kept']}"
                           for r in rounds))
    # round 0: the untrained stage is wrong on (nearly) everything, so nothing cheaper is certified
    assert first["first_stage_accuracy"] < 0.3 and first["cost_fraction"] > 0.9
    # the rounds that followed learnt from the reference's answers to what the stage passed up;
    # kept rounds lowered the certified cost each time, by at least min_saving
    assert all(r["learnt"] >= 50 for r in rounds[1:])
    kept = [r for r in rounds if r["kept"]]
    assert [r["round"] for r in kept] == list(range(len(kept)))  # kept until the first that was not
    assert all(b["cost_fraction"] <= a["cost_fraction"] - 0.05 for a, b in itertools.pairwise(kept))
    best = kept[-1]
    assert best["round"] >= 1 and best["certified"] and best["first_stage_accuracy"] > 0.6
    assert best["cost_fraction"] < 0.6
    # the loop stopped: rounds ran out, or the next round did not lower the cost enough
    assert len(rounds) == 5 or not rounds[-1]["kept"]
    if not rounds[-1]["kept"]:
        assert rounds[-1]["cost_fraction"] > best["cost_fraction"] - 0.05
    # the program is the best kept round's: its adapter, its calibration
    stage = compiled.nodes["cascade"].solvers[0]
    assert Path(stage.model.adapter).name.endswith(f"round-{best['round']}")
    assert step.details["cascade"]["cost_all_rows"] == pytest.approx(best["cost"])
    # on held-out codes it answers like the reference at a fraction of the reference's cost
    result = evaluate(compiled, held, metric, progress=False)
    reference = Pipeline([_build(base_model_path()).nodes["cascade"].solvers[1]], name="rule_only")
    alone = evaluate(reference, held, metric, progress=False)
    assert alone.score == 1.0 and result.score >= 0.95
    assert (result.summary["total_cost_usd"] or 0.0) < 0.8 * alone.summary["total_cost_usd"]


def test_the_stage_never_learns_from_an_input_it_is_certified_on(run):
    compiled, out, _, unlabeled, _ = run
    learning, certifying = _split(unlabeled, 0.5, 0)
    assert {r["code"] for r in learning}.isdisjoint({r["code"] for r in certifying})
    assert compiled.compile_report[0].details["rows"] == {"learn": len(learning),
                                                           "certify": len(certifying)}
    promise = compiled.compile_report[0].details["cascade"]["promise"]
    assert promise["rows"]["unlabeled"] == len(certifying)
    loaded = load(out, program=lambda: _build(base_model_path()))
    assert loaded.nodes["cascade"].solvers[0].model.fingerprint == \
        compiled.nodes["cascade"].solvers[0].model.fingerprint


def test_escalate_needs_unlabeled_inputs_a_trainable_stage_and_a_promise(tmp_path):
    rows = _codes()[:20]
    with pytest.raises(CompileError, match="unlabeled inputs"):
        compile(_build(base_model_path()), rows, metric, passes=[Escalate()], progress=False)
    rule = Model("scripted", "rule2", reply=rule_reply)
    sure = Model("scripted", "sure", reply=lambda r: chat_reply(score=0.9))  # TEST DOUBLE judge
    untrainable = Pipeline([Cascade([Stage(LMNode("code -> word", model=rule, name="a"),
                                           judge=LMNode("code, word -> score: float", model=sure)),
                                     Stage(LMNode("code -> word", model=rule, name="b"))])])
    with pytest.raises(CompileError, match="fine-tuned here"):
        compile(untrainable, rows, metric, unlabeled=[{"code": "a01"}, {"code": "b02"}],
                passes=[Escalate()], progress=False)
    with pytest.raises(ConfigError, match="epsilon target"):
        Escalate(Calibrate(match=1.0))
    assert Escalate(calibrate={"epsilon": 0.02}).calibrate.epsilon == 0.02
