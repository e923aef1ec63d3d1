"""Proxy-tuning on CPU: a small expert fine-tuned on a format steers a larger untuned model.

Two tiny Llamas share one tokenizer (built here from a config: a 3-layer "large" and a 2-layer
"small", both untrained). The task is a format: asked "Question: What is A plus B?", answer
"Answer: <number>". The program is `LogitMix.proxy_tune(large, small, small)`; compiling it with
`TuneMix` trains a LoRA adapter on the small expert term (the anti-expert stays the untuned small
model) and picks α on the validation set by the format rate (the share of replies that start with
"Answer:"). Prints the test format rates of the large model alone, the expert alone and the
compiled mix; the last line is one JSON object.

    python programs/proxy_tune.py [--out runs/proxy_tune] [--train 200] [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tandemlm import Model, Pipeline, compile, evaluate
from tandemlm.modules import LogitMix, Solve
from tandemlm.optimizers import TuneMix
from tandemlm.runtime import GenRequest
from tandemlm.tiny import build_tiny_lm


def questions(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        rows.append({"prompt": f"Question: What is {a} plus {b}?", "answer": f"Answer: {a + b}"})
    return rows


def formatted(example, prediction, trace=None) -> bool:
    """The reply has the format (its number may be wrong: these models are tiny)."""
    return prediction.answer.strip().startswith("Answer:")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/proxy_tune")
    parser.add_argument("--train", type=int, default=200, help="training questions")
    parser.add_argument("--epochs", type=int, default=12, help="expert LoRA epochs")
    args = parser.parse_args()
    out = Path(args.out)
    large = Model("hf", str(build_tiny_lm(out / "large", layers=3, hidden=96, seed=0)), name="large",
                  dtype="float32")
    small = Model("hf", str(build_tiny_lm(out / "small", layers=2, hidden=64, seed=1)), name="small",
                  dtype="float32")
    train, val, test = questions(args.train, 0), questions(24, 1), questions(48, 2)
    program = Pipeline([LogitMix.proxy_tune(large, small, small, alpha=1.0, max_tokens=8, stop=("\n",),
                                            name="mix")], name="proxy_tune")
    compiled = compile(program, train, formatted, valset=val, out_dir=out / "compiled", progress=False,
                       passes=[TuneMix(alphas=[0.5, 1.0, 2.0, 4.0], epochs=args.epochs, lr=3e-3)])
    mix = compiled.nodes["mix"]
    expert = mix.terms[1].model
    alone = Pipeline([Solve("prompt -> answer", model=large, prompt_field="prompt", max_tokens=8,
                            stop=("\n",))])
    expert_replies = expert.generate([GenRequest(messages=({"role": "user", "content": r["prompt"]},),
                                                 max_new_tokens=8) for r in test])
    rates = {"large alone": evaluate(alone, test, formatted, progress=False).score,
             "expert alone": sum(r.text.strip().startswith("Answer:") for r in expert_replies) / len(test),
             f"proxy-tuned large (alpha={mix.terms[1].weight})":
                 evaluate(compiled, test, formatted, progress=False).score}
    for name, rate in rates.items():
        print(f"{name:32s} format rate {rate:.3f}")
    details = compiled.compile_report[0].details["mix"]
    print(json.dumps({"alpha": details["alpha"], "val_rates": details["scores"], "test_rates": rates}))


if __name__ == "__main__":
    main()
