"""Does `Calibrate(epsilon=...)` keep its promise? Measured over many random draws, not one split.

A suite run (`tandem suite replay --data DIR --out RUN`) compiles each task on its train split,
so the compiled judges and router have never seen its test rows. Here every stage answers every
test row once (through the compiled program, judged by its judges); then, `--draws` times per
task, the test rows are shuffled and cut into `--labels` labelled rows and `--unlabeled` rows
whose labels are hidden — the calibration data — and the rest, on which the chosen point is
evaluated. Per draw:

* the reference is the best single model on the draw's labelled rows (what a user would deploy
  without tandem), and `certify` chooses the cheapest configuration it certifies against it
  (`Calibrate`'s own search and test, `--epsilon` points, risk `--delta`);
* a violation is the chosen point's accuracy on the evaluation rows falling more than ε below
  the reference's there;
* its cost fraction is its mean cost there over the reference's;
* `oracle_within_0_5`: whether it is within half a point of the best single model of the
  evaluation rows (which no rule can know).

With `--compare`, the uncertified rule `Calibrate(match=1.0)` (the cheapest point matching the
reference on the labelled rows) is scored on the same draws. A task with too few test rows for
the asked sizes (and at least `MIN_EVAL` left to evaluate on) is skipped with a note. The last
line printed is one JSON object.

    python benchmarks/operating_point.py --runs RUN --data DIR [--labels 150] [--unlabeled 500]
        [--draws 40] [--epsilon 1.0] [--delta 0.1] [--seed 0] [--tasks mmlu/llama,overruling]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from tandemlm.evaluate.loading import load_program
from tandemlm.optimizers import Calibrate, load
from tandemlm.optimizers.calibrate import router_chances
from tandemlm.optimizers.certify import certify
from tandemlm.optimizers.cost_quality import Point, outcome, search
from tandemlm.optimizers.cost_table import Table, agreement, table_of
from tandemlm.optimizers.passes import CompileContext
from tandemlm.optimizers.report import Reporter
from tandemlm.optimizers.stage_runs import StageRun, cascade_inputs, cascades, run_every_stage
from tandemlm.optimizers.trace_store import TraceStore
from tandemlm.suites.replay import suite
from tandemlm.suites.run import slug

#: evaluation rows a draw keeps at least
MIN_EVAL = 100


class TaskRows:
    """Every stage of a task's compiled cascade on every test row, as tables."""

    def __init__(self, task: Any, out: Path) -> None:
        compiled = load(out / slug(task.name) / "compiled", load_program(task.program))
        path, cascade = next(iter(cascades(compiled).items()))
        store = TraceStore(task.metric, progress=False)
        ctx = CompileContext(trainset=task.test, valset=[], metric=task.metric, store=store,
                             out=out / slug(task.name) / "compiled", reporter=Reporter())
        rows = cascade_inputs(store.run(compiled, task.test), path)
        self.runs: list[StageRun] = run_every_stage(compiled, path, rows, ctx, cross_fit=False)
        inputs = [values for _, values in rows]
        chances = router_chances(cascade, inputs, self.runs, cross_fit=False)
        routing = cascade.router.costs(inputs) if chances is not None else None
        self.table = table_of(self.runs, cascade.judges, cross_fit=False, chances=chances,
                              router_cost=routing)
        self.calibrate = next((p for p in task.passes if isinstance(p, Calibrate)), Calibrate())
        judged = [j is not None and t for j, t in zip(cascade.judges, self.table.judged, strict=True)]
        self.search = functools.partial(search, max_stages=self.calibrate.max_stages,
                                        grid=self.calibrate.grid, order=self.calibrate.order,
                                        judged=judged)
        self.names = [s.name for s in cascade.solvers]
        self._agreeing: dict[int, Table] = {}

    @property
    def n(self) -> int:
        return self.table.n

    def agreeing(self, reference: int) -> Table:
        """The table with each stage's agreement with `reference` as its values (unlabeled)."""
        if reference not in self._agreeing:
            self._agreeing[reference] = self.table.with_correct(agreement(self.runs, reference),
                                                                labelled=False)
        return self._agreeing[reference]


def single(table: Table, s: int) -> Point:
    right, cost = outcome(table, Point((s,), (), 0.0, 0.0))
    return Point((s,), (), float(right.mean()), float(cost.mean()))


def reference_of(table: Table) -> int:
    """The best single stage on the table (the cheaper one on a tie)."""
    singles = [single(table, s) for s in range(len(table.correct))]
    return max(singles, key=lambda p: (p.quality, -p.cost)).chain[0]


def matching(table: Table, points: list[Point], reference: int) -> Point:
    """`Calibrate(match=1.0)`: the cheapest point at least as good as the reference there."""
    ref = next(p for p in points if p.chain == (reference,))
    return min((p for p in points if p.quality >= ref.quality - 1e-12 and p.cost <= ref.cost),
               key=lambda p: (p.cost, -p.quality))


def draw(task: TaskRows, labels: int, unlabeled: int, epsilon: float, delta: float,
         seed: int, compare: bool) -> dict[str, Any]:
    """One draw: calibrate on `labels` + `unlabeled` rows, evaluate on the rest."""
    order = np.random.default_rng(seed).permutation(task.n)
    mine, hidden, held = order[:labels], order[labels:labels + unlabeled], order[labels + unlabeled:]
    labelled = task.table.take(mine)
    ref = reference_of(labelled)
    parts = [labelled] + ([task.agreeing(ref).take(hidden)] if unlabeled else [])
    started = time.perf_counter()
    cert = certify(Table.stack(parts).relative_to(ref), ref, epsilon=epsilon, delta=delta,
                   search=task.search, select=task.calibrate.select, seed=seed)
    seconds = time.perf_counter() - started
    test = task.table.take(held)
    on_test = single(test, ref)
    best = max(single(test, s).quality for s in range(len(test.correct)))
    result = {"reference": task.names[ref], "reference_accuracy": on_test.quality,
              "certified": cert.certified, "seconds": seconds,
              "rows_needed": (cert.needed or {}).get("rows"),
              "rules": {"certified": score(test, cert.chosen, on_test, best, epsilon)}}
    if compare:
        chosen = matching(labelled, task.search(labelled), ref)
        result["rules"]["match"] = score(test, chosen, on_test, best, epsilon)
    return result


def score(test: Table, chosen: Point, reference: Point, best: float, epsilon: float) -> dict[str, Any]:
    right, cost = outcome(test, chosen)
    accuracy = float(right.mean())
    return {"kind": chosen.kind, "accuracy": accuracy,
            "delta_points": 100 * (accuracy - reference.quality),
            "violation": accuracy < reference.quality - epsilon - 1e-12,
            "cost_fraction": float(cost.mean()) / reference.cost if reference.cost else 1.0,
            "oracle_within_0_5": accuracy >= best - 0.005 - 1e-12}


def summarise(draws: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    figures = [d["rules"][rule] for d in draws]
    violations = [f["violation"] for f in figures]
    rate = float(np.mean(violations)) if figures else None
    return {"violation_rate": rate,
            "violation_rate_se": (math.sqrt(rate * (1 - rate) / len(figures)) if figures else None),
            "median_cost_fraction": float(np.median([f["cost_fraction"] for f in figures]))
            if figures else None,
            "mean_delta_points": float(np.mean([f["delta_points"] for f in figures])) if figures else None,
            "oracle_within_0_5": float(np.mean([f["oracle_within_0_5"] for f in figures]))
            if figures else None,
            "saving_share": float(np.mean([f["cost_fraction"] < 1 - 1e-9 for f in figures]))
            if figures else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="a replay suite run directory")
    parser.add_argument("--data", required=True, help="the replay data directory it ran on")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--labels", type=int, default=150, help="labelled rows per draw")
    parser.add_argument("--unlabeled", type=int, default=0, help="unlabeled rows per draw")
    parser.add_argument("--draws", type=int, default=40, help="draws per task")
    parser.add_argument("--epsilon", type=float, default=1.0, help="accuracy points ε")
    parser.add_argument("--delta", type=float, default=0.1, help="risk δ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also score the uncertified Calibrate(match=1.0) on the same draws")
    args = parser.parse_args()
    if args.labels < 1 or args.unlabeled < 0 or args.draws < 1 or not 0 < args.delta <= 0.5 \
            or not 0 < args.epsilon < 100:
        raise SystemExit("need --labels >= 1, --unlabeled >= 0, --draws >= 1, 0 < --delta <= 0.5 "
                         "and 0 < --epsilon < 100 (points)")
    started, epsilon = time.perf_counter(), args.epsilon / 100
    replay = suite(args.data)
    draws: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for t, name in enumerate(replay.select([t for t in args.tasks.split(",") if t] or None)):
        spec = replay.task(name)
        if len(spec.test) < args.labels + args.unlabeled + MIN_EVAL:
            skipped[name] = (f"{len(spec.test)} test rows: fewer than {args.labels} labelled + "
                             f"{args.unlabeled} unlabeled + {MIN_EVAL} to evaluate on")
            print(f"{name}: skipped ({skipped[name]})", flush=True)
            continue
        task = TaskRows(spec, Path(args.runs))
        draws[name] = []
        for d in range(args.draws):
            got = draw(task, args.labels, args.unlabeled, epsilon, args.delta,
                       seed=args.seed * 100_003 + t * 1009 + d, compare=args.compare)
            draws[name].append(got)
            shown = " | ".join(f"{rule}: {'VIOLATION ' if f['violation'] else ''}"
                               f"{f['delta_points']:+.2f} pt at {f['cost_fraction']:.2f}"
                               for rule, f in got["rules"].items())
            print(f"{name} #{d}: reference {got['reference']} | {shown}", flush=True)
    rules = ["certified"] + (["match"] if args.compare else [])
    every = [d for task in draws.values() for d in task]
    print_table(draws, rules)
    out = {"epsilon": args.epsilon, "delta": args.delta, "labels": args.labels,
           "unlabeled": args.unlabeled, "draws": {k: len(v) for k, v in draws.items()},
           "tasks": list(draws), "skipped": skipped, "seed": args.seed,
           **summarise(every, "certified"),
           "per_task": {k: summarise(v, "certified") for k, v in draws.items()},
           "seconds": round(time.perf_counter() - started, 1)}
    if args.compare:
        out["match"] = {**summarise(every, "match"),
                        "per_task": {k: summarise(v, "match") for k, v in draws.items()}}
    print(json.dumps(out))


def print_table(draws: dict[str, list[dict[str, Any]]], rules: list[str]) -> None:
    print(f"{'task':<22} {'rule':<10} {'draws':>5} {'violations':>10} {'median cost':>11} "
          f"{'saving in':>9} {'within 0.5 of oracle':>20}")
    groups = [*draws.items(), ("all", [d for task in draws.values() for d in task])]
    for name, mine in groups:
        for rule in rules:
            s = summarise(mine, rule)
            if s["violation_rate"] is None:
                continue
            print(f"{name:<22} {rule:<10} {len(mine):>5} {s['violation_rate']:>10.3f} "
                  f"{s['median_cost_fraction']:>11.3f} {s['saving_share']:>9.2f} "
                  f"{s['oracle_within_0_5']:>20.2f}")


if __name__ == "__main__":
    main()
