"""The cost–quality curve of a cascade, scored offline, and the choice of a point on it.

Every stage answers every calibration example once (`stage_runs`), so any chain of stages and
thresholds can be scored from arrays: an example stops at the first stage whose judge score reaches
its threshold, pays every stage it went through (solver and judge), and is right when that stage's
answer is. A `Table` holds those arrays (on unlabeled rows, whether each stage agrees with the
reference stage instead of whether it is right); `search` scores every chain of up to
`max_stages` stages at thresholds on quantiles of each judge's scores (with a router's
predictions, also routers and hybrids), and `frontier` keeps the Pareto-optimal points.
`certify.py` chooses a point with a guarantee; `Calibrate` (calibrate.py) is the compile pass.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from tandemlm.modules.cascade import json_threshold
from tandemlm.modules.router import entries
from tandemlm.optimizers.cost_table import Table, table_of
from tandemlm.optimizers.stage_runs import StageRun


@dataclass
class Point:
    """One cascade configuration and how it does on the calibration set."""

    chain: tuple[int, ...]
    thresholds: tuple[float, ...]
    quality: float
    cost: float
    #: the router's entry threshold (None: every example enters at the first stage)
    router: float | None = None
    #: with the table's `base` set, the share of rows where this point's answer is worth other
    #: than the reference's (labelled: right where it is wrong or wrong where it is right;
    #: unlabeled: another answer)
    discord: float = 0.0

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
                "cost": self.cost, "kind": self.kind,
                **({"router_threshold": self.router} if self.router is not None else {})}


#: threshold combinations tried per chain at most: a long chain gets a coarser grid per stage
COMBINATIONS = 4096


#: examples × combinations in one array at most (several such float arrays are alive at once)
BLOCK = 250_000


def _chain_points(t: Table, chain: tuple[int, ...], grid: int, *, every: bool = False) -> list[Point]:
    """The threshold combinations of one chain that any choice can want: those on the chain's
    Pareto frontier of cost against quality, or of cost against `discord` (with the table's
    `base` set) — every other combination is beaten on both by a cheaper or equal one of the same
    chain. With `every`, all combinations, in the order of `itertools.product` over the stages'
    threshold grids. Figures are those `_point` gives one at a time (quality exactly, cost up to
    rounding).

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
    n, last_grid = t.n, grids[-1]
    order = np.argsort(scores[-1], kind="stable")
    # per threshold, the first example (in score order) that stops at s: those from it on do
    at = np.searchsorted(scores[-1][order], last_grid, side="left")
    split = functools.partial(_split, order=order, at=at)
    step = max(1, BLOCK // max(n, 1))
    figures: list[np.ndarray] = []
    for start in range(0, len(heads), step):
        block = heads[start:start + step]
        open_, right, cost = _through(t, judged[:-1], scores[:-1], block, n)
        cost += open_ * (t.cost[s] + t.judge_cost[s])
        total = right.sum(axis=1, keepdims=True) + split(open_ * t.correct[s], open_ * t.correct[last])
        paid = cost.sum(axis=1, keepdims=True) + split(None, open_ * t.cost[last])
        unjudged = last_grid == -np.inf  # every answer accepted: the judge is not called
        if unjudged.any():
            paid[:, unjudged] -= (open_ * t.judge_cost[s]).sum(axis=1, keepdims=True)
        discord = np.zeros_like(total)
        if t.base is not None:  # values are 0/1: (base - right)² sums to base + right - 2·both
            both = (right * t.base).sum(axis=1, keepdims=True) + split(
                open_ * t.correct[s] * t.base, open_ * t.correct[last] * t.base)
            discord = (t.base.sum() + total - 2 * both) / n
        figures.append(np.stack([total / n, paid / n, discord]).reshape(3, -1))
    quality, cost, discord = np.concatenate(figures, axis=1)
    keep = np.arange(len(quality)) if every else _worth_keeping(quality, cost, discord)
    width = len(last_grid)
    return [Point(chain, (*heads[i // width].tolist(), float(last_grid[i % width])),
                  float(quality[i]), float(cost[i]), discord=float(discord[i]))
            for i in keep.tolist()]


def _worth_keeping(quality: np.ndarray, cost: np.ndarray, discord: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the points on the Pareto frontier of cost against quality or of
    cost against discord (ties: the first)."""
    order = np.lexsort((np.arange(len(cost)), -quality, cost))
    q = quality[order]
    better = q > np.concatenate([[-np.inf], np.maximum.accumulate(q)[:-1]])
    order_d = np.lexsort((np.arange(len(cost)), discord, cost))
    d = discord[order_d]
    closer = d < np.concatenate([[np.inf], np.minimum.accumulate(d)[:-1]])
    return np.union1d(order[better], order_d[closer])


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


def _through(t: Table, stages: tuple[int, ...], scores: list[np.ndarray], combos: np.ndarray,
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


def _point(t: Table, chain: tuple[int, ...], scores: list[np.ndarray], combo: tuple,
           router: float | None = None, entry: np.ndarray | None = None) -> Point:
    """The point (chain, thresholds `combo`, router threshold `router`) on the table. `entry` is
    where the router at `router` sends each example (`entries`): the caller computed it already
    for `scores`, which depend on it."""
    right, cost = _outcome(t, chain, scores, combo, entry, router)
    discord = float(((t.base - right) ** 2).mean()) if t.base is not None and len(right) else 0.0
    return Point(chain, tuple(float(x) for x in combo), float(right.mean()), float(cost.mean()),
                 router, discord)


def _outcome(t: Table, chain: tuple[int, ...], scores: list[np.ndarray], combo: tuple,
             entry: np.ndarray | None = None, router: float | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the answer's value (`Table.correct` of the stage that answers), and what the
    example pays — every stage it went through, their judges, and with a `router` threshold the
    router's own call. `entry`: the position each example enters the chain at (the router's
    choice; default the first)."""
    *judged, last = chain
    n = len(t.correct[last])
    entry = np.zeros(n, dtype=int) if entry is None else entry
    open_ = np.zeros(n, dtype=bool)
    right = np.zeros(n)
    cost = t.router_cost.copy() if router is not None else np.zeros(n)
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


def _scores(t: Table, chain: tuple[int, ...], entry: np.ndarray | None = None) -> list[np.ndarray]:
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


def _entry(t: Table, chain: tuple[int, ...], router: float | None) -> np.ndarray | None:
    return None if router is None or t.chances is None else entries(t.chances, chain, router)


def outcome(t: Table, p: Point) -> tuple[np.ndarray, np.ndarray]:
    """Per example, point `p`'s answer's value (see `_outcome`) and what it pays."""
    entry = _entry(t, p.chain, p.router)
    return _outcome(t, p.chain, _scores(t, p.chain, entry), p.thresholds, entry, p.router)


def point_at(t: Table, chain: list[int], thresholds: list[float],
             router: float | None = None) -> Point:
    """How one configuration (stage order, each stage's threshold, the router's threshold) does
    on the table."""
    chain_ = tuple(chain)
    entry = _entry(t, chain_, router)
    return _point(t, chain_, _scores(t, chain_, entry),
                  tuple(float(thresholds[s]) for s in chain_[:-1]), router, entry)


def _routed_points(t: Table, chains: list[tuple[int, ...]], cascade_front: list[Point],
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
        zeros = [np.zeros(t.n)] * (len(chain) - 1)  # scores unused: every stage accepts
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


def search(table: Table, *, max_stages: int = 3, grid: int = 25, order: str = "any",
           judged: list[bool] | None = None) -> list[Point]:
    """Every chain of up to `max_stages` stages (judged stages first; with order="cost" only
    chains from cheaper to dearer stages, by mean cost on the table) at every threshold
    combination, scored on the table; with the router's chances, also routers and hybrids
    (`_routed_points`). `judged`: which stages have a judge (default: those with scores)."""
    judged = table.judged if judged is None else judged
    stages = list(range(len(table.correct)))
    if order == "cost":
        stages.sort(key=lambda s: float(table.cost[s].mean()) if table.n else 0.0)
    chains = itertools.combinations if order == "cost" else itertools.permutations
    points = [p for s in stages for p in _chain_points(table, (s,), grid)]
    longer = [c for length in range(2, min(max_stages, len(stages)) + 1)
              for c in chains(stages, length) if all(judged[s] for s in c[:-1])]
    for chain in longer:
        points += _chain_points(table, chain, grid)
    if table.chances is not None:
        points += _routed_points(table, longer, frontier(points), grid)
    return points


def cost_quality_points(runs: list[StageRun], judges: list[Any], *, max_stages: int = 3,
                        grid: int = 25, order: str = "any", cross_fit: bool = True,
                        chances: np.ndarray | None = None,
                        router_cost: tuple[list[float], list[float]] | None = None
                        ) -> tuple[Table, list[Point]]:
    """The table of the runs (`table_of`) and every point of `search` on it."""
    table = table_of(runs, judges, cross_fit=cross_fit, chances=chances, router_cost=router_cost)
    judged = [t and j is not None for t, j in zip(table.judged, judges, strict=True)] \
        if judges else table.judged
    return table, search(table, max_stages=max_stages, grid=grid, order=order, judged=judged)


def frontier(points: list[Point]) -> list[Point]:
    """The Pareto frontier: no other point is at least as good and strictly cheaper."""
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p.cost, -p.quality)):
        if p.quality > best:
            out.append(p)
            best = p.quality
    return out
