"""GPU smoke test of the `vllm` backend against the real engine, with the `hf` backend as baseline.

Where a CUDA GPU and vLLM are installed, loads `--model` (a local model directory; default: a tiny
Llama built here from a config, so nothing is downloaded) into vLLM, and checks: batched chat and
raw generation, per-request sampling (n, seed), continuation scoring from prompt log-probabilities
(against the hf backend's, within `--tolerance`), a LoRA adapter (`--adapter DIR`, optional)
served on the shared engine. Then prints examples/s of vLLM and of the hf backend on the same
prompts and their ratio; the last line is one JSON object. Elsewhere it says why and exits 0.

    python benchmarks/gpu_smoke.py [--model DIR] [--adapter DIR] [--examples 256] [--tokens 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--tolerance", type=float, default=0.05)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        print("skipped: needs a CUDA GPU and vLLM (pip install 'tandemlm[vllm]')")
        return
    from tandemlm import Model
    from tandemlm.runtime import GenRequest, ScoreRequest
    from tandemlm.tiny import build_tiny_lm

    path = args.model or str(build_tiny_lm(tempfile.mkdtemp(prefix="tandem-smoke-"), layers=4, hidden=256,
                                           heads=4, seed=0))
    fast = Model("vllm", path, gpu_memory_utilization=0.4, dtype="float32")
    slow = Model("hf", path, device="cuda", dtype="float32", batch_size=64)
    asks = [GenRequest(messages=({"role": "user", "content": f"Question {i}: what next?"},),
                       max_new_tokens=args.tokens) for i in range(args.examples)]
    checks: dict[str, bool] = {}
    first = fast.generate(asks[:4] + [GenRequest(prompt="Once upon a time", max_new_tokens=8)])
    checks["generate"] = all(r.ok and r.tokens_out for r in first)
    sampled = fast.generate([GenRequest(prompt="Hello", n=3, temperature=1.0, seed=7, max_new_tokens=8)] * 2)
    checks["seeded_sampling"] = len(sampled[0].texts) == 3 and sampled[0].texts == sampled[1].texts
    score = ScoreRequest(continuations=(" Yes", " No"), prompt="Is the sky blue? Answer:")
    (a,), (b,) = fast.logprobs([score]), slow.logprobs([score])
    checks["logprobs_match_hf"] = all(abs(x - y) <= args.tolerance for x, y in zip(a.logprobs, b.logprobs,
                                                                                  strict=True))
    if args.adapter:
        tuned = Model("vllm", path, adapter=args.adapter, gpu_memory_utilization=0.4, dtype="float32")
        checks["lora_adapter"] = all(r.ok for r in tuned.generate(asks[:4]))
    timings = {}
    for name, model in (("vllm", fast), ("hf", slow)):
        model.generate(asks[:8])
        start = time.perf_counter()
        model.generate(asks)
        timings[name] = args.examples / (time.perf_counter() - start)
    for name, ok in checks.items():
        print(f"{name}: {'ok' if ok else 'FAILED'}")
    print(f"vllm {timings['vllm']:.1f} ex/s, hf {timings['hf']:.1f} ex/s: "
          f"{timings['vllm'] / timings['hf']:.2f}x")
    print(json.dumps({"checks": checks, "examples_per_s": timings, "model": path}))
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
