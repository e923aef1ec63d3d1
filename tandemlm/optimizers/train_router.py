"""`TrainRouter`: fit each cascade's `TextRouter` from every stage's answers.

Every stage answers every example (`stage_runs`, through the call cache), so every model's
correctness on every example is a label: per stage, a logistic model on the router's input
features predicts it. Per stage the regularisation is chosen by out-of-fold log loss (k folds:
fit on k−1, score the held-out one), against a constant model at the stage's accuracy — a stage
whose rightness the input does not predict gets that constant, so the router never claims signal
it does not have. The winner is refitted on all rows and kept with its k fold models (the
router's `cross_fit`), so `Calibrate` chooses the router threshold on predictions for examples
the router did not learn from. The report gives each stage's out-of-fold AUC.

The pass leaves the router off (no threshold): `Calibrate` decides whether routing pays. Put it
before `Calibrate`; with a valset it fits there, as `Calibrate` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandemlm.compose import Pipeline
from tandemlm.modules.router import chance
from tandemlm.optimizers.fit_judges import logistic
from tandemlm.optimizers.passes import CompileContext, Pass
from tandemlm.optimizers.stage_runs import cascade_inputs, cascades, examples_digest, run_every_stage
from tandemlm.optimizers.train_scorer import auc
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError

#: a fitted model must beat the constant by this much out-of-fold log loss (nats per example)
MARGIN = 0.002


@dataclass
class TrainRouter(Pass):
    """Fit `TextRouter`s on labelled stage answers; see the module docstring.

    Args:
        folds: k of the cross-fit (example i is in fold i mod k).
        l2: regularisation strengths tried per stage (chosen by out-of-fold log loss).
        nodes: cascades whose routers to fit (paths or names); default: all.
    """

    folds: int = 5
    l2: tuple[float, ...] = (0.3, 3.0, 30.0)
    nodes: list[str] | None = None

    name = "train_router"

    def __post_init__(self) -> None:
        self.l2 = tuple(float(x) for x in self.l2)
        if self.folds < 2 or not self.l2 or min(self.l2) <= 0:
            raise ConfigError(f"TrainRouter: folds must be >= 2 (got {self.folds}) and l2 a "
                              f"non-empty list of positive strengths (got {list(self.l2)})")

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        new = ctx.copy(pipeline)
        split = ctx.calibration_traces(new, traces)
        fitted = 0
        for path, cascade in cascades(new, self.nodes).items():
            if cascade.router is None:
                continue
            rows = cascade_inputs(split, path)
            if len(rows) < 2 * self.folds:
                raise CompileError(f"{self.name} {path}: {len(rows)} examples reached the cascade; "
                                   f"a router needs at least {2 * self.folds} ({self.folds} folds)")
            runs = run_every_stage(new, path, rows, ctx, judge=False)
            router = cascade.router
            x = router.features([values.get(router.field) for _, values in rows])
            fold = np.arange(len(rows)) % self.folds
            full: dict[str, dict] = {}
            folds: list[dict[str, dict]] = [{} for _ in range(self.folds)]
            report = {}
            for run in runs:
                y = np.array(run.correct, dtype=float)
                models, report[run.name] = self._fit_stage(x, y, fold)
                full[str(run.index)] = models[0]
                for f in range(self.folds):
                    folds[f][str(run.index)] = models[1 + f]
            router.set_state({**router.state(), "stages": full,
                              "cross_fit": {"examples": examples_digest(runs), "folds": folds}})
            cascade.router_threshold = None
            ctx.details[path] = {**ctx.details.get(path, {}), "router": report}
            ctx.reporter.note(f"{self.name} {path}: out-of-fold AUC "
                              + ", ".join(f"{name} {_fmt(r['held_out_auc'])}"
                                          for name, r in report.items())
                              + " (— : the input does not predict it; a constant model)")
            fitted += 1
        if not fitted:
            raise CompileError(f"{self.name}: pipeline '{new.name}' has no cascade with a router; "
                               f"build it with Cascade(..., router=TextRouter(field=...))")
        return new

    def _fit_stage(self, x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> tuple[list[dict], dict]:
        """([full model, fold models...], report) for one stage's labels."""
        width = x.shape[1]
        candidates: dict[str, list[dict]] = {"constant": [_constant(y[fold != f], width)
                                                          for f in range(self.folds)]}
        if 0 < y.mean() < 1:
            for l2 in self.l2:
                candidates[f"l2={l2:g}"] = [_model(logistic(x[fold != f], y[fold != f], l2))
                                            for f in range(self.folds)]
        held = {name: _held_out(x, fold, fitted) for name, fitted in candidates.items()}
        loss = {name: _log_loss(p, y) for name, p in held.items()}
        fitted_best = min((n for n in loss if n != "constant"), key=loss.get, default=None)
        best = fitted_best if fitted_best is not None and \
            loss[fitted_best] < loss["constant"] - MARGIN else "constant"
        if best == "constant":
            full = _constant(y, width)
        else:
            full = _model(logistic(x, y, float(best.split("=")[1])))
        # a constant model ranks nothing: its fold means would give a meaningless AUC
        report = {"model": best, "held_out_auc": None if best == "constant"
                  else auc(list(np.round(held[best], 9)), list(y)),
                  "held_out_log_loss": loss[best], "constant_log_loss": loss["constant"],
                  "accuracy": float(y.mean())}
        return [full, *candidates[best]], report


def _model(w: np.ndarray) -> dict:
    return {"weights": [float(v) for v in w[:-1]], "bias": float(w[-1])}


def _constant(y: np.ndarray, width: int) -> dict:
    """A model predicting the stage's accuracy whatever the input."""
    rate = float(np.clip(y.mean() if len(y) else 0.5, 1e-3, 1 - 1e-3))
    return {"weights": [0.0] * width, "bias": float(np.log(rate / (1 - rate)))}


def _held_out(x: np.ndarray, fold: np.ndarray, fitted: list[dict]) -> np.ndarray:
    out = np.zeros(len(x))
    for f, model in enumerate(fitted):
        rows = fold == f
        out[rows] = chance(model, x[rows])
    return out


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"
