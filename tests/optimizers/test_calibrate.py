"""Calibrate: the chosen chain and thresholds are the optimum for the target, the curve's figures
equal what the calibrated cascade really does when run, and the curve is saved.

Solvers are `recorded` models replaying a file written here (real backend, synthetic rows); the
judge is a scripted node (a labelled test double) whose score per question is fixed."""

from __future__ import annotations

import json
import uuid

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
    assert Calibrate().epsilon == 0.01 and Calibrate().delta == 0.1  # the default: a promise
    with pytest.raises(ConfigError, match="one target"):
        Calibrate(match=0.9, budget=1.0)
    with pytest.raises(ConfigError, match="one target"):
        Calibrate(epsilon=0.01, match=1.0)
    with pytest.raises(ConfigError, match="goes with an epsilon"):
        Calibrate(match=1.0, delta=0.1)
    for bad in ({"epsilon": 1.5}, {"epsilon": 0.01, "delta": 0.7}, {"select": 1.0}):
        with pytest.raises(ConfigError):
            Calibrate(**bad)
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


@pytest.mark.parametrize("block", [250_000, 70])
def test_chain_points_in_arrays_equal_the_point_by_point_evaluation(monkeypatch, block):
    # Synthetic stage arrays (random correctness, costs and scores with gaps and ties): the array
    # search must give the figures of `_point`, one configuration at a time, in the same order
    # (quality and discord exactly, cost up to rounding), also when the combinations are cut
    # into blocks; and what it keeps by default is exactly the chain's two Pareto frontiers.
    import itertools

    import numpy as np

    from tandemlm.optimizers import cost_quality
    from tandemlm.optimizers.cost_table import table_of
    from tandemlm.optimizers.stage_runs import StageRun

    rng = np.random.default_rng(3)
    n = 53
    runs = []
    for s in range(4):
        scores = [None if rng.random() < 0.1 else round(float(x), 1) for x in rng.random(n)]
        runs.append(StageRun(s, f"m{s}", [], list(rng.random(n) < 0.4 + 0.15 * s),
                             list(rng.random(n) * 10.0 ** (s - 4)), [0.0] * n, scores,
                             [None] * n, list(rng.random(n) * 1e-6), [0.0] * n))
    table = table_of(runs, cross_fit=False).relative_to(3)
    monkeypatch.setattr(cost_quality, "BLOCK", block)
    for chain in [(2,), (0, 3), (1, 0, 3), (0, 1, 2, 3)]:
        got = cost_quality._chain_points(table, chain, grid=6, every=True)
        raw = [table.score(s, chain[:k]) for k, s in enumerate(chain[:-1])]
        grids = [table.thresholds(r, 6) for r in raw]
        scores = [np.nan_to_num(r, nan=-np.inf) for r in raw]
        want = [cost_quality._point(table, chain, scores, combo) for combo in itertools.product(*grids)]
        assert [(p.chain, p.thresholds, p.quality) for p in got] == \
            [(p.chain, p.thresholds, p.quality) for p in want]
        for field in ("cost", "discord"):
            assert [getattr(p, field) for p in got] == pytest.approx(
                [getattr(p, field) for p in want], rel=1e-12, abs=1e-15)
        assert len(got) > 1 or len(chain) == 1
        kept = cost_quality._chain_points(table, chain, grid=6)
        def frontier_of(key, want=want):
            best, out = None, set()
            for p in sorted(want, key=lambda p: (p.cost, key(p))):
                if best is None or key(p) < best:
                    out.add(p.thresholds)
                    best = key(p)
            return out
        assert {p.thresholds for p in kept} == frontier_of(lambda p: -p.quality) | \
            frontier_of(lambda p: p.discord)


def _agreeing_rows(n, fooled_every=None):
    # cheap answers "yes" (as strong does) on even questions and "no" on odd ones; its judge says
    # 0.9 on yes and 0.1 on no, except on every `fooled_every`-th question, where it is fooled
    rows = []
    for i in range(n):
        fooled = fooled_every is not None and i % fooled_every == 1
        cheap = "yes" if i % 2 == 0 else "no"
        rows.append({"id": f"q{i}", "prompt": f"P{i}", "question": f"q{i}", "gold": "yes",
                     "score": 0.9 if cheap == "yes" or fooled else 0.1,
                     "models": {"cheap": {"output": cheap, "correct": cheap == "yes", "cost_usd": 0.001},
                                "strong": {"output": "yes", "correct": True, "cost_usd": 0.02}}})
    return rows


def _agreeing_build(path, rows, price=None):
    by_question = {r["question"]: r["score"] for r in rows}
    # Test double: a judge scoring by question, as a trained scorer would (priced when asked).
    model = Model("scripted", f"judge-{uuid.uuid4().hex}", price=price,
                  reply=lambda r: chat_reply(score=by_question[request_field(r, "question")]))
    judge = LMNode("question, answer -> score: float", model=model, name="judge_cheap")
    def solver(name):
        return Solve("prompt, question -> answer", model=Model("recorded", name, data=str(path)),
                     name=name, prompt_field="prompt", key_field="id")
    return Pipeline([Cascade([Stage(solver("cheap"), judge=judge, threshold=0.5),
                              Stage(solver("strong"))])], name="agree")


def _split_rows(tmp_path, rows, labelled):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = [{k: r[k] for k in ("id", "prompt", "question", "gold")} for r in rows]
    inputs = [{k: r[k] for k in ("id", "prompt", "question")} for r in rows[labelled:]]
    return path, examples[:labelled], inputs


def test_few_labelled_rows_certify_nothing_and_the_report_says_how_many_would(tmp_path):
    rows = _agreeing_rows(60)
    path, train, _ = _split_rows(tmp_path, rows, 60)
    compiled = compile(_agreeing_build(path, rows), train, metric, passes=[Calibrate()],
                       progress=False)
    details = compiled.compile_report[0].details["cascade"]
    promise = details["promise"]
    # cheap -> strong never loses strong's answer here, but 60 rows cannot show it
    assert details["chosen"]["stages"] == ["strong"] and not promise["certified"]
    assert promise["reference"] == "strong" and promise["rows"]["labelled"] == 60
    assert promise["needed"]["rows"] > 60 and promise["needed"]["point"]["stages"] == ["cheap", "strong"]
    assert promise["statement"].startswith("no saving certified on 60 labelled rows")


def test_unlabeled_inputs_certify_a_chain_that_keeps_the_references_answers(tmp_path):
    rows = _agreeing_rows(700)
    path, train, inputs = _split_rows(tmp_path, rows, 60)
    out = tmp_path / "out"
    compiled = compile(_agreeing_build(path, rows), train, metric, unlabeled=inputs,
                       passes=[Calibrate(epsilon=0.01)], out_dir=out, progress=False)
    details = compiled.compile_report[0].details["cascade"]
    promise = details["promise"]
    assert promise["certified"] and details["chosen"]["stages"] == ["cheap", "strong"]
    assert promise["rows"] == {"labelled": 60, "unlabeled": 640, "selection": 210,
                               "certification": 490}
    assert promise["bound"] <= 0.01 and promise["observed"]["unlabeled"] == 0.0
    # every stage answered the unlabeled inputs once; the report says what that cost
    spent = details["unlabeled"]
    assert spent["rows"] == 640 and spent["reference"] == pytest.approx(640 * 0.02)
    assert spent["total"] == pytest.approx(640 * (0.02 + 0.001))
    assert details["cost_all_rows"] == pytest.approx(0.001 + 0.5 * 0.02, rel=0.02)
    result = evaluate(compiled, train, metric, progress=False)
    assert result.score == 1.0
    assert result.summary["total_cost_usd"] / len(train) == pytest.approx(details["chosen"]["cost"])
    # unlabeled inputs are part of what a resumed compile must share
    again = compile(_agreeing_build(path, rows), train, metric, unlabeled=inputs[:-1],
                    passes=[Calibrate(epsilon=0.01)], out_dir=out, progress=False)
    assert not again.compile_report[0].resumed


def test_unlabeled_inputs_where_the_cheap_answer_differs_unseen_certify_nothing(tmp_path):
    rows = _agreeing_rows(700, fooled_every=20)  # 5% of answers pass the judge yet differ
    path, train, inputs = _split_rows(tmp_path, rows, 60)
    compiled = compile(_agreeing_build(path, rows), train, metric, unlabeled=inputs,
                       passes=[Calibrate(epsilon=0.01)], progress=False)
    details = compiled.compile_report[0].details["cascade"]
    assert not details["promise"]["certified"] and details["chosen"]["stages"] == ["strong"]
    # with a looser promise (10 points) the same chain is certified
    loose = compile(_agreeing_build(path, rows), train, metric, unlabeled=inputs,
                    passes=[Calibrate(epsilon=0.1)], progress=False)
    assert loose.compile_report[0].details["cascade"]["promise"]["certified"]


def test_a_priced_judge_is_charged_where_calibrate_plans_and_where_the_program_runs(tmp_path):
    rows = _agreeing_rows(80)
    path, train, _ = _split_rows(tmp_path, rows, 80)
    solvers_only = 0.001 + 0.5 * 0.02  # cheap everywhere, strong on the half the judge rejects
    for price, chain in (((20.0, 20.0), ["cheap", "strong"]), ((2000.0, 2000.0), ["strong"])):
        compiled = compile(_agreeing_build(path, rows, price=price), train, metric,
                           passes=[Calibrate(match=1.0)], progress=False)
        chosen = compiled.compile_report[0].details["cascade"]["chosen"]
        result = evaluate(compiled, train, metric, progress=False)
        usage = result.summary["usage"]
        judge = next((v for k, v in usage.items() if k.startswith("judge-")), None)
        # what Calibrate planned is what the run paid, the judge included
        assert chosen["cost"] == pytest.approx(result.summary["total_cost_usd"] / len(train))
        assert chosen["stages"] == chain
        if chain == ["cheap", "strong"]:  # the judge costs, but less than strong saves
            assert judge["cost_usd"] > 0 and judge["calls"] == len(train)
            assert chosen["cost"] == pytest.approx(solvers_only + judge["cost_usd"] / len(train))
        else:  # a judge dearer than what it saves: strong alone, which never calls it
            assert judge is None and chosen["cost"] == pytest.approx(0.02)
