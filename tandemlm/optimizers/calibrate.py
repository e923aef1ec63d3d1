"""`Calibrate`: choose each cascade's stages, their order and thresholds — by default the cheapest
configuration certified to keep the reference model's accuracy within ε.

Every stage answers every calibration example once (through the call cache; see `stage_runs`),
so any chain of stages and thresholds — cascades, pure routers and hybrids — can be scored offline
(`cost_quality`): an example stops at the first stage whose judge score reaches its threshold,
pays every stage it went through (solver, judge, router), and is right when that stage's answer is.

Targets:

* `epsilon=0.01` (the default): a promise — with probability at least 1 − `delta` over the
  calibration rows, the chosen configuration's accuracy is at least the reference's minus ε,
  where the reference is the best single stage on the labelled rows (`certify.py`: a search on
  some rows, a fixed-sequence test on the others). Unlabeled inputs (`compile(...,
  unlabeled=...)`) add evidence: every stage answers them too, and where a configuration returns
  the reference's own answer it cannot lose to it. When nothing cheaper can be certified, the
  reference is chosen and the report says about how many rows would certify a saving;
* `match=0.99`: the cheapest point whose quality on the calibration rows reaches 99% of the best
  single stage's — no guarantee: it often falls short on new data below a few hundred rows;
* `budget=0.002`: the best quality at a mean cost per example within the budget.

Cost is USD where the stages report it (recorded/API models, priced models), else estimated FLOPs.
The curve (Pareto frontier, single stages, chosen point) is saved as
`curves/NN-<cascade>/curve.json` and `curve.png`.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandemlm.compose import Pipeline
from tandemlm.modules.cascade import Cascade
from tandemlm.optimizers.artifacts import atomic_write
from tandemlm.optimizers.certify import certify
from tandemlm.optimizers.cost_quality import Point, frontier, point_at, search
from tandemlm.optimizers.cost_table import Table, agreement, cost_unit, table_of
from tandemlm.optimizers.passes import CompileContext, Pass
from tandemlm.optimizers.stage_runs import (StageRun, cascade_inputs, cascades, examples_digest,
                                             run_every_stage)
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError


#: calibration examples under which a point chosen by `match` gets a warning: on 150 resampled
#: held-out rows of five replay tasks such a point stayed within half a point of the best single
#: model in about a third of draws (benchmarks/operating_point.py)
SMALL_SAMPLE = 300


@dataclass
class Calibrate(Pass):
    """Pick each cascade's stages, order and thresholds for a target; see the module docstring.

    Args:
        epsilon: the accuracy (absolute: 0.01 is one point) the chosen configuration may lose to
            the reference, certified with probability at least 1 − `delta`. The default target.
        delta: with `epsilon`, the risk that the promise fails, over the draw of the calibration
            rows (default 0.1).
        match: instead, quality as a fraction of the best single stage's (no guarantee).
        budget: instead, mean cost per example (USD, or FLOPs when no stage reports USD).
        reference: with `epsilon`, the stage (solver name or model name) to keep parity with;
            default: the best single stage on the labelled rows.
        agree: with unlabeled inputs, `agree(a, b)` says whether two stages' outputs (dicts of
            output fields) are the same answer; default: identical outputs. Only an answer the
            metric would judge exactly as the reference's may count as agreeing.
        select: with `epsilon`, the share of the rows (labelled and unlabeled each) the search
            runs on; the rest certify its candidates.
        max_stages: longest chain searched.
        grid: thresholds tried per judged stage (quantiles of its scores).
        order: "any" tries every order of the stages; "cost" only chains going from cheaper to
            dearer stages (fewer chains, less overfitting when there are many stages).
        cross_fit: score each labelled example with the judge's (and router's) out-of-fold model
            where `TrainScorer`/`FitJudges`/`TrainRouter` kept them, so thresholds are chosen on
            scores of examples they did not learn from.
        nodes: cascades to calibrate (paths or names); default: all.

    No point dearer than the reference (or, with `match`, the best single stage) is chosen.
    """

    epsilon: float | None = None
    delta: float | None = None
    match: float | None = None
    budget: float | None = None
    reference: str | None = None
    agree: Any = None
    select: float = 0.3
    max_stages: int = 3
    grid: int = 25
    order: str = "any"
    cross_fit: bool = True
    nodes: list[str] | None = None

    name = "calibrate"

    def __post_init__(self) -> None:
        targets = [t for t in (self.epsilon, self.match, self.budget) if t is not None]
        if len(targets) > 1:
            raise ConfigError("Calibrate takes one target: epsilon=0.01 (certified parity with the "
                              "reference, the default), match=0.99 (quality relative to the best "
                              "single stage) or budget=COST (best quality within a mean cost)")
        if not targets:
            self.epsilon = 0.01
        if self.epsilon is None and self.delta is not None:
            raise ConfigError("Calibrate: delta (the risk of the promise) goes with an epsilon "
                              "target; match= and budget= promise nothing")
        if self.epsilon is not None and not 0 < self.epsilon < 1:
            raise ConfigError(f"Calibrate(epsilon={self.epsilon}): the accuracy the chosen point may "
                              f"lose, as a fraction: 0.01 is one point")
        if self.epsilon is not None:
            self.delta = 0.1 if self.delta is None else self.delta
            if not 0 < self.delta <= 0.5:
                raise ConfigError(f"Calibrate(delta={self.delta}): use a risk in (0, 0.5], e.g. 0.1")
        if not 0 < self.select < 1:
            raise ConfigError(f"Calibrate(select={self.select}): the share of rows the search runs "
                              f"on, in (0, 1), e.g. 0.3")
        if self.match is not None and not 0 < self.match <= 1.5:
            raise ConfigError(f"Calibrate(match={self.match}): use a fraction such as 0.99")
        if self.max_stages < 1 or self.grid < 2:
            raise ConfigError("Calibrate: max_stages must be >= 1 and grid >= 2")
        if self.order not in ("any", "cost"):
            raise ConfigError(f"Calibrate(order={self.order!r}): use 'any' or 'cost'")
        if (self.reference is not None or self.agree is not None) and self.epsilon is None:
            raise ConfigError("Calibrate: reference= and agree= go with an epsilon target")
        if self.agree is not None and not callable(self.agree):
            raise ConfigError("Calibrate(agree=...): a function (outputs_a, outputs_b) -> bool")

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        new = ctx.copy(pipeline)
        picked = cascades(new, self.nodes)
        if not picked:
            raise CompileError(f"calibrate: pipeline '{new.name}' has no cascade"
                               + (f" named {', '.join(self.nodes)}" if self.nodes else ""))
        split = ctx.calibration_traces(new, traces)
        unlabeled = ctx.unlabeled_traces(new) if self.epsilon is not None else None
        if ctx.unlabeled and self.epsilon is None:
            ctx.reporter.note("calibrate: unlabeled inputs are evidence for an epsilon target only; "
                              "this match/budget target ignores them")
        for path, cascade in picked.items():
            rows = cascade_inputs(split, path)
            runs = run_every_stage(new, path, rows, ctx, cross_fit=self.cross_fit)
            _require_usable(runs, split, path, "validation" if ctx.valset else "training")
            extra = cascade_inputs(unlabeled, path) if unlabeled is not None else []
            more = run_every_stage(new, path, extra, ctx, cross_fit=False, labelled=False) \
                if extra else []
            chosen, report = self._choose(cascade, runs, [v for _, v in rows], more,
                                          [v for _, v in extra], ctx.seed)
            thresholds = list(cascade.thresholds)
            for s, value in zip(chosen.chain, chosen.thresholds, strict=False):
                thresholds[s] = value
            cascade.set_state({"order": list(chosen.chain), "thresholds": thresholds,
                               **({"router_threshold": chosen.router}
                                  if cascade.router is not None else {})})
            _save_curve(ctx.artifact_dir("curves", path), report, path)
            ctx.details[path] = {k: v for k, v in report.items() if k != "frontier"}
            self._note(ctx, path, report)
        return new

    def _choose(self, cascade: Cascade, runs: list[StageRun], inputs: list[dict[str, Any]],
                more: list[StageRun], more_inputs: list[dict[str, Any]],
                seed: int = 0) -> tuple[Point, dict[str, Any]]:
        """The chosen point and the report, from the labelled rows' runs (and unlabeled ones)."""
        names = [s.name for s in cascade.solvers]
        router = cascade.router if cascade.router is not None and cascade.router.fitted else None
        costs = router.costs(inputs) if router is not None else None
        more_costs = router.costs(more_inputs) if router is not None and more else None
        unit = cost_unit(runs + more, sum(costs[0]) + (sum(more_costs[0]) if more_costs else 0.0)
                         if costs else 0.0)
        chances = router_chances(cascade, inputs, runs, cross_fit=self.cross_fit)
        labelled = table_of(runs, cascade.judges, cross_fit=self.cross_fit, chances=chances,
                            router_cost=costs, unit=unit)
        judged = [j is not None and t for j, t in zip(cascade.judges, labelled.judged, strict=True)]
        find = functools.partial(search, max_stages=self.max_stages, grid=self.grid,
                                 order=self.order, judged=judged)
        points = find(labelled)
        singles = [p for p in points if len(p.chain) == 1]
        best_single = max(singles, key=lambda p: (p.quality, -p.cost))
        report: dict[str, Any] = {"unit": unit, "n": labelled.n, "match": self.match,
                                  "budget": self.budget, "epsilon": self.epsilon,
                                  "best_single": best_single.to_dict(names),
                                  "singles": [p.to_dict(names) for p in singles]}
        if self.epsilon is not None:
            chosen = self._certified(cascade, labelled, more, more_inputs, more_costs, unit, find,
                                     best_single, names, seed, report)
        elif self.match is not None:
            target = self.match * best_single.quality
            chosen = min((p for p in points if p.quality >= target - 1e-12 and p.cost <= best_single.cost),
                         key=lambda p: (p.cost, -p.quality))
            report["target"] = target
        else:
            feasible = [p for p in points if p.cost <= self.budget]
            chosen = (max(feasible, key=lambda p: (p.quality, -p.cost)) if feasible
                      else min(points, key=lambda p: p.cost))
            report["target"] = self.budget
        report.update({
            "chosen": chosen.to_dict(names), "best_by_kind": _best_by_kind(points, chosen, names),
            "cost_vs_best_single": chosen.cost / best_single.cost if best_single.cost else None,
            "small_sample": (self.match is not None and labelled.n < SMALL_SAMPLE
                             and chosen.chain != best_single.chain),
            "frontier": [p.to_dict(names) for p in frontier(points)]})
        return chosen, report

    def _certified(self, cascade: Cascade, labelled: Table, more: list[StageRun],
                   more_inputs: list[dict[str, Any]], more_costs: Any, unit: str, find: Any,
                   best_single: Point, names: list[str], seed: int, report: dict[str, Any]) -> Point:
        """The certified point (scored on the labelled rows), with the promise in `report`."""
        ref = best_single.chain[0] if self.reference is None else _stage(cascade, self.reference)
        table = labelled
        if more:
            router = cascade.router if cascade.router is not None and cascade.router.fitted else None
            chances = router.predict(more_inputs, len(cascade.solvers)) if router is not None else None
            unlabeled = table_of(more, cascade.judges, cross_fit=False, chances=chances,
                                 router_cost=more_costs, unit=unit)
            unlabeled = unlabeled.with_correct(agreement(more, ref, self.agree), labelled=False)
            table = Table.stack([labelled, unlabeled])
            report["unlabeled"] = _spent_on(more, unit, ref, names)
        certificate = certify(table.relative_to(ref), ref, epsilon=self.epsilon, delta=self.delta,
                              search=find, select=self.select, seed=seed)
        chosen = certificate.chosen
        on_labels = point_at(labelled, list(chosen.chain), _by_stage(chosen, len(names)), chosen.router)
        report.update({"reference": point_at(labelled, [ref], [0.0] * len(names)).to_dict(names),
                       "promise": certificate.to_dict(names), "target": None,
                       "cost_all_rows": chosen.cost,
                       "reference_cost_all_rows": certificate.reference.cost})
        return on_labels

    def _note(self, ctx: CompileContext, path: str, report: dict[str, Any]) -> None:
        chosen = report["chosen"]
        ctx.reporter.note(f"calibrate {path}: {chosen['kind']} {' -> '.join(chosen['stages'])}, "
                          f"quality {chosen['quality']:.3f}, cost {chosen['cost']:.3g} {report['unit']}")
        if "promise" in report:
            ctx.reporter.note(f"calibrate {path}: {report['promise']['statement']}")
        if "unlabeled" in report:
            spent = report["unlabeled"]
            ctx.reporter.note(f"calibrate {path}: every stage answered {spent['rows']} unlabeled "
                              f"inputs for {spent['total']:.4g} {report['unit']} "
                              f"({spent['reference']:.4g} of it the reference's answers)")
        if report["small_sample"]:
            ctx.reporter.note(
                f"calibrate {path}: warning: chosen on {report['n']} examples; on fewer than "
                f"{SMALL_SAMPLE}, a point that matches the best single stage there often falls "
                f"short of it on new data: Calibrate(epsilon=...) certifies a point instead")


def _stage(cascade: Cascade, name: str) -> int:
    """The index of the stage whose solver (or its model) is called `name`."""
    for s, solver in enumerate(cascade.solvers):
        model = getattr(solver, "model", None)
        if name in (solver.name, getattr(model, "name", model)):
            return s
    raise ConfigError(f"Calibrate(reference={name!r}): cascade '{cascade.name}' has no such stage; "
                      f"stages: {', '.join(s.name for s in cascade.solvers)}")


def _by_stage(p: Point, n: int) -> list[float]:
    """A point's thresholds indexed by stage (as `Cascade.thresholds`), 0.5 where unused."""
    out = [0.5] * n
    for s, value in zip(p.chain, p.thresholds, strict=False):
        out[s] = value
    return out


def _spent_on(runs: list[StageRun], unit: str, reference: int, names: list[str]) -> dict[str, Any]:
    """What running every stage (and judge) on the unlabeled inputs cost, in `unit`."""
    def paid(r: StageRun) -> float:
        usd = unit == "usd"
        return float(sum(r.usd if usd else r.flops) + sum(r.judge_usd if usd else r.judge_flops))
    per = {names[r.index]: paid(r) for r in runs}
    return {"rows": len(runs[0].answers), "per_stage": per, "total": sum(per.values()),
            "reference": per[names[reference]]}


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
