"""Compiled FrugalGPT cascade vs GPT-4 alone on OVERRULING (FrugalGPT's data, 2,160 rows).

Train = rows with an even index (3/4 of them train the MiniLM scorer, 1/4 calibrate), test = odd
rows. This is `tandem demo` (`tandemlm.suites.demo.run_demo`): `compile` runs
`TrainScorer(train_encoder=True)` then the demo's `Calibrate` on `tandemlm.suites.overruling`, and
the compiled cascade and every single API are evaluated on the test half in the same run. Prints
accuracy and cost of each and the cascade's cost as a fraction of GPT-4's; the last line is one
JSON object. The report, per-example results, calibration curve and plot go to `--out`.

    python benchmarks/cascade_overruling.py [--data REPLAY.jsonl (default: the packaged file)]
        [--out runs/cascade_overruling] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import time

from tandemlm.optimizers import TrainScorer
from tandemlm.suites.demo import PASSES, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a replay file (default: the packaged one)")
    parser.add_argument("--out", default="runs/cascade_overruling")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None, help="scorer learning rate (default 3e-5)")
    args = parser.parse_args()
    started = time.perf_counter()
    report = run_demo(args.out, data=args.data,
                      passes=[TrainScorer(train_encoder=True, epochs=args.epochs, lr=args.lr),
                              PASSES[-1]])
    seconds = time.perf_counter() - started
    singles, cascade = report["singles"], report["cascade"]
    gpt4 = singles["gpt-4"]
    for name, figures in singles.items():
        print(f"{name:>15}: accuracy {figures['accuracy']:.4f}  cost ${figures['cost_usd']:.4f}")
    print(f"{'cascade':>15}: accuracy {cascade['accuracy']:.4f}  cost ${cascade['cost_usd']:.4f}  "
          f"({' -> '.join(cascade['stages'])}, thresholds "
          f"{[round(t, 3) for t in cascade['thresholds']]})")
    ratio = cascade["cost_usd"] / gpt4["cost_usd"]
    print(f"cascade / GPT-4: accuracy {cascade['accuracy'] / gpt4['accuracy']:.3f}x at "
          f"{ratio:.3f}x the cost; compile + evaluate {seconds:.0f}s; report, per-example "
          f"results, curve and plot in {args.out}/")
    print(json.dumps({"cascade": cascade, "singles": singles, "cost_vs_gpt4": ratio,
                      "seconds": seconds, "scorer": report["scorer"]}))


if __name__ == "__main__":
    main()
