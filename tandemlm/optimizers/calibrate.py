"""`Calibrate`: choose each cascade's stages, their order and thresholds on the cost–quality curve.

Every stage answers every validation example once (through the call cache; see `stage_runs`),
so any chain of stages and thresholds can be scored offline: an example stops at the first stage
whose judge score reaches its threshold, pays every stage it went through (solver and judge), and
is right when that stage's answer is. The search covers every ordered chain of up to `max_stages`
stages (judged stages first) and, per stage, thresholds at quantiles of its judge's scores.

Targets (FrugalGPT's two questions):

* `match=0.99`: the cheapest point whose quality reaches 99% of the best single stage's;
* `budget=0.002`: the best quality at a mean cost per example within the budget.

Cost is USD where the stages report it (recorded/API models), else estimated FLOPs. The curve
(Pareto frontier, single stages, chosen point) is saved as `curves/NN-<cascade>/curve.json` and
`curve.png`.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandemlm.compose import Pipeline
from tandemlm.optimizers.artifacts import atomic_write
from tandemlm.optimizers.passes import CompileContext, Pass
from tandemlm.modules.cascade import Cascade, json_threshold
from tandemlm.modules.router import entries
from tandemlm.optimizers.stage_runs import (StageRun, cascade_inputs, cascades, examples_digest,
                                             run_every_stage)
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError


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


#: calibration examples under which a chosen multi-stage point gets a warning: on 150 resampled
#: held-out rows of five replay tasks the `delta=0.1` point stayed within half a point of the best
#: single model in 36% of draws (73% on 300-600 rows; benchmarks/operating_point.py)
SMALL_SAMPLE = 300


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
        for row, totals, paids, ses in zip(block.tolist(), total.tolist(), paid.tolist(), se.tolist()):
            points += [Point(chain, (*row, threshold), q / n, c / n, e)
                       for threshold, q, c, e in zip(last_grid.tolist(), totals, paids, ses)]
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


@dataclass
class Calibrate(Pass):
    """Pick each cascade's stages, order and thresholds for a target; see the module docstring.

    Args:
        match: quality target as a fraction of the best single stage's quality.
        budget: mean cost per example (USD, or FLOPs when no stage reports USD).
        max_stages: longest chain searched.
        grid: thresholds tried per judged stage (quantiles of its scores).
        order: "any" tries every order of the stages; "cost" only chains going from cheaper to
            dearer stages (fewer chains, less overfitting when there are many stages).
        z: with `match`, how many standard errors of its per-example difference from the best
            single stage a point's quality must clear the target by (single stages need not). 0
            takes the cheapest point at the target; 1 guards against points that reach it on a
            small calibration set by luck: the error counts one disagreement more than seen, so
            a chain that never differs from the best stage there must still beat it.
        delta: with `match`, choose by bootstrap instead of `z`: the cheapest point whose quality
            is at least `match` × the reference's − `tolerance` in ≥ 1 − delta of `resamples`
            resamples of the calibration examples, where the reference is the cheapest single
            stage within noise of the best (see `robust_choice`). None: the `z` rule.
        tolerance: quality (absolute, e.g. 0.005 = half a point) a point may lose to the target.
        tolerance_se: with `delta`, a further tolerance in bootstrap standard errors of the
            reference's quality (1: "within noise of it on a sample this size").
        resamples: bootstrap resamples for `delta`.
        tie: with `delta`, a single stage counts as the best one's equal (and the cheapest equal
            becomes the target) unless the best beats it in at least this fraction of resamples.
        cross_fit: score each calibration example with the judge's out-of-fold model where
            `FitJudges` kept them, so thresholds are chosen on scores of examples the judge did
            not learn from.
        nodes: cascades to calibrate (paths or names); default: all.

    With `match`, no point dearer than the best single stage is chosen.
    """

    match: float | None = None
    budget: float | None = None
    max_stages: int = 3
    grid: int = 25
    order: str = "any"
    z: float = 0.0
    delta: float | None = None
    tolerance: float = 0.0
    resamples: int = 1000
    tie: float = 0.65
    tolerance_se: float = 0.0
    cross_fit: bool = True
    nodes: list[str] | None = None

    name = "calibrate"

    def __post_init__(self) -> None:
        if (self.match is None) == (self.budget is None):
            raise ConfigError("Calibrate needs exactly one target: match=0.99 (quality relative to "
                              "the best single stage, at least cost) or budget=COST (best quality "
                              "within a mean cost per example)")
        if self.match is not None and not 0 < self.match <= 1.5:
            raise ConfigError(f"Calibrate(match={self.match}): use a fraction such as 0.99")
        if self.max_stages < 1 or self.grid < 2:
            raise ConfigError("Calibrate: max_stages must be >= 1 and grid >= 2")
        if self.order not in ("any", "cost"):
            raise ConfigError(f"Calibrate(order={self.order!r}): use 'any' or 'cost'")
        if self.delta is not None and not 0 < self.delta < 0.5:
            raise ConfigError(f"Calibrate(delta={self.delta}): use a risk in (0, 0.5), e.g. 0.1")
        if self.delta is not None and self.match is None:
            raise ConfigError("Calibrate: delta applies to a match target only")
        if (self.tolerance < 0 or self.tolerance_se < 0 or self.resamples < 10
                or not 0.5 <= self.tie <= 1):
            raise ConfigError("Calibrate: tolerance and tolerance_se must be >= 0, resamples >= "
                              "10 and tie in [0.5, 1]")

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        new = ctx.copy(pipeline)
        picked = cascades(new, self.nodes)
        if not picked:
            raise CompileError(f"calibrate: pipeline '{new.name}' has no cascade"
                               + (f" named {', '.join(self.nodes)}" if self.nodes else ""))
        split = ctx.calibration_traces(new, traces)
        for path, cascade in picked.items():
            rows = cascade_inputs(split, path)
            runs = run_every_stage(new, path, rows, ctx, cross_fit=self.cross_fit)
            _require_usable(runs, split, path, "validation" if ctx.valset else "training")
            chances = router_chances(cascade, [values for _, values in rows], runs,
                                     cross_fit=self.cross_fit)
            chosen, report = self._search(runs, cascade, ctx.seed, chances)
            thresholds = list(cascade.thresholds)
            for s, value in zip(chosen.chain, chosen.thresholds, strict=False):
                thresholds[s] = value
            cascade.set_state({"order": list(chosen.chain), "thresholds": thresholds,
                               **({"router_threshold": chosen.router}
                                  if cascade.router is not None else {})})
            _save_curve(ctx.artifact_dir("curves", path), report, path)
            ctx.details[path] = {k: v for k, v in report.items() if k != "frontier"}
            ctx.reporter.note(f"calibrate {path}: {chosen.kind} "
                              f"{' -> '.join(report['chosen']['stages'])}, "
                              f"quality {chosen.quality:.3f}, cost {chosen.cost:.3g} {report['unit']}")
            if ctx.details[path]["small_sample"]:
                ctx.reporter.note(
                    f"calibrate {path}: warning: chosen on {report['n']} examples; on fewer than "
                    f"{SMALL_SAMPLE}, a point that matches the best single stage there often "
                    f"falls short of it on new data (docs/suites.md): compile with more labelled "
                    f"examples, or check it on held-out ones with `tandem evaluate`")
        return new

    def _search(self, runs: list[StageRun], cascade: Cascade, seed: int = 0,
                chances: np.ndarray | None = None) -> tuple[Point, dict[str, Any]]:
        names = [s.name for s in cascade.solvers]
        table, points = cost_quality_points(runs, cascade.judges, max_stages=self.max_stages,
                                            grid=self.grid, order=self.order,
                                            cross_fit=self.cross_fit, chances=chances)
        singles = [p for p in points if len(p.chain) == 1]
        best_single = max(singles, key=lambda p: (p.quality, -p.cost))
        extra: dict[str, Any] = {}
        if self.match is not None and self.delta is not None:
            chosen, reference, tied, tolerance = robust_choice(
                table, points, self.match, delta=self.delta, tolerance=self.tolerance,
                resamples=self.resamples, tie=self.tie, tolerance_se=self.tolerance_se, seed=seed)
            target = self.match * reference.quality - tolerance
            extra = {"reference": reference.to_dict(names),
                     "tied": [names[p.chain[0]] for p in tied]}
        elif self.match is not None:
            target = self.match * best_single.quality
            feasible = [p for p in points if p.quality - target >= self.z * p.se - 1e-12
                        and p.cost <= best_single.cost]
            chosen = min(feasible, key=lambda p: (p.cost, -p.quality))
        else:
            target = self.budget
            feasible = [p for p in points if p.cost <= self.budget]
            chosen = (max(feasible, key=lambda p: (p.quality, -p.cost)) if feasible
                      else min(points, key=lambda p: p.cost))
        report = {"unit": table.unit, "n": len(table.correct[0]), "target": target,
                  "match": self.match, "budget": self.budget,
                  "best_single": best_single.to_dict(names), **extra,
                  "singles": [p.to_dict(names) for p in singles],
                  "chosen": chosen.to_dict(names),
                  "best_by_kind": _best_by_kind(points, chosen, names),
                  "cost_vs_best_single": chosen.cost / best_single.cost if best_single.cost else None,
                  "small_sample": (self.match is not None and len(table.correct[0]) < SMALL_SAMPLE
                                   and chosen.chain != best_single.chain),
                  "frontier": [p.to_dict(names) for p in frontier(points)]}
        return chosen, report


def router_chances(cascade: Cascade, inputs: list[dict[str, Any]], runs: list[StageRun], *,
                   cross_fit: bool) -> np.ndarray | None:
    """The cascade's router predictions on these examples (out-of-fold where it was fitted on
    them and `cross_fit`), or None when it has no fitted router."""
    router = cascade.router
    if router is None or not router.fitted:
        return None
    if cross_fit:
        return router.out_of_fold(inputs, len(cascade.solvers), examples_digest(runs))
    return router.predict(inputs, len(cascade.solvers))


def _best_by_kind(points: list[Point], chosen: Point, names: list[str]) -> dict[str, Any]:
    """Per kind of configuration (single, cascade, router, hybrid): its cheapest point at least
    as good as the chosen one, for the report to say what won and by how much."""
    out: dict[str, Any] = {}
    for p in sorted(points, key=lambda p: (p.cost, -p.quality)):
        if p.kind not in out and p.quality >= chosen.quality - 1e-12:
            out[p.kind] = p.to_dict(names)
    return out


def _require_usable(runs: list[StageRun], split: Traces, path: str, which: str) -> None:
    """Refuse to calibrate on nothing: when no example reached the cascade, or no stage answered
    any that did, every point scores 0 (or NaN) and the search has nothing to choose from."""
    if any(a.ok for run in runs for a in run.answers):
        return
    reached = bool(runs and runs[0].answers)
    errors = Counter(a.error for run in runs for a in run.answers if a.error) if reached else \
        Counter(r.error for r in split.records if r.error is not None)
    n = len(split.records)
    why = ("every stage failed on each example that reached the cascade" if reached
           else "no example reached the cascade")
    common = ""
    if errors:
        message, count = errors.most_common(1)[0]
        unit = "stage runs" if reached else "examples"
        common = f"; the most common error ({count} of {sum(errors.values())} {unit}): {message}"
    raise CompileError(f"calibrate {path}: no {which} example produced a usable stage run (of {n} "
                       f"examples, {why}){common}; fix that and compile again")


def _save_curve(out: Path, report: dict[str, Any], title: str) -> None:
    atomic_write(out / "curve.json", json.dumps(report, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    front = report["frontier"]
    ax.plot([p["cost"] for p in front], [p["quality"] for p in front], "-o", ms=3,
            label="cascades (Pareto frontier)")
    for p in report["singles"]:
        ax.scatter(p["cost"], p["quality"], color="grey", s=14)
        ax.annotate(p["stages"][0], (p["cost"], p["quality"]), fontsize=7)
    chosen = report["chosen"]
    ax.scatter(chosen["cost"], chosen["quality"], marker="*", s=160, color="red", label="chosen")
    ax.set_xscale("symlog", linthresh=max(1e-12, min((p["cost"] for p in front if p["cost"] > 0),
                                                      default=1.0)))
    ax.set_xlabel(f"mean cost per example ({report['unit']})")
    ax.set_ylabel("quality (metric)")
    ax.set_title(f"cost–quality curve: {title}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out / ".curve.png.tmp"
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(out / "curve.png")
