"""SmolLM2-135M-Instruct learns from what it escalated: `Escalate` rounds in front of recorded APIs.

OVERRULING (FrugalGPT's legal Yes/No task, the full 2,160 recorded rows packaged with tandemlm).
The cascade: the real SmolLM2-135M-Instruct on the CPU (free, judged by its own answer
probability) → GPT-3.5-turbo (judged by whether it agrees with SmolLM2) → GPT-4, both replaying
their real recorded answers and costs. `Escalate(Calibrate(epsilon=...))`:

* round 0 certifies the untrained cascade: the cheapest configuration whose accuracy is at least
  the reference's (the best single model on the labelled rows) minus ε with probability ≥ 0.9;
* each round then fine-tunes SmolLM2 (LoRA, top 8 of 30 blocks) on the reference's answers to
  the inputs the calibrated cascade passed up, among the unlabeled inputs set aside for learning,
  and certifies again on the labelled rows and the other unlabeled inputs; a round is kept while
  the certified cost falls.

Then the kept program runs on held-out test rows next to GPT-4 alone. Prints one line per round
(certified cost as a fraction of the reference's, SmolLM2's accuracy on the labelled rows, rows
learnt, seconds) and, last, one JSON object.

    python programs/escalation_loop.py [--out runs/escalation_loop] [--labels 150]
        [--unlabeled 800] [--test 200] [--epsilon 3] [--rounds 3] [--threads 1]

Measured with `--rounds 2 --threads 1` (2 CPU cores, 37 minutes): certified cost 1.000 → 0.704 →
0.596 of GPT-4's, SmolLM2 0.487 → 0.813 → 0.933 on the labelled rows; on the test rows 0.900 at
0.536 of GPT-4's cost (GPT-4 alone 0.900). With 400 unlabeled inputs nothing cheaper was
certified after round 1 (docs/cascades.md).

Re-running with the same --out resumes the compile (model answers are cached).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from smollm2_finetune import cut_sentence, lora_options, recorded, setup, smollm2_node

from tandemlm import Pipeline, compile, evaluate
from tandemlm.evaluate import packaged_data
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.feature_judge import FeatureJudge
from tandemlm.modules.judges import AnswerLogprob
from tandemlm.optimizers import Calibrate, Escalate
from tandemlm.runtime import Model
from tandemlm.runtime.backends.recorded import read_replay_file
from tandemlm.suites.overruling import metric

DATA = str(packaged_data("overruling_all.jsonl.gz"))


def cascade(small: Model) -> Pipeline:
    """SmolLM2 → GPT-3.5-turbo → GPT-4 (recorded), every stage a candidate."""
    return Pipeline([cut_sentence(), Cascade([
        Stage(smollm2_node(small), judge=AnswerLogprob()),
        Stage(recorded("gpt-3.5-turbo", DATA), judge=FeatureJudge(confidence=False, agreement=True)),
        Stage(recorded("gpt-4", DATA)),
    ])], name="overruling_escalation")


def rows(labels: int, unlabeled: int, test: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(labelled, unlabeled inputs, test): the first two from the even rows, test from the odd."""
    every = [dict(r) for r in read_replay_file(DATA).rows]
    even, odd = every[0::2], every[1::2]
    keep = ("id", "prompt", "question", "gold")
    labelled = [{k: r[k] for k in keep} for r in even[:labels]]
    inputs = [{k: r[k] for k in ("id", "prompt", "question")} for r in even[labels:labels + unlabeled]]
    return labelled, inputs, [{k: r[k] for k in keep} for r in odd[:test]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/escalation_loop")
    parser.add_argument("--labels", type=int, default=150)
    parser.add_argument("--unlabeled", type=int, default=800)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--epsilon", type=float, default=3.0, help="accuracy points")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-examples", type=int, default=160,
                        help="escalated inputs learnt from per round at most")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    small = setup(args.threads)
    labelled, inputs, test = rows(args.labels, args.unlabeled, args.test)
    step = Escalate(Calibrate(epsilon=args.epsilon / 100, order="cost"), rounds=args.rounds,
                    lora=lora_options(8), epochs=args.epochs, lr=1e-3, batch_size=1, accumulate=4,
                    max_examples=args.max_examples)
    compiled = compile(cascade(small), labelled, metric, unlabeled=inputs, passes=[step],
                       out_dir=Path(args.out) / "compiled", progress=False)
    details = compiled.compile_report[0].details
    for r in details["rounds"]:
        print(f"round {r['round']}: certified cost {r['cost_fraction']:.3f} of round 0's reference "
              f"({' -> '.join(r['chosen'])}, certified {r['certified']}), SmolLM2 "
              f"{r['first_stage_accuracy']:.3f} on the labelled rows, learnt {r['learnt']} rows, "
              f"{r['seconds']:.0f}s" + ("" if r["kept"] else " — not kept"), flush=True)
    result = evaluate(compiled, test, metric, progress=False)
    alone = evaluate(Pipeline([recorded("gpt-4", DATA)], name="gpt4"), test, metric, progress=False)
    cost, gpt4 = result.summary["total_cost_usd"] or 0.0, alone.summary["total_cost_usd"]
    print(f"test ({len(test)} rows): kept program {result.score:.3f} at {cost / gpt4:.3f}x GPT-4's "
          f"cost; GPT-4 alone {alone.score:.3f}")
    print(json.dumps({"epsilon_points": args.epsilon, "labels": len(labelled),
                      "unlabeled": len(inputs), "rows": details["rows"], "rounds": details["rounds"],
                      "test_rows": len(test), "test_accuracy": result.score,
                      "test_cost_vs_gpt4": cost / gpt4, "gpt4_test_accuracy": alone.score,
                      "promise": details["cascade"]["promise"]["statement"],
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
