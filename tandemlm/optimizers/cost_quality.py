"""The cost–quality curve of a cascade, scored offline, and the choice of a point on it.

Every stage answers every calibration example once (`stage_runs`), so any chain of stages and
thresholds can be scored from arrays: an example stops at the first stage whose judge score reaches
its threshold, pays every stage it went through (solver and judge), and is right when that stage's
answer is. `cost_quality_points` scores every chain of up to `max_stages` stages at thresholds on
quantiles of each judge's scores (with a router's predictions, also routers and hybrids);
`frontier` keeps the Pareto-optimal points and `robust_choice` picks one that holds up under
bootstrap resamples. `Calibrate` (calibrate.py) is the compile pass built on them.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from tandemlm.modules.cascade import json_threshold
from tandemlm.modules.router import entries
from tandemlm.optimizers.stage_runs import StageRun, examples_digest


@dataclass
class Point:
    """One cascade configuration and how it does on the calibration set."""

    chain: tuple[int, ...]
    thresholds: tuple[float, ...]
    quality: float
    cost: float
    #: standard error of the mean per-example difference from the best single stage, counting
    #: one disagreement more than seen (0 for single stages)
    se: float = 0.0
    #: the router's entry threshold (None: every example enters at the first stage)
    router: float | None = None

    @property
    def kind(self) -> str:
        """"single", "cascade", "router" (each example answered where the router sends it) or
        "hybrid" (routed into a cascade)."""
        if len(self.chain) == 1:
            return "single"
        if self.router is None:
            return "cascade"
        return "router" if all(x == -np.inf for x in self.thresholds) else "hybrid"

    def to_dict(self, names: list[str]) -> dict[str, Any]:
        return {"stages": [names[s] for s in self.chain], "order": list(self.chain),
                "thresholds": [json_threshold(x) for x in self.thresholds], "quality": self.quality,
                "cost": self.cost, "se": self.se, "kind": self.kind,
                **({"router_threshold": self.router} if self.router is not None else {})}




class _Table:
    """Per-stage arrays over the calibration examples."""

    def __init__(self, runs: list[StageRun], judges: list[Any] | None = None,
                 cross_fit: bool = True, chances: np.ndarray | None = None) -> None:
        usd = sum(sum(r.usd) + sum(r.judge_usd) for r in runs)
        self.unit = "usd" if usd > 0 else "flops"
        self.runs, self.judges = runs, judges or [None] * len(runs)
        self.correct = [np.array(r.correct, dtype=float) for r in runs]
        self.cost = [np.array(r.usd if usd > 0 else r.flops) for r in runs]
        self.judge_cost = [np.array((r.judge_usd if usd > 0 else r.judge_flops) or [0.0] * len(r.usd))
                           for r in runs]
        self.scores = [np.array([np.nan if s is None else s for s in r.scores] or [np.nan] * len(r.usd))
                       for r in runs]
        self.judged = [bool(r.scores) for r in runs]
        #: per-example quality a point is compared with (the best single stage's), if set
        self.reference: np.ndarray | None = None
        self._chained: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        #: (stages × examples) the router's predicted chance each stage answers right, if routed
        self.chances = chances
        #: per stage, the judge's out-of-fold copies (example i scored by copy i mod k), if kept
        self.folds: list[Any] = [None] * len(self.judges)
        if cross_fit:
            digest = examples_digest(runs)
            self.folds = [j.fold_judges(digest) if hasattr(j, "fold_judges") else None
                          for j in self.judges]

    def score(self, s: int, before: tuple[int, ...]) -> np.ndarray:
        """Stage `s`'s judge scores after the stages `before`: its recorded scores, or for a judge
        that compares with earlier answers (`rescore`), its scores re-computed for that chain."""
        judge, folds = self.judges[s], self.folds[s]
        if folds is None and (not before or not hasattr(judge, "rescore")):
            return self.scores[s]
        key = (s, tuple(sorted(before)))
        if key not in self._chained:
            field, run = judge.field, self.runs[s]
            def said(r: StageRun, i: int) -> Any:
                return (r.answers[i].outputs or {}).get(field) if r.answers[i].ok else None
            features = [t.info.get("features") if t is not None else None for t in run.judge_traces]
            earlier = [[said(self.runs[j], i) for j in key[1] if self.runs[j].answers[i].ok]
                       for i in range(len(run.answers))]
            mine = [said(run, i) for i in range(len(run.answers))]
            got = np.full(len(mine), np.nan)
            scorers = folds or [judge]
            for f, scorer in enumerate(scorers):
                rows = list(range(f, len(mine), len(scorers)))
                out = scorer.rescore([features[i] for i in rows], [mine[i] for i in rows],
                                     [earlier[i] for i in rows])
                got[rows] = [np.nan if x is None else x for x in out]
            self._chained[key] = got
        return self._chained[key]

    def thresholds(self, scores: np.ndarray, grid: int) -> np.ndarray:
        """Quantiles of the scores seen, and +inf: never stop here (the stage still answers, for
        the judges of later stages to compare with)."""
        seen = scores[~np.isnan(scores)]
        if not len(seen):
            return np.array([np.inf])
        return np.append(np.unique(np.quantile(seen, np.linspace(0, 1, grid))), np.inf)


#: threshold combinations tried per chain at most: a long chain gets a coarser grid per stage
COMBINATIONS = 4096


#: examples × combinations in one array at most (several such float arrays are alive at once)
BLOCK = 250_000


def _chain_points(t: _Table, chain: tuple[int, ...], grid: int) -> list[Point]:
    """Every threshold combination of one chain, in the order of `itertools.product` over the
    stages' threshold grids, with the figures `_point` gives one at a time (quality exactly; cost
    and `se` up to rounding).

    The combinations of all judged stages but the last are run as (combinations × examples)
    arrays; the last judged stage's whole grid is then read off cumulative sums over the examples
    sorted by its score (an example stops there iff its score reaches the threshold), so the work
    is one array pass per combination of the earlier stages, not per combination."""
    judged = chain[:-1]
    if not judged:
        return [_point(t, chain, [], ())]
    grid = max(2, min(grid, round(COMBINATIONS ** (1 / len(judged)))))
    raw = [t.score(s, chain[:k]) for k, s in enumerate(judged)]
    grids = [t.thresholds(r, grid) for r in raw]
    scores = [np.nan_to_num(r, nan=-np.inf) for r in raw]
    head = list(itertools.product(*grids[:-1]))
    heads = np.array(head, dtype=float).reshape(len(head), len(judged) - 1)
    *_, s, last = chain
    n, last_grid = len(t.correct[last]), grids[-1]
    order = np.argsort(scores[-1], kind="stable")
    # per threshold, the first example (in score order) that stops at s: those from it on do
    at = np.searchsorted(scores[-1][order], last_grid, side="left")
    split = functools.partial(_split, order=order, at=at)
    reference, step, points = t.reference, max(1, BLOCK // max(n, 1)), []
    for start in range(0, len(heads), step):
        block = heads[start:start + step]
        open_, right, cost = _through(t, judged[:-1], scores[:-1], block, n)
        cost += open_ * (t.cost[s] + t.judge_cost[s])
        total = right.sum(axis=1, keepdims=True) + split(open_ * t.correct[s], open_ * t.correct[last])
        paid = cost.sum(axis=1, keepdims=True) + split(None, open_ * t.cost[last])
        unjudged = last_grid == -np.inf  # every answer accepted: the judge is not called
        if unjudged.any():
            paid[:, unjudged] -= (open_ * t.judge_cost[s]).sum(axis=1, keepdims=True)
        se = np.zeros_like(total)
        if reference is not None:  # as in `_point`; right is 0 where open, so squares split too
            squares = (right ** 2).sum(axis=1, keepdims=True) + split(
                open_ * t.correct[s] ** 2, open_ * t.correct[last] ** 2)
            cross = (right * reference).sum(axis=1, keepdims=True) + split(
                open_ * t.correct[s] * reference, open_ * t.correct[last] * reference)
            d = total - reference.sum()
            d2 = squares - 2 * cross + (reference ** 2).sum()
            se = np.sqrt(np.maximum(d2 - d ** 2 / n, 0.0) + 1.0) / n
        for row, totals, paids, ses in zip(block.tolist(), total.tolist(), paid.tolist(), se.tolist(),
                                            strict=True):
            points += [Point(chain, (*row, threshold), q / n, c / n, e)
                       for threshold, q, c, e in zip(last_grid.tolist(), totals, paids, ses, strict=True)]
    return points


def _split(stop: np.ndarray | None, go_on: np.ndarray, order: np.ndarray,
           at: np.ndarray) -> np.ndarray:
    """(combinations × thresholds) sums over the examples, of `stop` where the example stops at
    the stage (from position `at[j]` of the score `order` on, for threshold j) and of `go_on`
    where it goes on; both arrays are zero where an example is no longer open."""
    rest = np.cumsum(np.pad(go_on[:, order], ((0, 0), (1, 0))), axis=1)[:, at]
    if stop is None:
        return rest
    stops = np.cumsum(np.pad(stop[:, order], ((0, 0), (1, 0))), axis=1)
    return stops[:, -1:] - stops[:, at] + rest


def _through(t: _Table, stages: tuple[int, ...], scores: list[np.ndarray], combos: np.ndarray,
             n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every example entering at the first of the judged `stages`, at the thresholds of each row
    of `combos`: (combinations × examples) arrays of whether it is still open after them, whether
    it was answered right, and what it paid (as `_outcome`)."""
    shape = (len(combos), n)
    open_ = np.ones(shape, dtype=bool)
    right, cost = np.zeros(shape), np.zeros(shape)
    for position, (s, score) in enumerate(zip(stages, scores, strict=True)):
        threshold = combos[:, position:position + 1]
        unjudged = threshold == -np.inf
        cost += open_ * (t.cost[s] + np.where(unjudged, 0.0, t.judge_cost[s]))
        stop = open_ & (unjudged | (score >= threshold))
        right += stop * t.correct[s]
        open_ &= ~stop
    return open_, right, cost


def _point(t: _Table, chain: tuple[int, ...], scores: list[np.ndarray], combo: tuple,
           router: float | None = None, entry: np.ndarray | None = None) -> Point:
    """The point (chain, thresholds `combo`, router threshold `router`) on the table. `entry` is
    where the router at `router` sends each example (`entries`): the caller computed it already
    for `scores`, which depend on it."""
    right, cost = _outcome(t, chain, scores, combo, entry)
    n = len(right)
    se = 0.0
    if t.reference is not None:  # one more disagreement than seen: no luck on a small set
        d = right - t.reference
        se = float(np.sqrt(((d - d.mean()) ** 2).sum() + 1.0) / n)
    return Point(chain, tuple(float(x) for x in combo), float(right.mean()), float(cost.mean()), se,
                 router)


def _outcome(t: _Table, chain: tuple[int, ...], scores: list[np.ndarray], combo: tuple,
             entry: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per example: whether the configuration answers right, and what it pays. `entry`: the
    position each example enters the chain at (the router's choice; default the first)."""
    *judged, last = chain
    n = len(t.correct[last])
    entry = np.zeros(n, dtype=int) if entry is None else entry
    open_ = np.zeros(n, dtype=bool)
    right = np.zeros(n)
    cost = np.zeros(n)
    for position, (s, score, threshold) in enumerate(zip(judged, scores, combo, strict=True)):
        open_ |= entry == position
        unjudged = threshold == -np.inf  # every answer accepted: the judge is not called
        cost += open_ * (t.cost[s] + (0.0 if unjudged else t.judge_cost[s]))
        stop = open_ if unjudged else open_ & (score >= threshold)
        right += stop * t.correct[s]
        open_ &= ~stop
    open_ |= entry == len(chain) - 1
    cost += open_ * t.cost[last]
    right += open_ * t.correct[last]
    return right, cost


def _scores(t: _Table, chain: tuple[int, ...], entry: np.ndarray | None = None) -> list[np.ndarray]:
    """Each judged position's scores; with `entry`, each example's judged after the stages it
    went through only (a routed example skips the stages before its entry)."""
    out = []
    for k, s in enumerate(chain[:-1]):
        if entry is None:
            raw = t.score(s, chain[:k])
        else:
            raw = np.full(len(entry), np.nan)
            for e in range(k + 1):
                rows = entry == e
                if rows.any():
                    raw[rows] = t.score(s, chain[e:k])[rows]
        out.append(np.nan_to_num(raw, nan=-np.inf))
    return out


def _entry(t: _Table, chain: tuple[int, ...], router: float | None) -> np.ndarray | None:
    return None if router is None or t.chances is None else entries(t.chances, chain, router)


def outcome(t: _Table, p: Point) -> tuple[np.ndarray, np.ndarray]:
    """Per example, whether point `p` answers right and what it pays."""
    entry = _entry(t, p.chain, p.router)
    return _outcome(t, p.chain, _scores(t, p.chain, entry), p.thresholds, entry)


def point_at(t: _Table, chain: list[int], thresholds: list[float],
             router: float | None = None) -> Point:
    """How one configuration (stage order, each stage's threshold, the router's threshold) does
    on the table."""
    chain_ = tuple(chain)
    entry = _entry(t, chain_, router)
    return _point(t, chain_, _scores(t, chain_, entry),
                  tuple(float(thresholds[s]) for s in chain_[:-1]), router, entry)


def _routed_points(t: _Table, chains: list[tuple[int, ...]], cascade_front: list[Point],
                   grid: int) -> list[Point]:
    """Pure routing (every chain of stages, each example answered where the router sends it)
    and hybrids (each cascade on the frontier, entered where the router sends each example), at
    router thresholds on a grid of its predictions."""
    seen = t.chances[~np.isnan(t.chances)]
    if not len(seen):
        return []
    taus = [float(x) for x in np.unique(np.quantile(seen, np.linspace(0, 1, grid)))]
    points = []
    for chain in chains:
        unjudged = tuple([-np.inf] * (len(chain) - 1))
        zeros = [np.zeros(t.chances.shape[1])] * (len(chain) - 1)  # scores unused: every stage accepts
        for tau in taus:
            entry = entries(t.chances, chain, tau)
            points.append(_point(t, chain, zeros, unjudged, tau, entry))
    for p in cascade_front:
        if len(p.chain) < 2:
            continue
        for tau in taus:
            entry = entries(t.chances, p.chain, tau)
            points.append(_point(t, p.chain, _scores(t, p.chain, entry), p.thresholds, tau, entry))
    return points


def robust_choice(t: _Table, points: list[Point], match: float, *, delta: float, tolerance: float,
                  resamples: int, tie: float = 0.65, tolerance_se: float = 0.0,
                  seed: int = 0) -> tuple[Point, Point, list[Point], float]:
    """(chosen, reference, tied, tolerance): the cheapest point whose quality stays within the
    tolerance of `match` × the reference's in at least 1 − `delta` of bootstrap resamples of the
    examples; the tolerance is `tolerance` plus `tolerance_se` bootstrap standard errors of the
    reference's quality.

    The reference is the cheapest single stage the best one does not clearly beat (by more than
    `tolerance` in at least a fraction `tie` of the resamples): models within noise of each other
    are one target, and no point dearer than the reference is chosen."""
    singles = [p for p in points if len(p.chain) == 1]
    best = max(singles, key=lambda p: (p.quality, -p.cost))
    n = len(t.correct[0])
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples) / n
    need = 1.0 - delta - 1e-12
    top = t.correct[best.chain[0]]
    tied = [p for p in singles
            if np.mean(weights @ (top - t.correct[p.chain[0]]) > tolerance + 1e-12) < tie - 1e-12]
    reference = min(tied, key=lambda p: (p.cost, -p.quality))
    resampled = weights @ t.correct[reference.chain[0]]
    tolerance = tolerance + tolerance_se * float(resampled.std())
    target = match * resampled - tolerance - 1e-12
    candidates = sorted((p for p in points if p.cost <= reference.cost
                         and p.quality >= match * reference.quality - tolerance - 1e-12),
                        key=lambda p: (p.cost, -p.quality))
    for p in candidates:
        right, _ = outcome(t, p)
        if np.mean(weights @ right >= target) >= need:
            return p, reference, tied, tolerance
    return reference, reference, tied, tolerance


def cost_quality_points(runs: list[StageRun], judges: list[Any], *, max_stages: int = 3,
                        grid: int = 25, order: str = "any", cross_fit: bool = True,
                        chances: np.ndarray | None = None) -> tuple[_Table, list[Point]]:
    """Every chain of up to `max_stages` stages (judged stages first; with order="cost" only
    chains from cheaper to dearer stages) at every threshold combination, scored offline; each
    point's `se` is the standard error of its per-example difference from the best single stage.
    With the router's `chances` (stages × examples), also routers and hybrids (`_routed_points`)."""
    table = _Table(runs, judges, cross_fit, chances)
    stages = list(range(len(runs)))
    if order == "cost":
        stages.sort(key=lambda s: float(table.cost[s].mean()))
    chains = itertools.combinations if order == "cost" else itertools.permutations
    points = [p for s in stages for p in _chain_points(table, (s,), grid)]
    best = max(points, key=lambda p: (p.quality, -p.cost))
    table.reference = table.correct[best.chain[0]]
    for length in range(2, min(max_stages, len(runs)) + 1):
        for chain in chains(stages, length):
            if all(table.judged[s] for s in chain[:-1]):
                points += _chain_points(table, chain, grid)
    if chances is not None:
        routable = [c for length in range(2, min(max_stages, len(runs)) + 1)
                    for c in chains(stages, length) if all(judges[s] is not None for s in c[:-1])]
        points += _routed_points(table, routable, frontier(points), grid)
    return table, points


def frontier(points: list[Point]) -> list[Point]:
    """The Pareto frontier: no other point is at least as good and strictly cheaper."""
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p.cost, -p.quality)):
        if p.quality > best:
            out.append(p)
            best = p.quality
    return out
