"""The certification behind `Calibrate(epsilon=...)`: its tests hold their level (checked by
simulation, so a broken test fails here), the fixed sequence stops at the first failure, rows too
few certify nothing and say how many would, and unlabeled rows certify through agreement."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from tandemlm.optimizers.certify import certify, paths, split_rows
from tandemlm.optimizers.risk_tests import binomial_tail, losses_p, net_p, rows_needed, upper_rate
from tandemlm.optimizers.cost_quality import search
from tandemlm.optimizers.cost_table import Table


def _draw(rng, n, lost, won):
    u = rng.random(n)
    return np.where(u < lost, 1.0, np.where(u < lost + won, -1.0, 0.0))


def test_binomial_tail_is_exact():
    # small cases by hand: P(Bin(3, 0.5) <= 1) = 4/8; P(Bin(10, 0.1) <= 0) = 0.9^10
    assert binomial_tail(1, 3, 0.5) == pytest.approx(0.5)
    assert binomial_tail(0, 10, 0.1) == pytest.approx(0.9 ** 10)
    assert binomial_tail(10, 10, 0.3) == 1.0 and binomial_tail(-1, 10, 0.3) == 0.0
    # the Clopper-Pearson bound inverts it
    top = upper_rate(2, 100, 0.05)
    assert binomial_tail(2, 100, top) == pytest.approx(0.05, abs=1e-6)


@pytest.mark.parametrize("lost, won", [(0.01, 0.0), (0.02, 0.01), (0.06, 0.05)])
def test_both_tests_hold_their_level_at_the_edge_of_the_hypothesis(lost, won):
    # a configuration losing exactly epsilon (1 point) net: certifying it is the error the tests
    # bound; over many simulated calibration sets it must happen in at most delta of them
    rng = np.random.default_rng(7)
    labelled = np.ones(300, dtype=bool)
    rejected = {"losses": 0, "net": 0}
    runs = 600
    for _ in range(runs):
        b = _draw(rng, 300, lost, won)
        rejected["losses"] += losses_p(b, labelled, 0.01, 0.1) <= 0.1
        rejected["net"] += net_p(b, labelled, 0.01, 0.1) <= 0.1
    for count in rejected.values():
        assert count / runs <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / runs)


def test_net_counts_rows_won_and_losses_does_not():
    # loses 2% of the reference's answers and wins 4% on 1,000 rows: net -2 points
    b = np.concatenate([np.ones(20), -np.ones(40), np.zeros(940)])
    labelled = np.ones(len(b), dtype=bool)
    assert net_p(b, labelled, 0.01, 0.1) <= 0.1
    assert losses_p(b, labelled, 0.01, 0.1) > 0.5
    # on unlabeled rows a changed answer can only count against: the same counts certify nothing
    assert net_p(np.abs(b), np.zeros(len(b), dtype=bool), 0.01, 0.1) > 0.5


def test_rows_needed_matches_the_test_it_predicts():
    # a configuration that never differs needs about log(1/delta)/epsilon rows: 0.99^230 < 0.1
    needed = rows_needed(np.zeros(50), np.ones(50, dtype=bool), 0.01, 0.1)
    assert 225 <= needed <= 240
    assert losses_p(np.zeros(int(needed)), np.ones(int(needed), dtype=bool), 0.01, 0.1) <= 0.1
    assert losses_p(np.zeros(200), np.ones(200, dtype=bool), 0.01, 0.1) > 0.1
    # one that loses more than epsilon can never be certified
    assert rows_needed(np.array([1.0, 0.0, 0.0]), np.ones(3, dtype=bool), 0.01, 0.1) == math.inf


def test_split_rows_keeps_each_kind_in_both_parts():
    labelled = np.array([True] * 100 + [False] * 400)
    table = _table([np.ones(500), np.ones(500)], [np.full(500, 0.1), np.full(500, 1.0)],
                   [np.full(500, 0.9)], labelled)
    chosen, rest = split_rows(table, 0.3, seed=1)
    assert sorted(np.concatenate([chosen, rest]).tolist()) == list(range(500))
    assert labelled[chosen].sum() == 30 and (~labelled[chosen]).sum() == 120


def _table(correct, cost, scores, labelled=None):
    """A two-stage table (cheap judged, then the reference) from arrays."""
    n = len(correct[0])
    recorded = [np.asarray(s, dtype=float) for s in scores] + [np.full(n, np.nan)]
    return Table(unit="usd", correct=[np.asarray(c, dtype=float) for c in correct],
                 cost=[np.asarray(c, dtype=float) for c in cost],
                 judge_cost=[np.zeros(n), np.zeros(n)], judged=[True, False],
                 scorer=lambda s, before: recorded[s], labelled=labelled)


FIND = functools.partial(search, max_stages=2, grid=20, order="cost")


def _cheap_first(n, differs, seed=0, labelled=False):
    """Stage 0 (cost 0.1) answers like the reference (stage 1, cost 1) except on `differs` of
    the rows, which its judge cannot tell apart (scores are noise)."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) >= differs
    mask = np.full(n, labelled)
    return _table([same.astype(float), np.ones(n)], [np.full(n, 0.1), np.ones(n)],
                  [rng.random(n)], mask).relative_to(1)


def test_unlabeled_rows_where_the_cheap_stage_copies_the_reference_certify_it():
    table = _cheap_first(1000, differs=0.0)
    got = certify(table, 1, epsilon=0.01, delta=0.1, search=FIND)
    assert (got.certified and got.chosen.chain == (0,)) or got.chosen.chain[0] == 0
    assert got.chosen.cost == pytest.approx(0.1, abs=0.01)  # the reference is never called
    assert got.bound <= 0.01 and got.test == "losses"
    assert got.rows == {"labelled": 0, "unlabeled": 1000, "selection": 300, "certification": 700}
    assert "certified on 0 labelled + 1000 unlabeled rows" in got.statement(["cheap", "ref"])


def test_unlabeled_rows_where_it_differs_unseen_by_its_judge_certify_nothing():
    table = _cheap_first(1000, differs=0.05)
    got = certify(table, 1, epsilon=0.01, delta=0.1, search=FIND)
    # any threshold lets through ~5% of answers that differ: every point that saves loses > 1 pt
    assert not got.certified and got.chosen.chain == (1,)
    assert got.chosen.cost == pytest.approx(1.0)


def test_too_few_rows_certify_nothing_and_say_how_many_would():
    # the cheap stage never differs, but 150 rows cannot show a loss below 1 point at 90%
    table = _cheap_first(150, differs=0.0, labelled=True)
    got = certify(table, 1, epsilon=0.01, delta=0.1, search=FIND)
    assert not got.certified and got.chosen.chain == (1,)
    assert got.needed is not None and 300 <= got.needed["rows"] <= 400  # ~230 / 0.7
    assert got.needed["cost_fraction"] < 0.5
    line = got.statement(["cheap", "ref"])
    assert line.startswith("no saving certified on 150 labelled rows") and "about" in line
    # with rows enough, the same configuration is certified
    assert certify(_cheap_first(got.needed["rows"] + 40, differs=0.0, labelled=True), 1,
                   epsilon=0.01, delta=0.1, search=FIND).certified


def test_a_miss_on_rows_enough_is_not_reported_as_rows_too_few():
    # the walk failed on the certification rows although the prospect's rows-needed estimate is
    # below the rows used: the statement must not ask for fewer rows than the user gave
    table = _cheap_first(150, differs=0.0, labelled=True)
    got = certify(table, 1, epsilon=0.01, delta=0.1, search=FIND)
    got.rows = {**got.rows, "labelled": 1000}
    line = got.statement(["cheap", "ref"])
    assert "failed its test on the certification rows" in line and "would certify" not in line
    assert f"from about {got.needed['rows']:,}" in line


def test_the_sequence_runs_from_safe_to_risky_along_one_chain():
    table = _cheap_first(400, differs=0.02, seed=3, labelled=False)
    points = FIND(table)
    reference = next(p for p in points if p.chain == (1,))
    for path in paths(points, reference, float(table.base.mean()), 400, 400, 0.1):
        assert len({(p.chain, p.kind) for p in path}) == 1
        costs = [p.cost for p in path]
        assert costs == sorted(costs, reverse=True) and costs[0] < reference.cost


def test_the_walk_stops_at_the_first_failure(monkeypatch):
    # a test that rejects on the first and third candidates only: the third is never certified
    from tandemlm.optimizers import certify as module

    rng = np.random.default_rng(5)
    same = rng.random(1000) >= 0.03
    scores = 0.3 * same + 0.7 * rng.random(1000)  # a judge that helps, imperfectly
    table = _table([same.astype(float), np.ones(1000)], [np.full(1000, 0.1), np.ones(1000)],
                   [scores], np.zeros(1000, dtype=bool)).relative_to(1)
    answers = iter([0.01, 0.9, 0.01, 0.01, 0.01])
    # the walk's path is chosen first (predicted walks, which also call the tests); then the
    # tests the walk runs on the 700 certification rows answer as scripted
    monkeypatch.setattr(module, "_reach", lambda path, *args: 0.0)
    monkeypatch.setitem(module.TESTS, "losses", lambda b, labelled, e, d: next(answers, 0.01)
                        if len(b) == 700 else 0.0)
    got = certify(table, 1, epsilon=0.01, delta=0.1, search=FIND)
    assert got.sequence > 2 and got.tested == 2
    assert got.certified and got.chosen.chain == (0, 1)  # the first candidate passed, only it
