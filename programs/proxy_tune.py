"""Proxy-tuning on CPU: a small expert fine-tuned on a format steers a larger untuned model.

Two tiny Llamas share one tokenizer (built here from a config: a 3-layer "large" and a 2-layer
"small", both untrained). The task is a format: asked "Question: What is A plus B?", answer
"Answer: <number>". A LoRA adapter teaches the small model the format (the expert; the small
model without it is the anti-expert), and `LogitMix.proxy_tune(large, expert, anti, alpha)` decodes
large + α·(expert − anti). α is picked on a validation set by the format rate (the share of replies
that start with "Answer:"), then the test rates of the large model alone, the expert alone and the
mix are printed; the last line is one JSON object.

    python programs/proxy_tune.py [--out runs/proxy_tune] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tandemlm import Model, Pipeline
from tandemlm.modules import LogitMix, Solve
from tandemlm.runtime import GenRequest
from tandemlm.tiny import build_tiny_lm

ALPHAS = (0.5, 1.0, 2.0, 4.0)


def questions(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        rows.append({"prompt": f"Question: What is {a} plus {b}?", "answer": f"Answer: {a + b}"})
    return rows


def format_rate(replies: list[str]) -> float:
    return sum(r.strip().startswith("Answer:") for r in replies) / len(replies)


def replies(node, rows: list[dict[str, str]]) -> list[str]:
    return [r.outputs["answer"] for r in Pipeline([node]).batch(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/proxy_tune")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    out = Path(args.out)
    large = Model("hf", str(build_tiny_lm(out / "large", layers=3, hidden=96, seed=0)), name="large",
                  dtype="float32")
    small = Model("hf", str(build_tiny_lm(out / "small", layers=2, hidden=64, seed=1)), name="small",
                  dtype="float32")
    train, val, test = questions(200, 0), questions(24, 1), questions(48, 2)
    examples = [(GenRequest(messages=({"role": "user", "content": r["prompt"]},)), r["answer"]) for r in train]
    small.backend.train_lora(examples, out / "expert", epochs=max(1, args.steps * 8 // len(train)),
                             lr=3e-3, batch_size=8, seed=0)
    expert = Model("hf", small.id, adapter=str(out / "expert"), name="expert", dtype="float32")

    def mix(alpha: float) -> LogitMix:
        return LogitMix.proxy_tune(large, expert, small, alpha=alpha, max_tokens=8, stop=("\n",))

    val_rates = {alpha: format_rate(replies(mix(alpha), val)) for alpha in ALPHAS}
    alpha = max(ALPHAS, key=lambda a: (val_rates[a], -a))
    alone = Solve("prompt -> answer", model=large, prompt_field="prompt", max_tokens=8, stop=("\n",))
    rates = {"large alone": format_rate(replies(alone, test)),
             "expert alone": format_rate([r.text for r in expert.generate(
                 [GenRequest(messages=({"role": "user", "content": r["prompt"]},), max_new_tokens=8)
                  for r in test])]),
             f"proxy-tuned large (alpha={alpha})": format_rate(replies(mix(alpha), test))}
    for name, rate in rates.items():
        print(f"{name:32s} format rate {rate:.3f}")
    print(json.dumps({"alpha": alpha, "val_rates": val_rates, "test_rates": rates}))


if __name__ == "__main__":
    main()
