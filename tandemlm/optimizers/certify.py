"""A certified operating point: the cheapest configuration whose accuracy is at least the
reference's minus ε, with probability at least 1 − δ over the calibration rows — valid after the
search, because the test is part of the choice (Learn-then-Test, Angelopoulos et al. 2021, with a
fixed sequence learnt on separate rows).

1. The calibration rows — labelled, and unlabeled inputs if any — are split at random into
   selection rows and certification rows (`select` of each kind to selection).
2. On the selection rows the usual search scores every configuration (`cost_quality.search`).
   Configurations cheaper than the reference fall into families (one chain of stages, as a
   cascade, a router or a hybrid); each family's path runs from its safest point to its riskiest
   (`paths`), and one path is chosen: the one whose walk on rows like these is predicted to end
   cheapest (`sequence`).
3. Down that sequence each candidate is tested on the certification rows — H0: "it loses more
   than ε" — until the first test that does not reject at level δ. Fixed-sequence testing keeps
   the chance that any rejected H0 was true at most δ, so every candidate before the stop is
   certified; the cheapest of them is chosen. When none is, the reference is, and the certificate
   says about how many rows would have certified the best prospect.

What a configuration can lose on one row, `b`: on a labelled row, [reference right] − [it right],
in {−1, 0, 1}; on an unlabeled row, [its answer differs from the reference's], in {0, 1} — where
it returns the reference's own answer it is exactly as good as the reference (C3PO, arXiv
2511.07396), so disagreement bounds the loss. Under H0 every row's b has mean above ε (on an
unlabeled row, P(differ) ≥ P(reference right and it wrong) ≥ the loss), so two exact tests are
valid:

* `losses`: on the count of rows lost (b = +1), which is then at least Binomial(n, ε); it
  ignores the rows a configuration wins;
* `net`: on rows lost minus rows won, an exact unconditional test (Berger & Boos) — rows it wins
  count for it, so it can certify a configuration that loses some of the reference's answers and
  wins others.

Each candidate gets `net` when it won labelled selection rows, else `losses` (a choice made
without the certification rows keeps the guarantee). The guarantee assumes the rows, and the
inputs the program will meet, are exchangeable draws of one distribution; judges scoring labelled
rows out-of-fold (cross-fitted) keep it only approximately, judges that never saw the rows
exactly. An unlabeled row's agreement must mean equal metric values (`Calibrate(agree=...)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from tandemlm.optimizers.cost_quality import Point, outcome
from tandemlm.optimizers.cost_table import Table
from tandemlm.optimizers.risk_tests import TESTS, loss_bound, rows_needed, scaled

#: candidates (spread along the sequence) whose row needs are estimated when none is certified
PROSPECTS = 12
#: families of configurations whose walks are predicted on the selection rows before one is chosen
FAMILIES = 8
#: how far (standard errors towards losing) the selection rows' rates are moved in the scenarios
#: a family's walk is predicted under
SCENARIOS = (-1.0, -0.5, 0.0, 0.5, 1.0)
_NORMAL = NormalDist()


# -- the procedure ------------------------------------------------------------------------------
@dataclass
class Certificate:
    """What `certify` chose and the promise it keeps: with probability ≥ 1 − δ over the
    calibration rows, `chosen`'s accuracy is at least `reference`'s minus ε."""

    chosen: Point
    reference: Point
    epsilon: float
    delta: float
    #: a configuration other than the reference was certified
    certified: bool
    #: upper confidence bound on the chosen point's loss, from its test on the certification
    #: rows (0 for the reference itself)
    bound: float
    rows: dict[str, int]
    #: the test that certified the chosen point ("losses" or "net"; None for the reference)
    test: str | None = None
    #: candidates in the sequence, and how many were tested before the walk stopped
    sequence: int = 0
    tested: int = 0
    #: when nothing was certified: about how many rows would certify the best prospect
    needed: dict[str, Any] | None = None
    #: the chosen point's loss as measured on all rows: accuracy lost on labelled rows, answers
    #: changed on unlabeled ones
    observed: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self, names: list[str]) -> dict[str, Any]:
        needed = None
        if self.needed is not None:
            needed = {**self.needed, "point": self.needed["point"].to_dict(names)}
        return {"epsilon": self.epsilon, "delta": self.delta, "reference": names[self.reference.chain[0]],
                "certified": self.certified, "bound": self.bound, "test": self.test,
                "rows": self.rows, "sequence": self.sequence, "tested": self.tested,
                "observed": self.observed, "needed": needed, "statement": self.statement(names)}

    def statement(self, names: list[str]) -> str:
        """The promise in one sentence, or why there is no saving."""
        ref = names[self.reference.chain[0]]
        rows = (f"{self.rows['labelled']} labelled"
                + (f" + {self.rows['unlabeled']} unlabeled" if self.rows["unlabeled"] else "") + " rows")
        promise = (f"accuracy >= {ref}'s - {100 * self.epsilon:g} pt with probability >= "
                   f"{1 - self.delta:g}")
        if self.certified:
            saving = 1 - self.chosen.cost / self.reference.cost if self.reference.cost else 0.0
            return (f"certified on {rows}: {promise} (loss bound {100 * self.bound:.2f} pt), "
                    f"{saving:.0%} cheaper than {ref}")
        line = f"no saving certified on {rows}: {ref} itself is returned"
        if self.needed is not None:
            point = self.needed["point"]
            prospect = (f"{' -> '.join(names[s] for s in point.chain)} at "
                        f"{self.needed['cost_fraction']:.2f} of its cost")
            if self.needed["rows"] > self.rows["labelled"] + self.rows["unlabeled"]:
                line += (f"; about {self.needed['rows']:,} rows like these (labelled, or "
                         f"unlabeled inputs) would certify {prospect}")
            else:
                # enough rows on the whole, but the path chosen on the selection rows failed
                line += (f"; the path chosen on the selection rows failed its test on the "
                         f"certification rows, though rows like these would usually certify "
                         f"{prospect} from about {self.needed['rows']:,} (another draw of the "
                         f"split, or more rows, may)")
        else:
            line += "; every cheaper configuration loses at least ε on these rows"
        return line


def split_rows(table: Table, select: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection, certification) row indices: a seeded random `select` share of the labelled
    rows and of the unlabeled rows to selection, the rest to certification."""
    rng = np.random.default_rng(seed)
    chosen, rest = [], []
    for kind in (True, False):
        rows = np.flatnonzero(table.labelled == kind)
        rows = rows[rng.permutation(len(rows))]
        cut = round(select * len(rows))
        chosen.append(rows[:cut])
        rest.append(rows[cut:])
    return np.concatenate(chosen), rng.permutation(np.concatenate(rest))


def paths(points: list[Point], reference: Point, base: float, n: int, m: int,
          delta: float) -> list[list[Point]]:
    """Per family of configurations cheaper than the reference (one chain of stages, as a
    cascade, a router or a hybrid), its path from the safest point to the riskiest: the Pareto
    frontier of cost against an upper bound of the loss (`upper`), in order of that bound. Along
    one chain's thresholds the risk grows nearly monotonically, so a walk down the path stops
    where the risk really crosses ε, not at the first lucky configuration of some other chain."""
    families: dict[tuple[Any, ...], list[Point]] = {}
    for p in points:
        if p.cost < reference.cost:
            families.setdefault((p.chain, p.kind), []).append(p)
    out = []
    for members in families.values():
        path: list[Point] = []
        cheapest = reference.cost
        for p in sorted(members, key=lambda p: (upper(p, base, n, m, delta), -p.cost)):
            if p.cost < cheapest:
                path.append(p)
                cheapest = p.cost
        out.append(path)
    return out


def upper(p: Point, base: float, n: int, m: int, delta: float) -> float:
    """An upper bound of `p`'s loss as `m` rows would show it, from its figures on `n` rows
    (mean loss + z standard errors, one disagreement more than seen)."""
    loss = base - p.quality
    z = _NORMAL.inv_cdf(1.0 - delta)
    return loss + z * math.sqrt((max(p.discord - loss ** 2, 0.0) + 1.0 / n) / m)


def sequence(points: list[Point], reference: Point, chosen: Table, held: Table, epsilon: float,
             delta: float) -> list[Point]:
    """The path (see `paths`) the certification walks down, chosen on the selection rows
    `chosen` alone: of the `FAMILIES` families whose loss bound (`upper`) looks certifiable within
    2ε at the lowest cost, the one whose walk on the certification rows `held` would end cheapest
    on average over `SCENARIOS` (`_reach`)."""
    base, n, m = float(chosen.base.mean()), chosen.n, held.n
    ranked = []
    for path in paths(points, reference, base, n, m, delta):
        within = [p.cost for p in path if upper(p, base, n, m, delta) <= 2 * epsilon]
        if within:
            ranked.append((min(within), path))
    ranked.sort(key=lambda x: x[0])
    best: tuple[float, list[Point]] | None = None
    shares = (int(held.labelled.sum()), int((~held.labelled).sum()))
    for _, path in ranked[:FAMILIES]:
        expected = float(np.mean([_reach(path, chosen, shares, reference.cost, epsilon, delta, z)
                                  for z in SCENARIOS]))
        if expected < reference.cost and (best is None or expected < best[0]):
            best = (expected, path)
    return best[1] if best is not None else []


def _reach(path: list[Point], chosen: Table, shares: tuple[int, int], reference: float,
           epsilon: float, delta: float, z: float) -> float:
    """Where the walk down `path` would end (the cost of the last point certified; the
    reference's when none is) on certification rows of these sizes that lose and win answers
    at each point's selection-row rates moved `z` standard errors towards losing."""
    reach = reference
    for p in path:  # safest first: the walk stops at its first failure
        rows, mask = scaled(_loss(chosen, p), chosen.labelled, shares, z)
        if min(test(rows, mask, epsilon, delta) for test in TESTS.values()) > delta:
            break
        reach = p.cost
    return reach


def _loss(table: Table, p: Point) -> np.ndarray:
    right, _ = outcome(table, p)
    return table.base - right


def _test_for(b: np.ndarray, labelled: np.ndarray, epsilon: float, delta: float) -> str:
    """`net` when the configuration won some labelled selection rows (only it counts them),
    else `losses` (exact on the count alone, it is the stronger when nothing is won). A choice
    by which test did better on the few selection rows would follow their noise."""
    return "net" if np.any((b < -0.5) & labelled) else "losses"


def certify(table: Table, reference: int, *, epsilon: float, delta: float,
            search: Callable[[Table], list[Point]], select: float = 0.3, seed: int = 0) -> Certificate:
    """The cheapest configuration certified on `table` (its `base` the reference stage's values;
    see the module docstring). `search(table)` scores every configuration on a table."""
    selection, certification = split_rows(table, select, seed)
    ref_full = _single(table, reference)
    rows = {"labelled": int(table.labelled.sum()), "unlabeled": int((~table.labelled).sum()),
            "selection": len(selection), "certification": len(certification)}
    found = Certificate(ref_full, ref_full, epsilon, delta, False, 0.0, rows,
                        observed=_observed(table, ref_full))
    if not len(selection) or not len(certification):
        return found
    chosen_rows, held = table.take(selection), table.take(certification)
    points = search(chosen_rows)
    ref_chosen = next(p for p in points if p.chain == (reference,))
    candidates = sequence(points, ref_chosen, chosen_rows, held, epsilon, delta)
    found.sequence = len(candidates)
    passed: list[tuple[Point, str, np.ndarray]] = []
    for p in candidates:
        test = _test_for(_loss(chosen_rows, p), chosen_rows.labelled, epsilon, delta)
        b = _loss(held, p)
        found.tested += 1
        if TESTS[test](b, held.labelled, epsilon, delta) > delta:
            break
        passed.append((p, test, b))
    if passed:
        full = [(_full(table, p), test, b) for p, test, b in passed]
        best, test, b = min(full, key=lambda x: (x[0].cost, -x[0].quality))
        if best.cost < ref_full.cost:
            found.chosen, found.certified, found.test = best, True, test
            found.bound = loss_bound(b, held.labelled, delta, test)
            found.observed = _observed(table, best)
            return found
    if not candidates:  # no family looked certifiable: say what the most promising would need
        base, n, m = float(chosen_rows.base.mean()), len(selection), len(certification)
        candidates = [p for path in paths(points, ref_chosen, base, n, m, delta) for p in path
                      if base - p.quality < epsilon]
        candidates.sort(key=lambda p: upper(p, base, n, m, delta))
    found.needed = _needed(table, candidates, ref_full, epsilon, delta, select)
    return found


def _single(table: Table, s: int) -> Point:
    return _full(table, Point((s,), (), 0.0, 0.0))


def _full(table: Table, p: Point) -> Point:
    """Point `p`'s configuration scored on every row of `table`."""
    right, cost = outcome(table, p)
    discord = float(((table.base - right) ** 2).mean()) if len(right) else 0.0
    return Point(p.chain, p.thresholds, float(right.mean()), float(cost.mean()), p.router, discord)


def _observed(table: Table, p: Point) -> dict[str, float | None]:
    b = _loss(table, p)
    return {kind: float(b[table.labelled == labelled].mean()) if np.any(table.labelled == labelled)
            else None for kind, labelled in (("labelled", True), ("unlabeled", False))}


def _needed(table: Table, candidates: list[Point], reference: Point, epsilon: float, delta: float,
            select: float) -> dict[str, Any] | None:
    """The candidate that rows like these would certify soonest, and about how many rows (all of
    them, selection included) that takes."""
    best: tuple[float, Point] | None = None
    prospects = [(p, _full(table, p)) for p in candidates]
    prospects = [(p, full) for p, full in prospects if full.cost < reference.cost
                 and float(np.mean(_loss(table, p))) < epsilon]
    step = max(1, len(prospects) // PROSPECTS)
    for p, full in prospects[::step]:
        rows = rows_needed(_loss(table, p), table.labelled, epsilon, delta) / (1.0 - select)
        if math.isfinite(rows) and (best is None or rows < best[0]):
            best = (rows, full)
    if best is None:
        return None
    rows, point = best
    return {"rows": math.ceil(rows), "point": point,
            "cost_fraction": point.cost / reference.cost if reference.cost else None}
