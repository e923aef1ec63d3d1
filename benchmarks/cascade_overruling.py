"""Compiled FrugalGPT cascade vs GPT-4 alone on OVERRULING (FrugalGPT's data, 2,160 rows).

Train = rows with an even index (3/4 of them train the MiniLM scorer, 1/4 calibrate), test = odd
rows. `compile` runs `TrainScorer(train_encoder=True)` then `Calibrate(match=1.0)` on
`programs/cascade_compile.py`; the compiled cascade and every single API are then evaluated on the
test half in the same run. Prints accuracy and cost of each, the cascade's cost as a fraction of
GPT-4's, and where the cost–quality curve (JSON + PNG) was written; the last line is one JSON
object.

    python benchmarks/cascade_overruling.py [--data ../shared/data/replay/overruling_all.jsonl]
        [--out runs/cascade_overruling] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tandemlm import evaluate
from tandemlm.optimizers import Calibrate, TrainScorer, compile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "programs"))
from cascade_compile import STAGES, build, metric, splits  # noqa: E402


def single(test: list[dict], name: str) -> dict:
    """What one API alone scores and costs on the test rows (its recorded answers)."""
    return {"accuracy": sum(bool(r["models"][name]["correct"]) for r in test) / len(test),
            "cost_usd": sum(r["models"][name]["cost_usd"] for r in test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/replay/overruling_all.jsonl"))
    parser.add_argument("--out", default="runs/cascade_overruling")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=None, help="scorer learning rate (default 3e-5)")
    args = parser.parse_args()
    train, val, test = splits(args.data)
    started = time.perf_counter()
    compiled = compile(build(args.data), train, metric, valset=val, out_dir=args.out,
                       source="programs/cascade_compile.py:program",
                       passes=[TrainScorer(train_encoder=True, epochs=args.epochs, lr=args.lr),
                               Calibrate(match=1.0)])
    compile_s = time.perf_counter() - started
    result = evaluate(compiled, test, metric, progress=False)
    singles = {name: single(test, name) for name in STAGES}
    gpt4 = singles["gpt-4"]
    cascade = {"accuracy": result.score, "cost_usd": result.summary["total_cost_usd"]}
    for name, figures in singles.items():
        print(f"{name:>15}: accuracy {figures['accuracy']:.4f}  cost ${figures['cost_usd']:.4f}")
    chosen = compiled.compile_report[-1].details["cascade"]["chosen"]
    print(f"{'cascade':>15}: accuracy {cascade['accuracy']:.4f}  cost ${cascade['cost_usd']:.4f}  "
          f"({' -> '.join(chosen['stages'])}, thresholds {[round(t, 3) for t in chosen['thresholds']]})")
    ratio = cascade["cost_usd"] / gpt4["cost_usd"]
    print(f"cascade / GPT-4: accuracy {cascade['accuracy'] / gpt4['accuracy']:.3f}x at "
          f"{ratio:.3f}x the cost; compile {compile_s:.0f}s; curve in {args.out}/curves/")
    print(json.dumps({"cascade": cascade, "singles": singles, "cost_vs_gpt4": ratio,
                      "chosen": chosen, "compile_s": compile_s,
                      "scorer": compiled.compile_report[0].details}))


if __name__ == "__main__":
    main()
