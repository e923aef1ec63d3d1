"""Evaluation through `tandem serve` + the `openai` backend vs the in-process `hf` backend.

The same one-node pipeline (a tiny Llama built from a config, greedy, `--tokens` new tokens) runs
over the same examples twice in one process: with the model in process, and with the model behind
`tandem serve` on 127.0.0.1 reached through the `openai` backend (concurrent HTTP requests,
micro-batched by the server into backend batches). Prints examples/s of each, the overhead ratio,
whether the answers are identical, and the server's batch sizes; the last line is one JSON object.

    python benchmarks/serve_overhead.py [--examples 128] [--tokens 16] [--window-ms 20]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time

import uvicorn

from tandemlm import Model, Pipeline, evaluate
from tandemlm.modules import Solve
from tandemlm.serve import create_app
from tandemlm.tiny import build_tiny_lm


def _pipeline(model: Model, tokens: int) -> Pipeline:
    return Pipeline([Solve("question -> answer", model=model, prompt_field="question",
                           max_tokens=tokens)], name="bench")


def _timed(pipe: Pipeline, examples: list[dict]) -> tuple[float, list]:
    start = time.perf_counter()
    result = evaluate(pipe, examples, lambda ex, pred: True, progress=False, batch_size=len(examples))
    return time.perf_counter() - start, [r.result.outputs for r in result.records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--window-ms", type=float, default=20.0)
    args = parser.parse_args()
    path = build_tiny_lm(tempfile.mkdtemp(prefix="tandem-bench-"), layers=4, hidden=128, seed=0)
    local = Model("hf", str(path), name="tiny")
    examples = [{"question": f"Question number {i}: what comes next?"} for i in range(args.examples)]
    _timed(_pipeline(local, args.tokens), examples[:4])  # load and warm up
    local_s, local_out = _timed(_pipeline(local, args.tokens), examples)

    app = create_app({"tiny": local}, window_s=args.window_ms / 1000, max_batch=args.examples)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    remote = Model("openai", "tiny", base_url=f"http://127.0.0.1:{port}/v1",
                   max_concurrency=args.examples)
    _timed(_pipeline(remote, args.tokens), examples[:4])
    app.state.batchers["tiny"].batches.clear()
    served_s, served_out = _timed(_pipeline(remote, args.tokens), examples)
    batches = list(app.state.batchers["tiny"].batches)
    server.should_exit = True

    n = args.examples
    print(f"in-process hf:              {n / local_s:8.1f} ex/s")
    print(f"tandem serve + openai:      {n / served_s:8.1f} ex/s  (server batches: {batches})")
    print(f"overhead: served takes {served_s / local_s:.2f}x the in-process time; "
          f"identical answers: {served_out == local_out}")
    print(json.dumps({"examples": n, "tokens": args.tokens, "in_process_s": local_s, "served_s": served_s,
                      "overhead_ratio": served_s / local_s, "identical": served_out == local_out,
                      "server_batches": batches}))


if __name__ == "__main__":
    main()
