"""How often the operating point `Calibrate` chooses holds up on new data, by resampling.

A suite run (`tandem suite replay --out RUNS`) compiles each task on its train split, so the
compiled judges and router have never seen its test rows. Here every stage answers every test row
once (through the compiled program, judged by its judges), and then, `--repeats` times per size:
`--sizes` test rows drawn at random play the calibration split — the same search and the same
choice rule as `Calibrate` — and the chosen point is scored on the remaining rows against the best
single model there. That is a calibration set of a known size with honest judge scores and an
independent test set, drawn as often as wanted, which one train/test split cannot give.

Per rule (a set of `robust_choice` options, e.g. "delta=0.1" or "delta=0.02,tie=0.5"; "best"
picks the reference single model, no cascade): how often the point is within `--tolerance`
points of the best single model on the remaining rows, how often it costs more than that model,
its mean accuracy difference, its median cost fraction, and how often it captures at least half of
the saving the remaining rows' own test curve offers at parity (where it offers one). The last
line is one JSON object.

    python benchmarks/operating_point.py --runs runs/suite-replay --data DIR
        [--tasks mmlu/llama,triviaqa/llama] [--sizes 300,600] [--repeats 12]
        [--rules best "delta=0.1" "delta=0.1,tie=0.8" "delta=0.02,tie=0.5"]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tandemlm.evaluate.loading import load_program
from tandemlm.optimizers import Calibrate, load
from tandemlm.optimizers.calibrate import router_chances
from tandemlm.optimizers.cost_quality import Point, cost_quality_points, outcome, robust_choice
from tandemlm.optimizers.passes import CompileContext
from tandemlm.optimizers.report import Reporter
from tandemlm.optimizers.stage_runs import StageRun, cascade_inputs, cascades, run_every_stage
from tandemlm.optimizers.trace_store import TraceStore
from tandemlm.suites.replay import suite
from tandemlm.suites.run import slug


def subset(runs: list[StageRun], rows: np.ndarray) -> list[StageRun]:
    """The stage runs restricted to `rows` (indices into the examples), in that order."""
    def pick(values: list) -> list:
        return [values[i] for i in rows] if values else values
    return [StageRun(r.index, r.name, pick(r.answers), pick(r.correct), pick(r.usd), pick(r.flops),
                     pick(r.scores), pick(r.judge_traces), pick(r.judge_usd), pick(r.judge_flops))
            for r in runs]


def parse_rule(text: str) -> dict[str, float] | None:
    """"delta=0.02,tie=0.5" -> {"delta": 0.02, "tie": 0.5}; "best" -> None."""
    if text == "best":
        return None
    out = {}
    for part in filter(None, text.split(",")):
        key, value = part.split("=")
        if key not in ("delta", "tie", "tolerance", "tolerance_se", "match"):
            raise SystemExit(f"rule option '{key}' is not one of delta, tie, tolerance, "
                             f"tolerance_se, match")
        out[key] = float(value)
    return out


def test_runs(task: Any, out: Path) -> tuple[Any, list[StageRun], np.ndarray | None, Calibrate]:
    """The compiled cascade of `task` (from its suite run in `out`), every stage of it on every
    test row, the router's chances there, and the task's Calibrate pass."""
    compiled = load(out / slug(task.name) / "compiled", load_program(task.program))
    path, cascade = next(iter(cascades(compiled).items()))
    store = TraceStore(task.metric, progress=False)
    ctx = CompileContext(trainset=task.test, valset=[], metric=task.metric, store=store,
                         out=out / slug(task.name) / "compiled", reporter=Reporter())
    rows = cascade_inputs(store.run(compiled, task.test), path)
    runs = run_every_stage(compiled, path, rows, ctx, cross_fit=False)
    chances = router_chances(cascade, [values for _, values in rows], runs, cross_fit=False)
    calibrate = next(p for p in task.passes if isinstance(p, Calibrate))
    return cascade, runs, chances, calibrate


def choose(table: Any, points: list[Point], rule: dict[str, float] | None, seed: int) -> Point:
    singles = [p for p in points if len(p.chain) == 1]
    if rule is None:  # the reference single model alone
        return robust_choice(table, singles, 1.0, delta=0.1, tolerance=0.0, resamples=500,
                             tie=0.5, seed=seed)[1]
    options = {"delta": 0.1, "tolerance": 0.0, "match": 1.0, **rule}
    match = options.pop("match")
    return robust_choice(table, points, match, resamples=1000, seed=seed, **options)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="a replay suite run directory")
    parser.add_argument("--data", required=True, help="the replay data directory it ran on")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--sizes", default="300,600", help="calibration sizes to draw")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--tolerance", type=float, default=0.5, help="accuracy points")
    parser.add_argument("--rules", nargs="+",
                        default=["best", "delta=0.1", "delta=0.1,tie=0.8", "delta=0.02,tie=0.5"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    rules = {r: parse_rule(r) for r in args.rules}
    replay = suite(args.data)
    sizes = [int(s) for s in args.sizes.split(",")]
    draws: list[dict[str, Any]] = []
    for name in replay.select([t for t in args.tasks.split(",") if t] or None):
        task = replay.task(name)
        cascade, runs, chances, calibrate = test_runs(task, Path(args.runs))
        n = len(runs[0].answers)
        rng = np.random.default_rng(args.seed)
        for size in sizes:
            if size > n - 100:
                print(f"{name}: skipping size {size} (only {n} test rows; 100 stay to test on)")
                continue
            for repeat in range(args.repeats):
                draws.append(draw(name, size, repeat, rng, runs, chances, cascade, calibrate, rules))
    print_summary(draws, rules, args.tolerance)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1),
                      "tolerance_points": args.tolerance, "draws": len(draws),
                      "rules": summary(draws, rules, args.tolerance)}))


def draw(name: str, size: int, repeat: int, rng: np.random.Generator, runs: list[StageRun],
         chances: np.ndarray | None, cascade: Any, calibrate: Calibrate,
         rules: dict[str, dict[str, float] | None]) -> dict[str, Any]:
    """One calibration draw of `size` rows: every rule's point, scored on the other rows."""
    n = len(runs[0].answers)
    order = rng.permutation(n)
    parts = [np.sort(order[:size]), np.sort(order[size:])]
    tables = []
    for rows in parts:
        tables.append(cost_quality_points(
            subset(runs, rows), cascade.judges, max_stages=calibrate.max_stages,
            grid=calibrate.grid, order=calibrate.order, cross_fit=False,
            chances=None if chances is None else chances[:, rows]))
    (cal, cal_points), (held, held_points) = tables
    singles = [p for p in held_points if len(p.chain) == 1]
    best = max(singles, key=lambda p: (p.quality, -p.cost))
    parity = [p.cost for p in held_points if len(p.chain) > 1 and p.quality >= best.quality - 1e-12]
    result = {"task": name, "size": size, "repeat": repeat,
              "parity": min(parity) / best.cost if parity and best.cost else None, "rules": {}}
    for label, rule in rules.items():
        chosen = choose(cal, cal_points, rule, seed=repeat)
        right, paid = outcome(held, chosen)
        result["rules"][label] = {"delta_points": 100 * (float(right.mean()) - best.quality),
                                  "cost_fraction": float(paid.mean()) / best.cost if best.cost else 1.0,
                                  "kind": chosen.kind}
    shown = " ".join(f"{k}: {v['delta_points']:+.2f}/{v['cost_fraction']:.2f}"
                     for k, v in result["rules"].items())
    print(f"{name} size {size} #{repeat}: parity {result['parity'] or float('nan'):.2f} | {shown}",
          flush=True)
    return result


def summary(draws: list[dict[str, Any]], rules: dict[str, Any], tolerance: float) -> dict[str, Any]:
    out = {}
    for label in rules:
        d = np.array([x["rules"][label]["delta_points"] for x in draws])
        f = np.array([x["rules"][label]["cost_fraction"] for x in draws])
        offered = [(x["parity"], x["rules"][label]["cost_fraction"]) for x in draws
                   if x["parity"] is not None and x["parity"] < 1]
        out[label] = {"within": float(np.mean(d >= -tolerance - 1e-9)),
                      "dearer": float(np.mean(f > 1 + 1e-9)),
                      "mean_delta_points": float(d.mean()),
                      "median_cost_fraction": float(np.median(f)),
                      "captures_half": (float(np.mean([1 - c >= (1 - p) / 2 for p, c in offered]))
                                        if offered else None)}
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def print_summary(draws: list[dict[str, Any]], rules: dict[str, Any], tolerance: float) -> None:
    groups = sorted({(x["task"], x["size"]) for x in draws})
    for label, figures in summary(draws, rules, tolerance).items():
        per = []
        for task, size in groups:
            mine = [x for x in draws if (x["task"], x["size"]) == (task, size)]
            ok = sum(x["rules"][label]["delta_points"] >= -tolerance - 1e-9 for x in mine)
            per.append(f"{task}@{size} {ok}/{len(mine)}")
        print(f"{label:>22}: within {tolerance} pt {figures['within']:.2f}, dearer "
              f"{figures['dearer']:.2f}, mean Δ {figures['mean_delta_points']:+.2f} pts, median cost "
              f"fraction {figures['median_cost_fraction']:.3f}, captures half of the parity saving "
              f"{_round(figures['captures_half'])}"
              f" | {', '.join(per)}")


if __name__ == "__main__":
    main()
