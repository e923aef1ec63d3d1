"""The arrays a cost–quality search reads: per stage and calibration row, the answer's value, its
cost, its judge's cost and score, and the router's prediction.

Every stage answers every calibration row once (`stage_runs`); `table_of` turns those runs into a
`Table`. On a labelled row an answer's value is whether the metric accepts it; on an unlabeled row
(inputs only) it is whether the answer agrees with the reference stage's (`agreement`): where a
configuration returns the reference's own answer it is exactly as good as the reference there, so
disagreement bounds what it can lose. Tables are cut (`take`) into selection and certification
rows and stacked (`stack`) labelled over unlabeled, the judges' scores computed once on the rows
they were built for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tandemlm.optimizers.stage_runs import StageRun, examples_digest


class Table:
    """Per-stage arrays over calibration rows: what each stage's answer is worth on each row
    (`correct`: 1/0 on a labelled row; on an unlabeled row, whether it agrees with the reference
    stage's answer, see `agreement`), what it costs, what its judge costs, the judge's scores and
    the router's predictions. A table can be cut to some rows (`take`) or stacked with another
    (`stack`): the judges' scores are computed on the table they were built for and indexed, so a
    judge's out-of-fold copies score the rows they were fitted for."""

    def __init__(self, *, unit: str, correct: list[np.ndarray], cost: list[np.ndarray],
                 judge_cost: list[np.ndarray], judged: list[bool],
                 scorer: Any, chances: np.ndarray | None = None,
                 router_cost: np.ndarray | None = None, labelled: np.ndarray | None = None) -> None:
        self.unit, self.correct, self.cost, self.judge_cost = unit, correct, cost, judge_cost
        self.judged, self._scorer = judged, scorer
        n = len(correct[0]) if correct else 0
        #: (stages × rows) the router's predicted chance each stage answers right, if routed
        self.chances = chances
        #: per row, what the router's own calls cost (paid by routed configurations only)
        self.router_cost = np.zeros(n) if router_cost is None else router_cost
        #: per row, whether `correct` holds correctness (True) or agreement with the reference
        self.labelled = np.ones(n, dtype=bool) if labelled is None else labelled
        #: per row, the reference stage's value, once set (`relative_to`): points then carry
        #: their `discord` with it
        self.base: np.ndarray | None = None
        self._scores: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    @property
    def n(self) -> int:
        return len(self.correct[0]) if self.correct else 0

    def score(self, s: int, before: tuple[int, ...]) -> np.ndarray:
        """Stage `s`'s judge scores (NaN: unscored) after the stages `before` ran: a judge that
        compares with earlier answers scores differently after another chain."""
        key = (s, tuple(sorted(before)))
        if key not in self._scores:
            self._scores[key] = self._scorer(s, key[1])
        return self._scores[key]

    def thresholds(self, scores: np.ndarray, grid: int) -> np.ndarray:
        """Quantiles of the scores seen, and +inf: never stop here (the stage still answers, for
        the judges of later stages to compare with)."""
        seen = scores[~np.isnan(scores)]
        if not len(seen):
            return np.array([np.inf])
        return np.append(np.unique(np.quantile(seen, np.linspace(0, 1, grid))), np.inf)

    def relative_to(self, reference: int) -> Table:
        """This table with the reference stage's values as `base`."""
        self.base = self.correct[reference].copy()
        return self

    def take(self, rows: np.ndarray) -> Table:
        """The table on some of its rows (indices, in that order)."""
        rows = np.asarray(rows, dtype=int)
        table = Table(unit=self.unit, correct=[c[rows] for c in self.correct],
                     cost=[c[rows] for c in self.cost], judge_cost=[c[rows] for c in self.judge_cost],
                     judged=self.judged, scorer=lambda s, before: self.score(s, before)[rows],
                     chances=None if self.chances is None else self.chances[:, rows],
                     router_cost=self.router_cost[rows], labelled=self.labelled[rows])
        table.base = None if self.base is None else self.base[rows]
        return table

    def with_correct(self, correct: list[np.ndarray], labelled: bool) -> Table:
        """The same rows with other per-stage values (agreement instead of correctness)."""
        table = self.take(np.arange(self.n))
        table.correct = [np.asarray(c, dtype=float) for c in correct]
        table.labelled = np.full(self.n, labelled)
        table.base = None
        return table

    @staticmethod
    def stack(tables: list[Table]) -> Table:
        """The rows of several tables of the same stages and unit, one after another."""
        tables = [t for t in tables if t.n]
        if len(tables) == 1:
            return tables[0]
        units = {t.unit for t in tables}
        if len(units) > 1:
            raise ValueError(f"tables in different cost units: {sorted(units)}")
        def cat(arrays: list[list[np.ndarray]]) -> list[np.ndarray]:
            return [np.concatenate(parts) for parts in zip(*arrays, strict=True)]
        routed = [t.chances is not None for t in tables]
        table = Table(unit=tables[0].unit, correct=cat([t.correct for t in tables]),
                     cost=cat([t.cost for t in tables]), judge_cost=cat([t.judge_cost for t in tables]),
                     judged=tables[0].judged,
                     scorer=lambda s, before: np.concatenate([t.score(s, before) for t in tables]),
                     chances=np.hstack([t.chances for t in tables]) if all(routed) else None,
                     router_cost=np.concatenate([t.router_cost for t in tables]),
                     labelled=np.concatenate([t.labelled for t in tables]))
        if all(t.base is not None for t in tables):
            table.base = np.concatenate([t.base for t in tables])
        return table


def cost_unit(runs: list[StageRun], router_usd: float = 0.0) -> str:
    """"usd" when any call of the runs reported a price, else "flops"."""
    usd = sum(sum(r.usd) + sum(r.judge_usd) for r in runs) + router_usd
    return "usd" if usd > 0 else "flops"


def table_of(runs: list[StageRun], judges: list[Any] | None = None, *, cross_fit: bool = True,
             chances: np.ndarray | None = None, router_cost: tuple[list[float], list[float]] | None = None,
             unit: str | None = None) -> Table:
    """The table of stage runs: each stage's correctness (all False where the runs hold none: an
    unlabeled table gets its values from `agreement`), costs in `unit` (default `cost_unit`), the
    judges' recorded scores — or, for a judge comparing with earlier answers (`rescore`), its
    scores re-computed for each chain — and with `cross_fit` each row scored by the judge's
    out-of-fold copy where it kept them for these rows (row i: copy i mod k). `router_cost`:
    (USD, FLOPs) of the router's calls per row."""
    judges = judges or [None] * len(runs)
    unit = unit or cost_unit(runs, sum(router_cost[0]) if router_cost else 0.0)
    n = len(runs[0].answers) if runs and runs[0].answers else (len(runs[0].usd) if runs else 0)
    usd = unit == "usd"
    folds: list[Any] = [None] * len(judges)
    if cross_fit:
        digest = examples_digest(runs)
        folds = [j.fold_judges(digest) if hasattr(j, "fold_judges") else None for j in judges]
    recorded = [np.array([np.nan if s is None else s for s in r.scores] or [np.nan] * n)
                for r in runs]

    def scorer(s: int, before: tuple[int, ...]) -> np.ndarray:
        judge = judges[s]
        if folds[s] is None and (not before or not hasattr(judge, "rescore")):
            return recorded[s]
        return _rescored(runs, judge, folds[s], s, before)

    return Table(unit=unit,
                 correct=[np.array(r.correct if r.correct else [False] * n, dtype=float) for r in runs],
                 cost=[np.array(r.usd if usd else r.flops, dtype=float) for r in runs],
                 judge_cost=[np.array((r.judge_usd if usd else r.judge_flops) or [0.0] * n, dtype=float)
                             for r in runs],
                 judged=[bool(r.scores) for r in runs], scorer=scorer, chances=chances,
                 router_cost=(np.array(router_cost[0 if usd else 1], dtype=float)
                              if router_cost else None))


def _rescored(runs: list[StageRun], judge: Any, folds: list[Any] | None, s: int,
              before: tuple[int, ...]) -> np.ndarray:
    """Stage `s`'s judge re-scoring its answers as if the stages `before` had run first, each row
    by its out-of-fold copy when `folds` (row i: copy i mod k)."""
    field, run = judge.field, runs[s]

    def said(r: StageRun, i: int) -> Any:
        return (r.answers[i].outputs or {}).get(field) if r.answers[i].ok else None
    features = [t.info.get("features") if t is not None else None for t in run.judge_traces]
    earlier = [[said(runs[j], i) for j in before if runs[j].answers[i].ok]
               for i in range(len(run.answers))]
    mine = [said(run, i) for i in range(len(run.answers))]
    got = np.full(len(mine), np.nan)
    scorers = folds or [judge]
    for f, scorer in enumerate(scorers):
        rows = list(range(f, len(mine), len(scorers)))
        out = scorer.rescore([features[i] for i in rows], [mine[i] for i in rows],
                             [earlier[i] for i in rows])
        got[rows] = [np.nan if x is None else x for x in out]
    return got


def agreement(runs: list[StageRun], reference: int, agree: Any = None) -> list[np.ndarray]:
    """Per stage and row, whether its answer agrees with the reference stage's (by `agree(a, b)`
    on the two answers' outputs; default: identical outputs). Where the reference failed, any
    answer counts as agreeing: the reference was wrong there, so no answer can lose to it."""
    same = agree or (lambda a, b: a == b)
    ref = runs[reference].answers
    out = []
    for run in runs:
        out.append(np.array([(not r.ok) or (a.ok and bool(same(dict(a.outputs), dict(r.outputs))))
                             for a, r in zip(run.answers, ref, strict=True)], dtype=float))
    return out
