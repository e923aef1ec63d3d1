"""`FitJudges`: fit every cascade's `FeatureJudge`s and pick the features that work.

Every stage answers every example (`stage_runs`, through the call cache), and the metric labels
each answer. For a judged stage the rows are (its feature values, right?) once with no earlier
stage and once after each of a few seeded subsets of the stages declared before it (agreement
with them: a cascade escalates from cheap to dear, so a stage is compared with cheaper ones), so
one model serves the chains `Calibrate` may then choose.

Each non-empty subset of the judge's features (text, confidence, agreement) is cross-fitted: a
logistic model fitted on k−1 folds of the examples scores the held-out fold, and the subset's
out-of-fold AUC is that of these scores pooled over every example (each held out once). The best
subset (the smaller one on a near tie) is refitted on all rows and kept, with its k fold models
(`cross_fit` in the judge's state): `Calibrate` scores each calibration example with the model
that did not see it, so thresholds are chosen on honest scores over the whole split. The report
says, per stage, which features won and every subset's out-of-fold AUC.

Put it after `TrainScorer` (which trains a judge's text scorer) and before `Calibrate`; with a
valset it fits there, as `Calibrate` does.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np

from tandemlm.compose import Pipeline
from tandemlm.modules.cascade import Cascade
from tandemlm.modules.feature_judge import FeatureJudge, agreement
from tandemlm.optimizers.passes import CompileContext, Pass
from tandemlm.optimizers.stage_runs import (StageRun, cascade_inputs, cascades, examples_digest,
                                             run_every_stage)
from tandemlm.optimizers.train_scorer import auc
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError

TIE = 0.002  # held-out AUCs closer than this are a tie, won by fewer features


def logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """Weights (bias last) of an L2-regularised logistic regression, by Newton's method.

    With more features than rows (a router's hashed words and embedding on a few hundred
    examples) it solves in the span of the rows: the penalty grows with any part of the weights
    outside it and the predictions do not, so the optimum lies there, and each Newton step then
    costs rows³ instead of features³."""
    n, d = x.shape
    if l2 > 0 and d > 2 * n > 0:  # nearer square, the decomposition costs what it saves
        _, sv, vt = np.linalg.svd(x, full_matrices=False)
        basis = vt[sv > sv[0] * 1e-12].T if sv[0] > 0 else vt[:0].T
        w = logistic(x @ basis, y, l2, steps)
        return np.concatenate([basis @ w[:-1], w[-1:]])
    x = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x.shape[1])
    ridge = l2 * np.eye(x.shape[1])
    ridge[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        grad = x.T @ (p - y) + ridge @ w
        hess = x.T @ (x * (p * (1 - p))[:, None]) + ridge + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


@dataclass
class _Rows:
    example: list[int]
    values: list[dict[str, float | None]]
    label: list[float]


@dataclass
class FitJudges(Pass):
    """Fit `FeatureJudge`s on labelled stage answers; see the module docstring.

    Args:
        folds: k of the cross-fit (example i is in fold i mod k).
        prefixes: seeded subsets of the earlier stages each example is also seen after.
        max_earlier: the largest such subset (a chain of `max_earlier + 1` judged stages).
        l2: regularisation of the logistic model (on standardised features).
        nodes: cascades whose judges to fit (paths or names); default: all.
    """

    folds: int = 5
    prefixes: int = 12
    max_earlier: int = 2
    l2: float = 1.0
    nodes: list[str] | None = None

    name = "fit_judges"

    def __post_init__(self) -> None:
        if self.folds < 2 or self.prefixes < 0 or self.max_earlier < 0:
            raise ConfigError(f"FitJudges: folds must be >= 2 (got {self.folds}); prefixes and "
                              f"max_earlier must be >= 0")

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        new = ctx.copy(pipeline)
        split = ctx.calibration_traces(new, traces)
        fitted = 0
        for path, cascade in cascades(new, self.nodes).items():
            stages = [s for s, j in enumerate(cascade.judges) if isinstance(j, FeatureJudge)]
            if not stages:
                continue
            runs = run_every_stage(new, path, cascade_inputs(split, path), ctx)
            won: Counter[str] = Counter()
            for s in stages:
                chosen = self._fit(cascade, runs, s, ctx, f"{path}/{cascade.solvers[s].name}")
                won.update(chosen)
                fitted += 1
            ctx.details[path] = {**ctx.details.get(path, {}), "features_won": dict(won)}
        if not fitted:
            raise CompileError(f"{self.name}: pipeline '{new.name}' has no cascade judged by a "
                               f"FeatureJudge")
        return new

    def rows(self, cascade: Cascade, runs: list[StageRun], s: int, rng: random.Random) -> _Rows:
        """Stage `s`'s labelled feature values, alone and after seeded subsets of earlier stages."""
        judge: FeatureJudge = cascade.judges[s]  # type: ignore[assignment]
        others = list(range(s))
        subsets = [c for k in range(1, self.max_earlier + 1) for c in itertools.combinations(others, k)]
        chosen = [()] + rng.sample(subsets, min(self.prefixes, len(subsets)))
        out = _Rows([], [], [])
        for i, (answer, trace) in enumerate(zip(runs[s].answers, runs[s].judge_traces, strict=True)):
            if not answer.ok or trace is None or "features" not in trace.info:
                continue
            mine = answer.outputs.get(judge.field)
            for subset in chosen:
                before = [runs[j].answers[i].outputs.get(judge.field) for j in subset
                          if runs[j].answers[i].ok]
                out.example.append(i)
                out.values.append({**trace.info["features"], "agreement": agreement(mine, before)})
                out.label.append(float(runs[s].correct[i]))
        return out

    def _fit(self, cascade: Cascade, runs: list[StageRun], s: int, ctx: CompileContext,
             name: str) -> list[str]:
        judge: FeatureJudge = cascade.judges[s]  # type: ignore[assignment]
        rows = self.rows(cascade, runs, s, ctx.rng(f"prefixes:{name}"))
        y = np.array(rows.label)
        if len(set(rows.label)) < 2:  # always right (or always wrong): nothing to learn
            ctx.reporter.note(f"{self.name} {name}: every answer is "
                              f"{'right' if rows.label and rows.label[0] else 'wrong'}; kept as is")
            return []
        usable = [f for f in judge.available if _informative(rows.values, f)]
        if not usable:  # e.g. the first stage, with no confidence reported and nothing before it
            ctx.reporter.note(f"{self.name} {name}: no feature varies here; kept as is")
            ctx.details[name] = {"features": [], "rows": len(rows.label), "held_out_auc": {}}
            return []
        fold = np.array(rows.example) % self.folds
        results, fold_fits = {}, {}
        for k in range(1, len(usable) + 1):
            for subset in itertools.combinations(usable, k):
                x = np.array([judge.vector(v, subset) for v in rows.values])
                fold_fits[subset] = [_fit(x[fold != f], y[fold != f], self.l2)
                                     for f in range(self.folds)]
                z = np.zeros(len(y))
                for f, fitted in enumerate(fold_fits[subset]):
                    held = fold == f
                    if held.any():
                        z[held] = _margin(x[held], *fitted)
                results[subset] = auc(list(np.round(z, 9)), list(y))  # float noise: ties
        scored = {k: v for k, v in results.items() if v is not None}
        top = max(scored.values(), default=None)
        best = min((k for k, v in scored.items() if top - v <= TIE), key=len) if scored \
            else tuple(judge.features)
        x = np.array([judge.vector(v, best) for v in rows.values])
        columns = judge.columns(best)
        state = _state(columns, *_fit(x, y, self.l2))
        fitted = fold_fits.get(best) or [_fit(x[fold != f], y[fold != f], self.l2)
                                         for f in range(self.folds)]  # no subset scored
        folds = [_state(columns, *f) for f in fitted]
        judge.set_state({"features": list(best), **state,
                         "cross_fit": {"examples": examples_digest(runs), "folds": folds}})
        ctx.details[name] = {"features": list(best), "rows": len(rows.label),
                             "held_out_auc": {"+".join(k): v for k, v in results.items()}}
        ctx.reporter.note(f"{self.name} {name}: {'+'.join(best)} (out-of-fold AUC "
                          f"{results.get(best) or float('nan'):.3f}"
                          + "".join(f", {'+'.join(k)} {v:.3f}" for k, v in scored.items() if k != best)
                          + ")")
        return list(best)


def _informative(values: list[dict[str, float | None]], feature: str) -> bool:
    """Whether `feature` takes more than one value (missing counts as one) in these rows."""
    return len({v.get(feature) for v in values}) > 1


def _fit(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights with the bias last, column means, column scales) of the logistic model on
    standardised columns; one class only gives a constant model at its frequency."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-12] = 1.0
    if len(set(y.tolist())) < 2:
        rate = float(np.clip(y.mean() if len(y) else 0.5, 1e-3, 1 - 1e-3))
        return np.append(np.zeros(x.shape[1]), np.log(rate / (1 - rate))), mean, std
    return logistic((x - mean) / std, y, l2), mean, std


def _margin(x: np.ndarray, w: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x - mean) / std) @ w[:-1] + w[-1]


def _state(columns: list[str], w: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict:
    """A `FeatureJudge` state's weights and scale (JSON values)."""
    return {"weights": {**dict(zip(columns, map(float, w[:-1]), strict=True)), "bias": float(w[-1])},
            "scale": {c: [float(m), float(d)] for c, m, d in zip(columns, mean, std, strict=True)}}
