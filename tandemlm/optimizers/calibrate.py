"""`Calibrate`: choose each cascade's stages, their order and thresholds on the cost–quality curve.

Every stage answers every validation example once (through the call cache; see `stage_runs`),
so any chain of stages and thresholds can be scored offline (`cost_quality`): an example stops at
the first stage whose judge score reaches its threshold, pays every stage it went through (solver
and judge), and is right when that stage's answer is. The search covers every ordered chain of up
to `max_stages` stages (judged stages first) and, per stage, thresholds at quantiles of its judge's
scores.

Targets (FrugalGPT's two questions):

* `match=0.99`: the cheapest point whose quality reaches 99% of the best single stage's;
* `budget=0.002`: the best quality at a mean cost per example within the budget.

Cost is USD where the stages report it (recorded/API models), else estimated FLOPs. The curve
(Pareto frontier, single stages, chosen point) is saved as `curves/NN-<cascade>/curve.json` and
`curve.png`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandemlm.compose import Pipeline
from tandemlm.modules.cascade import Cascade
from tandemlm.optimizers.artifacts import atomic_write
from tandemlm.optimizers.cost_quality import Point, cost_quality_points, frontier, robust_choice
from tandemlm.optimizers.passes import CompileContext, Pass
from tandemlm.optimizers.stage_runs import (StageRun, cascade_inputs, cascades, examples_digest,
                                             run_every_stage)
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError


#: calibration examples under which a chosen multi-stage point gets a warning: on 150 resampled
#: held-out rows of five replay tasks the `delta=0.1` point stayed within half a point of the best
#: single model in 36% of draws (73% on 300-600 rows; benchmarks/operating_point.py)
SMALL_SAMPLE = 300


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
