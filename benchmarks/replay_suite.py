"""Compiled cascades vs the best single model on every recorded benchmark (the replay suite).

Runs `tandem suite replay` (`tandemlm.suites.run.run_suite`) and prints, per task, the best
single model's test accuracy and cost per example, the cascade chosen on the train split, and the
ratios: cascade cost / best model's cost, accuracy difference in points, and the parity cost
fraction of the test curve. The baselines (every single model) run in the same evaluation, from
the same recorded answers. The last line is one JSON object.

    python benchmarks/replay_suite.py [--data ../shared/data/replay] [--out runs/suite-replay]
        [--tasks mmlu/llama,overruling] [--epsilon 1.0] [--delta 0.1] [--labels N] [--no-router]
        [--folds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tandemlm.suites.replay import suite
from tandemlm.suites.run import print_results, run_suite

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/replay"))
    parser.add_argument("--out", default="runs/suite-replay")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--epsilon", type=float, default=1.0,
                        help="accuracy points Calibrate may lose to the best single model")
    parser.add_argument("--delta", type=float, default=0.1, help="the risk of Calibrate's promise")
    parser.add_argument("--labels", type=int, default=None,
                        help="keep the labels of this many train rows; the rest are unlabeled")
    parser.add_argument("--no-router", dest="router", action="store_false",
                        help="cascades only: no TextRouter, so Calibrate weighs no routers or hybrids")
    parser.add_argument("--folds", type=int, default=2,
                        help="cross-fit the text scorer in this many folds (0: train on 3/4 of the "
                             "train split, calibrate on the rest)")
    args = parser.parse_args()
    started = time.perf_counter()
    rule = {"epsilon": args.epsilon / 100, "delta": args.delta, "labels": args.labels}
    results = run_suite(suite(args.data, router=args.router, folds=args.folds, **rule), args.out,
                        tasks=[t for t in args.tasks.split(",") if t] or None)
    seconds = time.perf_counter() - started
    print_results(results)
    summary = {}
    for name, task in results["tasks"].items():
        if "cascade" not in task:
            print(f"{name}: {task.get('error', 'no cascade')}")
            continue
        best, cascade = task["best_single"], task["cascade"]
        summary[name] = {"best_single": best["model"], "best_accuracy": best["accuracy"],
                         "cascade_accuracy": cascade["accuracy"],
                         "delta_points": 100 * (cascade["accuracy"] - best["accuracy"]),
                         "cost_ratio": cascade["cost_fraction"],
                         "parity_cost_ratio": task["parity_cost_fraction"],
                         "certified": (task.get("promise") or {}).get("certified")}
        print(f"{name}: cascade {cascade['accuracy']:.3f} vs {best['model']} {best['accuracy']:.3f} "
              f"({summary[name]['delta_points']:+.1f} pts) at {cascade['cost_fraction']:.3f}x its cost"
              f"; test-curve parity at {task['parity_cost_fraction'] or float('nan'):.3f}x")
    print(json.dumps({"seconds": round(seconds, 1), **rule, "router": args.router, "folds": args.folds,
                      "tasks": summary}))


if __name__ == "__main__":
    main()
