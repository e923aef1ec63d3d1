"""Calibrate: the chosen chain and thresholds are the optimum for the target, the curve's figures
equal what the calibrated cascade really does when run, and the curve is saved.

Solvers are `recorded` models replaying a file written here (real backend, synthetic rows); the
judge is a scripted node (a labelled test double) whose score per question is fixed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tandemlm import LMNode, Model, Pipeline, Solve, evaluate
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.optimizers import Calibrate, compile, load
from tandemlm.runtime import CompileError, ConfigError
from tandemlm.testing import chat_reply, request_field

N = 40
# cheap is right on even questions; its judge says so with 0.9 (right) vs 0.2 (wrong), except on
# every 10th question, where the judge is fooled (0.9 on a wrong answer).
CHEAP_RIGHT = {i: i % 2 == 0 for i in range(N)}
JUDGE = {i: 0.9 if CHEAP_RIGHT[i] or i % 10 == 5 else 0.2 for i in range(N)}
MID_RIGHT = {i: i % 4 != 1 for i in range(N)}  # wrong on 10 of 40


def _rows():
    rows = []
    for i in range(N):
        models = {"cheap": ("yes" if CHEAP_RIGHT[i] else "no", 0.001),
                  "mid": ("yes" if MID_RIGHT[i] else "no", 0.004),
                  "strong": ("yes", 0.02)}
        rows.append({"id": f"q{i}", "prompt": f"P{i}", "question": f"q{i}", "gold": "yes",
                     "models": {m: {"output": out, "correct": out == "yes", "cost_usd": usd}
                                for m, (out, usd) in models.items()}})
    return rows


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return str(path)


def _judge(name):
    # Test double: scores by question, as a trained scorer would.
    model = Model("scripted", f"judge-{uuid.uuid4().hex}",
                  reply=lambda r: chat_reply(score=JUDGE[int(request_field(r, "question")[1:])]))
    return LMNode("question, answer -> score: float", model=model, name=name)


def _build(data, order=("strong", "mid", "cheap")):
    def solver(name):
        return Solve("prompt, question -> answer", model=Model("recorded", name, data=data), name=name,
                     prompt_field="prompt", key_field="id")
    stages = [Stage(solver(name), judge=None if name == "strong" else _judge(f"judge_{name}"),
                    threshold=0.5) for name in order]
    stages.sort(key=lambda s: s.judge is None)  # the unjudged stage must come last here
    return Pipeline([Cascade(stages)], name="calib")


def metric(example, prediction, trace=None):
    return prediction.answer == example.gold


def _examples():
    return [{k: r[k] for k in ("id", "prompt", "question", "gold")} for r in _rows()]


def test_match_picks_the_cheapest_chain_at_parity_and_the_curve_is_what_really_happens(data, tmp_path):
    out = tmp_path / "out"
    compiled = compile(_build(data), _examples(), metric, passes=[Calibrate(match=1.0)],
                       out_dir=out, progress=False)
    cascade = compiled.nodes["cascade"]
    names = [s.name for s in cascade.solvers]
    # Only "strong" is always right, and every threshold that lets a judged stage answer also
    # lets some of its wrong answers through (the fooled 0.9s): at parity, strong alone is optimal.
    details = compiled.compile_report[0].details["cascade"]
    assert details["best_single"]["stages"] == ["strong"]
    assert details["chosen"]["quality"] == 1.0
    # The run of the calibrated pipeline equals the curve's point, quality and cost.
    result = evaluate(compiled, _examples(), metric, progress=False)
    assert result.score == pytest.approx(details["chosen"]["quality"])
    assert result.summary["total_cost_usd"] / N == pytest.approx(details["chosen"]["cost"])
    assert [names[i] for i in cascade.order] == details["chosen"]["stages"]
    curve = out / "curves" / "01-cascade"
    assert json.loads((curve / "curve.json").read_text())["chosen"] == details["chosen"]
    assert (curve / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_lower_match_target_buys_a_cheaper_chain_in_cheap_first_order(data):
    compiled = compile(_build(data), _examples(), metric, passes=[Calibrate(match=0.9)],
                       progress=False)
    cascade = compiled.nodes["cascade"]
    details = compiled.compile_report[0].details["cascade"]
    # cheap (threshold in (0.2, 0.9]) then strong: wrong only on the 4 fooled -> 0.9, paying
    # cheap everywhere and strong on the 16 escalated (the scripted judge has no price). Every
    # other chain reaching 0.9 costs more (mid -> strong: 0.012).
    assert details["chosen"]["stages"] == ["cheap", "strong"]
    assert 0.2 < details["chosen"]["thresholds"][0] <= 0.9
    assert details["chosen"]["quality"] == pytest.approx(0.9)
    escalated = sum(JUDGE[i] < 0.5 for i in range(N)) / N
    assert details["chosen"]["cost"] == pytest.approx(0.001 + escalated * 0.02)
    result = evaluate(compiled, _examples(), metric, progress=False)
    assert result.score == pytest.approx(0.9)
    assert result.summary["total_cost_usd"] / N == pytest.approx(details["chosen"]["cost"])
    assert [cascade.solvers[i].name for i in cascade.order] == ["cheap", "strong"]


def test_budget_gives_the_best_quality_within_the_cost(data):
    compiled = compile(_build(data), _examples(), metric, passes=[Calibrate(budget=0.005)],
                       progress=False)
    chosen = compiled.compile_report[0].details["cascade"]["chosen"]
    # Within 0.005: cheap alone 0.5, cheap -> mid 0.7 (0.0026), mid -> cheap 0.55, mid alone 0.75.
    assert chosen["stages"] == ["mid"]
    assert chosen["quality"] == pytest.approx(0.75)
    assert chosen["cost"] == pytest.approx(0.004)


def test_calibrated_state_survives_save_and_load(data, tmp_path):
    out = tmp_path / "out"
    compiled = compile(_build(data), _examples(), metric, passes=[Calibrate(match=0.9)],
                       out_dir=out, progress=False)
    loaded = load(out, program=lambda: _build(data))
    assert loaded.nodes["cascade"].order == compiled.nodes["cascade"].order
    assert loaded.nodes["cascade"].thresholds == compiled.nodes["cascade"].thresholds
    a = evaluate(compiled, _examples(), metric, progress=False)
    b = evaluate(loaded, _examples(), metric, progress=False)
    assert [r.result.outputs for r in a.records] == [r.result.outputs for r in b.records]


def test_bad_targets_and_pipelines_without_a_cascade_are_refused(data):
    with pytest.raises(ConfigError, match="exactly one target"):
        Calibrate()
    with pytest.raises(ConfigError, match="exactly one target"):
        Calibrate(match=0.9, budget=1.0)
    plain = Pipeline([Solve("prompt, question -> answer", model=Model("recorded", "strong", data=data),
                            prompt_field="prompt", key_field="id")])
    with pytest.raises(CompileError, match="no cascade"):
        compile(plain, _examples(), metric, passes=[Calibrate(match=1.0)], progress=False)


def test_cost_order_searches_only_chains_from_cheaper_to_dearer_stages(data, tmp_path):
    compiled = compile(_build(data), _examples(), metric, out_dir=tmp_path / "out",
                       passes=[Calibrate(budget=0.005, order="cost")], progress=False)
    price = {"cheap": 0.001, "mid": 0.004, "strong": 0.02}
    curve = json.loads((tmp_path / "out" / "curves" / "01-cascade" / "curve.json").read_text())
    assert len(curve["frontier"]) > 1
    for point in curve["frontier"]:
        assert [price[s] for s in point["stages"]] == sorted(price[s] for s in point["stages"])
    assert compiled.compile_report[0].details["cascade"]["chosen"]["stages"] == ["mid"]


def test_z_makes_a_chain_clear_the_target_by_its_standard_error(data):
    plain, guarded = (compile(_build(data), _examples(), metric, progress=False,
                              passes=[Calibrate(match=0.9, z=z)]).compile_report[0].details["cascade"]
                      for z in (0.0, 1.0))
    assert plain["chosen"]["stages"] == ["cheap", "strong"] and plain["chosen"]["quality"] == 0.9
    # cheap -> strong differs from strong on the 4 fooled questions: its error, counting one
    # disagreement more, is sqrt(4 * 0.9² + 36 * 0.1² + 1) / 40 ≈ 0.054, so 0.9 no longer clears
    chosen = guarded["chosen"]
    assert chosen["quality"] - guarded["target"] >= chosen["se"] - 1e-12 or len(chosen["stages"]) == 1
    assert chosen["cost"] > plain["chosen"]["cost"] and chosen["quality"] > plain["chosen"]["quality"]


def test_an_infinite_threshold_never_stops_there_and_is_saved_as_json(data, tmp_path):
    pipe = _build(data)
    cascade = pipe.nodes["cascade"]
    names = [s.name for s in cascade.solvers]
    cascade.set_state({"order": [names.index("cheap"), names.index("strong")],
                       "thresholds": ["inf" if n == "cheap" else 0.5 for n in names]})
    state = json.loads(json.dumps(cascade.state(), allow_nan=False))
    assert state["thresholds"][names.index("cheap")] == "inf"
    result = evaluate(pipe, _examples(), metric, progress=False)
    assert result.score == 1.0  # strong answered everything
    assert all(r.result.trace[0].info["answered_by"] == names.index("strong") for r in result.records)
    assert result.summary["total_cost_usd"] / N == pytest.approx(0.001 + 0.02)


def _tied_rows():
    # "near" is wrong on one question of 40, "best" on none, at twice near's price: best is the
    # best on this sample, but one question does not show that it is better
    return [{"id": f"q{i}", "prompt": f"P{i}", "question": f"q{i}", "gold": "yes",
             "models": {"near": {"output": "no" if i == 7 else "yes", "correct": i != 7,
                                 "cost_usd": 0.01},
                        "best": {"output": "yes", "correct": True, "cost_usd": 0.02}}}
            for i in range(N)]


def test_delta_treats_models_within_noise_as_one_target_and_never_pays_more(tmp_path):
    path = tmp_path / "tied.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _tied_rows()))
    def build():
        solvers = [Solve("prompt, question -> answer", model=Model("recorded", m, data=str(path)),
                         name=m, prompt_field="prompt", key_field="id") for m in ("near", "best")]
        return Pipeline([Cascade([Stage(solvers[0], judge=_judge("judge_near")),
                                  Stage(solvers[1])])], name="tied")
    examples = [{k: r[k] for k in ("id", "prompt", "question", "gold")} for r in _tied_rows()]
    z_rule, robust, noisy, strict = (
        compile(build(), examples, metric, progress=False, passes=[calibrate])
        .compile_report[0].details["cascade"]
        for calibrate in (Calibrate(match=1.0, z=1.0), Calibrate(match=1.0, delta=0.1, tie=0.8),
                          Calibrate(match=1.0, delta=0.1, tolerance_se=1.0, tie=0.8),
                          Calibrate(match=1.0, delta=0.1, tie=0.55)))
    assert z_rule["chosen"]["stages"] == ["best"]
    # best beats near in about 64% of resamples (those that draw question 7): under 80%, tied;
    # over 55%, not
    assert robust["tied"] == ["near", "best"] and robust["reference"]["stages"] == ["near"]
    assert strict["tied"] == ["best"] and strict["reference"]["stages"] == ["best"]
    assert robust["chosen"]["cost"] <= robust["reference"]["cost"] < robust["best_single"]["cost"]
    assert robust["target"] == pytest.approx(39 / 40)
    # 40 examples: a point other than the best single stage is flagged as chosen on too few
    assert robust["chosen"]["stages"] != ["best"] and robust["small_sample"]
    assert not z_rule["small_sample"]
    # one standard error of near's accuracy on 40 rows lowers the target by about 2.5 points
    assert noisy["target"] == pytest.approx(39 / 40 - (39 / 40 * 1 / 40 / 40) ** 0.5, abs=0.003)
    assert noisy["chosen"]["cost"] <= robust["chosen"]["cost"]


def test_delta_chooses_the_cheapest_point_that_holds_in_most_resamples(data):
    import numpy as np

    from tandemlm.optimizers.cost_quality import _outcome, _scores, cost_quality_points, robust_choice
    from tandemlm.optimizers.passes import CompileContext
    from tandemlm.optimizers.stage_runs import cascade_inputs, cascades, run_every_stage
    from tandemlm.optimizers.trace_store import TraceStore

    pipe = _build(data)
    store = TraceStore(metric)
    ctx = CompileContext(trainset=_examples(), valset=[], metric=metric, store=store, out=Path("."))
    cascade = cascades(pipe)["cascade"]
    runs = run_every_stage(pipe, "cascade", cascade_inputs(store.run(pipe, _examples()), "cascade"), ctx)
    table, points = cost_quality_points(runs, cascade.judges)
    loose, strict = (robust_choice(table, points, 0.9, delta=delta, tolerance=0.0, resamples=400)[0]
                     for delta in (0.45, 0.05))
    assert loose.cost <= strict.cost
    # recompute the rule for the strict choice and every cheaper point, with the same resamples
    n = len(table.correct[0])
    w = np.random.default_rng(0).multinomial(n, np.full(n, 1 / n), size=400) / n
    strong = [s.name for s in cascade.solvers].index("strong")  # the reference: the others lose
    target = 0.9 * (w @ table.correct[strong])
    def holds(p):
        right, _ = _outcome(table, p.chain, _scores(table, p.chain), p.thresholds)
        return np.mean(w @ right >= target - 1e-12) >= 0.95 - 1e-12
    assert holds(strict)
    assert not any(holds(p) for p in points if p.cost < strict.cost)
    with pytest.raises(ConfigError, match="delta"):
        Calibrate(match=1.0, delta=0.7)
    with pytest.raises(ConfigError, match="match target only"):
        Calibrate(budget=1.0, delta=0.1)


@pytest.mark.parametrize("block", [250_000, 70])
def test_chain_points_in_arrays_equal_the_point_by_point_evaluation(monkeypatch, block):
    # Synthetic stage arrays (random correctness, costs and scores with gaps and ties): the array
    # search must give the figures of `_point`, one configuration at a time, in the same order
    # (quality exactly, cost and se up to rounding), also when the combinations are cut into blocks.
    import itertools

    import numpy as np

    from tandemlm.optimizers import cost_quality
    from tandemlm.optimizers.stage_runs import StageRun

    rng = np.random.default_rng(3)
    n = 53
    runs = []
    for s in range(4):
        scores = [None if rng.random() < 0.1 else round(float(x), 1) for x in rng.random(n)]
        runs.append(StageRun(s, f"m{s}", [], list(rng.random(n) < 0.4 + 0.15 * s),
                             list(rng.random(n) * 10.0 ** (s - 4)), [0.0] * n, scores,
                             [None] * n, list(rng.random(n) * 1e-6), [0.0] * n))
    table = cost_quality._Table(runs, cross_fit=False)
    table.reference = table.correct[3]
    monkeypatch.setattr(cost_quality, "BLOCK", block)
    for chain in [(2,), (0, 3), (1, 0, 3), (0, 1, 2, 3)]:
        got = cost_quality._chain_points(table, chain, grid=6)
        raw = [table.score(s, chain[:k]) for k, s in enumerate(chain[:-1])]
        grids = [table.thresholds(r, 6) for r in raw]
        scores = [np.nan_to_num(r, nan=-np.inf) for r in raw]
        want = [cost_quality._point(table, chain, scores, combo) for combo in itertools.product(*grids)]
        assert [(p.chain, p.thresholds, p.quality) for p in got] == \
            [(p.chain, p.thresholds, p.quality) for p in want]
        for field in ("cost", "se"):
            assert [getattr(p, field) for p in got] == pytest.approx(
                [getattr(p, field) for p in want], rel=1e-12, abs=1e-15)
        assert len(got) > 1 or len(chain) == 1
