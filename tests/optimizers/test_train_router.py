"""Routers: `TrainRouter` learns from the input which stage answers right, `Calibrate` weighs
routers and hybrids against cascades and singles, and the compiled cascade sends each example
where the calibration said, calling only that stage.

Solvers are `recorded` models replaying rows written here (real backend, synthetic rows): the
cheap model is right on history questions and wrong on algebra ones, the strong one always
right; no confidence is recorded and the first stage has nothing to agree with, so a cascade's
judge cannot tell them apart — only the input can. Then the real recorded ARC data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tandemlm import Model, Pipeline, Solve, evaluate
from tandemlm.modules import Cascade, FeatureJudge, Stage, TextRouter
from tandemlm.optimizers import Calibrate, FitJudges, TrainRouter, compile, load
from tandemlm.runtime import CompileError, ConfigError
from tandemlm.suites import replay

WORDS = "the a of which what when how many name this that river king war sum number".split()
ARC = Path(__file__).resolve().parents[3] / "shared" / "data" / "replay" / "arc_challenge_train.jsonl"


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        algebra = rng.random() < 0.5
        topic = rng.choice(["solve for x", "factor the polynomial", "simplify the equation"]) \
            if algebra else rng.choice(["which dynasty ruled", "in what year did the treaty",
                                         "who was the emperor"])
        prompt = f"{' '.join(rng.sample(WORDS, 5))} {topic} {' '.join(rng.sample(WORDS, 4))}?"
        cheap = "no" if algebra else "yes"
        rows.append({"id": f"q{seed}-{i}", "prompt": prompt, "gold": "yes", "models": {
            "cheap": {"output": cheap, "correct": cheap == "yes", "cost_usd": 0.001},
            "strong": {"output": "yes", "correct": True, "cost_usd": 0.02}}})
    return rows


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = _rows(200, 0) + _rows(100, 1)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = [{"id": r["id"], "prompt": r["prompt"], "gold": "yes"} for r in rows]
    return str(path), examples[:200], examples[200:]


def _build(data: str) -> Pipeline:
    def solver(name):
        return Solve("prompt -> answer", model=Model("recorded", name, data=data), name=name,
                     prompt_field="prompt", key_field="id")
    return Pipeline([Cascade([Stage(solver("cheap"), judge=FeatureJudge(confidence=False)),
                              Stage(solver("strong"))], router=TextRouter(field="prompt"))],
                    name="routed")


def metric(example, prediction, trace=None):
    return prediction.answer == example.gold


def test_a_router_learns_from_the_input_and_calls_only_the_stage_it_picks(data, tmp_path):
    path, train, test = data
    out = tmp_path / "out"
    passes = [FitJudges(), TrainRouter(), Calibrate(match=1.0, order="cost")]
    compiled = compile(_build(path), train, metric, passes=passes, out_dir=out, progress=False)
    _, routing, calibrate = compiled.compile_report
    held = routing.details["cascade"]["router"]
    assert held["cheap"]["held_out_auc"] > 0.95  # out of fold: the topic says it
    # always right: nothing to learn, nothing to rank
    assert held["strong"]["model"] == "constant" and held["strong"]["held_out_auc"] is None
    chosen = calibrate.details["cascade"]["chosen"]
    # No cascade can beat "strong" alone at parity here; routing history to cheap does.
    assert chosen["kind"] in ("router", "hybrid")
    assert calibrate.details["cascade"]["best_by_kind"]["cascade"]["cost"] >= 0.02
    assert chosen["quality"] == 1.0 and chosen["cost"] < 0.015
    cascade = compiled.nodes["cascade"]
    assert cascade.router_threshold == chosen["router_threshold"]

    result = evaluate(compiled, test, metric, progress=False)  # unseen examples
    algebra = [x for x in test if any(t in x["prompt"] for t in ("solve", "factor", "simplify"))]
    calls = result.summary["usage"]
    assert result.score >= 0.97
    # pure routing calls exactly one model per example: cheap on (most) history questions only
    assert calls["cheap"]["calls"] + calls["strong"]["calls"] == len(test) or chosen["kind"] == "hybrid"
    assert calls["cheap"]["calls"] <= len(test) - len(algebra) + 3
    assert result.summary["total_cost_usd"] / len(test) < 0.015
    entered = [r.result.trace[0].info.get("entered_at") for r in result.records]
    assert set(entered) <= {0, 1} and entered.count(1) >= len(algebra) - 3

    loaded = load(out, program=lambda: _build(path))
    again = evaluate(loaded, test, metric, progress=False)
    assert loaded.nodes["cascade"].router_threshold == cascade.router_threshold
    assert again.score == result.score
    assert again.summary["total_cost_usd"] == pytest.approx(result.summary["total_cost_usd"])


def test_a_tampered_or_unmatched_router_state_is_refused(data):
    path, _, _ = data
    cascade = _build(path).nodes["cascade"]
    good = {"weights": [0.0] * 513, "bias": 0.1}
    for bad in ({"0": {"weights": [0.0] * 12, "bias": 0.0}},  # another width
                {"0": {"weights": [float("nan")] * 513, "bias": 0.0}},
                {"x": good}, {"0": {"weights": [0.0] * 513}}):
        with pytest.raises(ConfigError, match="TextRouter"):
            cascade.set_state({"order": [0, 1], "thresholds": [0.5, 0.5],
                               "router": {"stages": bad}, "router_threshold": 0.5})
    with pytest.raises(ConfigError, match="without a fitted router"):
        cascade.set_state({"order": [0, 1], "thresholds": [0.5, 0.5], "router_threshold": 0.5})
    with pytest.raises(ConfigError, match="router_threshold must be a number"):
        cascade.set_state({"order": [0, 1], "thresholds": [0.5, 0.5],
                           "router": {"stages": {"0": good}}, "router_threshold": "high"})
    plain = Pipeline([Cascade([Stage(cascade.solvers[0], judge=FeatureJudge(confidence=False)),
                               Stage(cascade.solvers[1])])]).nodes["cascade"]
    with pytest.raises(ConfigError, match="has no router"):
        plain.set_state({"order": [0, 1], "thresholds": [0.5, 0.5], "router_threshold": 0.5})


def test_train_router_needs_a_router_and_enough_examples(data):
    path, train, _ = data
    plain = Pipeline([Cascade([Stage(Solve("prompt -> answer", model=Model("recorded", m, data=path),
                                           name=m, prompt_field="prompt", key_field="id"),
                                     judge=FeatureJudge(confidence=False) if m == "cheap" else None)
                               for m in ("cheap", "strong")])])
    with pytest.raises(CompileError, match="no cascade with a router"):
        compile(plain, train, metric, passes=[TrainRouter()], progress=False)
    with pytest.raises(CompileError, match="a router needs at least 10"):
        compile(_build(path), train[:6], metric, passes=[TrainRouter()], progress=False)
    with pytest.raises(ConfigError, match="folds must be >= 2"):
        TrainRouter(folds=1)


def test_router_features_are_stable_and_entries_pick_the_first_stage_predicted_right():
    router = TextRouter(buckets=64)
    a, b = router.features(["Solve for x: 2x = 4", "Solve for x: 2x = 4"]), router.features(["Who ruled?"])
    assert a.shape == (2, 65) and np.array_equal(a[0], a[1]) and not np.array_equal(a[0], b[0])
    assert np.linalg.norm(a[0, :64]) == pytest.approx(1.0)
    chances = np.array([[0.9, 0.2, 0.6], [0.5, 0.7, 0.1], [1.0, 1.0, 1.0]])
    assert replay_entries(chances, (0, 1, 2), 0.65) == [0, 1, 2]
    assert replay_entries(chances, (1, 2), 0.65) == [1, 0, 1]
    assert replay_entries(chances, (0, 1, 2), None) == [0, 0, 0]


def replay_entries(chances, chain, tau):
    from tandemlm.modules.router import entries
    return entries(chances, chain, tau).tolist()


@pytest.mark.skipif(not ARC.exists(), reason="the shared replay data is not here")
def test_on_real_recorded_arc_the_router_is_fitted_out_of_fold_and_never_dearer(tmp_path):
    """ARC records no confidence: every stage gets a router model (a constant one where the
    input predicts nothing out of fold), and the chosen point is never dearer than the target."""
    spec = next(s for s in replay.discover(ARC.parent) if s["name"] == "arc_challenge")
    task = replay.task(spec, router=True)
    assert any(isinstance(p, TrainRouter) for p in task.passes)
    compiled = compile(replay.build(**_options(task.program)), task.train[:400], task.metric,
                       passes=task.passes, out_dir=tmp_path / "out", progress=False)
    report = {r.name: r for r in compiled.compile_report}
    held = report["train_router"].details["cascade"]["router"]
    assert len(held) == 11
    for stage in held.values():  # a fitted model only where it beat the constant out of fold
        assert stage["model"] == "constant" or \
            stage["held_out_log_loss"] < stage["constant_log_loss"]
    details = report["calibrate"].details["cascade"]
    assert details["chosen"]["cost"] <= details["reference"]["cost"] + 1e-12
    assert set(details["best_by_kind"]) <= {"single", "cascade", "router", "hybrid"}


def _options(program: str) -> dict:
    """The keyword arguments of a replay task's `build(...)` spec."""
    import ast
    call = ast.parse(program.split(":", 1)[1], mode="eval").body
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def test_a_priced_router_is_charged_where_calibrate_plans_and_where_the_program_runs(data):
    from tandemlm.runtime.backends.hf_classifier import minilm_path

    path, train, test = data
    encoder = Model("hf-classifier", str(minilm_path()), name="router-encoder", price=(10.0, 0.0))

    def build():
        def solver(name):
            return Solve("prompt -> answer", model=Model("recorded", name, data=path), name=name,
                         prompt_field="prompt", key_field="id")
        return Pipeline([Cascade([Stage(solver("cheap"), judge=FeatureJudge(confidence=False)),
                                  Stage(solver("strong"))],
                                 router=TextRouter(field="prompt", encoder=encoder))], name="priced")
    compiled = compile(build(), train, metric, progress=False,
                       # planned on the router the program serves (not its out-of-fold copies),
                       # so the plan and the run on the same rows route alike
                       passes=[FitJudges(), TrainRouter(),
                               Calibrate(match=1.0, order="cost", cross_fit=False)])
    chosen = compiled.compile_report[-1].details["cascade"]["chosen"]
    assert chosen["kind"] in ("router", "hybrid")
    result = evaluate(compiled, train, metric, progress=False)
    routed = result.summary["usage"]["router-encoder"]
    # one embedding call per example, at its price, and Calibrate planned exactly what was paid
    assert routed["calls"] == len(train) and routed["cost_usd"] > 0
    assert chosen["cost"] == pytest.approx(result.summary["total_cost_usd"] / len(train))
    solvers = sum(v["cost_usd"] for k, v in result.summary["usage"].items() if k != "router-encoder")
    assert chosen["cost"] > solvers / len(train)  # the router's share is in the plan
