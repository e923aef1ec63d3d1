"""Throughput: tandem's stage-batched executor vs DSPy per-call vs raw batched `generate`.

The same 2-node pipeline (question -> topic; question, topic -> answer) runs over 128 examples
on the same tiny local Llama (built from a config, briefly trained to answer in DSPy's
ChatAdapter format, saved and loaded with `from_pretrained`), three ways in one run. With
`--model PATH` (a checkpoint folder or a GGUF file, e.g. the packaged SmolLM2-135M-Instruct) it
runs that real model on real questions instead (`--data`, a .jsonl with a "question" field; MMLU's
recorded test questions by default), and also runs tandem with constrained decoding off, so the
parse rates of all sides print next to the ratios:

1. tandem: `Pipeline.batch` — one `hf` backend batch per node per stage.
2. DSPy 3.4: the same two signatures as `dspy.Predict` modules on a `dspy.LM` with a custom
   engine that calls `model.generate` one request at a time, run with `Module.batch` (thread pool).
3. raw: `model.generate` over the prompts tandem formats, in batches of the same size, no parsing.

Tandem and raw are timed `--repeats` times, interleaved, and their medians count; DSPy, ten
times slower, once. Prints examples/s and the ratios; the last line is one JSON object.

Tandem's `hf` backend computes with `--torch-threads` intra-op threads (its `threads=` option;
"auto", the default, is torch's count lowered to the cores other processes keep busy), and raw
`generate` with the same count; DSPy's calls with torch's own count, in `--threads` Python
threads. `--busy` runs the timed part while another process keeps one core busy (a Python busy
loop), as on a machine shared with other work.

    python benchmarks/batched_vs_dspy.py [--examples 128] [--threads 8] [--batch-size 64] [--repeats 3]
        [--device cpu|cuda] [--model PATH [--data FILE] [--adapter chat|compact]
        [--max-tokens N]] [--busy] [--torch-threads auto|N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dspy
import torch
from dspy.lm15 import Message, Response, TextPart, Usage
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandemlm import LMNode, Model, Pipeline
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.runtime.threads import torch_threads
from tandemlm.tiny import build_tiny_lm, node_chat_texts, train_tiny_lm

TOPICS = ["math", "animals", "cities", "music", "rivers", "colors", "planets", "sports"]
WORDS = ["which", "small", "large", "model", "answer", "river", "north", "number", "blue", "song"]
SIGNATURES = {"topic": "question -> topic", "answer": "question, topic -> answer"}
MAX_NEW_TOKENS = 24  # --max-tokens
ADAPTERS = {"chat": dspy.ChatAdapter, "compact": CompactChatAdapter}
ADAPTER = "chat"  # --adapter: the format of tandem's and DSPy's prompts alike
TORCH_THREADS: int | str = "auto"  # --torch-threads: the hf backend's `threads=`


def real_questions(path: Path, n: int) -> list[dict]:
    """The first `n` rows' "question" fields of a .jsonl file."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    questions = [{"question": str(r["question"])} for r in rows if r.get("question")][:n]
    if len(questions) < n:
        raise SystemExit(f"{path} has {len(questions)} rows with a 'question' field; --examples asks {n}")
    return questions


def make_questions(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + "?"}
            for _ in range(n)]


def training_texts(tokenizer, n: int = 400) -> list[str]:
    """Full chats (prompt + ChatAdapter-formatted answer) for both nodes, as the model sees them."""
    nodes = {name: LMNode(sig, model="m", name=name) for name, sig in SIGNATURES.items()}
    rng = random.Random(1)
    texts = []
    for i, example in enumerate(make_questions(n, seed=1)):
        topic = rng.choice(TOPICS)
        if i % 2 == 0:
            texts += node_chat_texts(nodes["topic"], tokenizer, [(example, {"topic": topic})])
        else:
            row = ({**example, "topic": topic}, {"answer": rng.choice(WORDS)})
            texts += node_chat_texts(nodes["answer"], tokenizer, [row])
    return texts


def build_model(workdir: Path) -> Path:
    """A 4-layer Llama whose BPE tokenizer and weights are trained on chats in the pipeline's
    own prompt format, so it answers in parseable ChatAdapter fields."""
    path = build_tiny_lm(workdir / "tiny", seed=0)  # first build: only for its chat template
    texts = training_texts(AutoTokenizer.from_pretrained(path))
    build_tiny_lm(path, texts=texts, layers=4, hidden=128, heads=4, seed=0)
    train_tiny_lm(path, texts, steps=150, batch_size=16, seed=0)
    return path


def real_model_folder(path: Path) -> Path:
    """The checkpoint folder all three sides load: a GGUF file's cached conversion."""
    if path.suffix.lower() == ".gguf":
        from tandemlm.runtime.backends.hf_gguf import gguf_folder

        return gguf_folder(path)
    return path


DEVICE = "cpu"  # --device; float32 everywhere so the three ways compute the same thing


def tandem_pipeline(path: Path, constrained: bool | None = None) -> Pipeline:
    model = Model("hf", str(path), device=DEVICE, dtype="float32", batch_size=64,
                  threads=TORCH_THREADS)
    nodes = [LMNode(SIGNATURES[name], model="lm", name=name, max_tokens=MAX_NEW_TOKENS,
                    adapter=ADAPTERS[ADAPTER](), constrained=constrained) for name in SIGNATURES]
    return Pipeline(nodes, models={"lm": model}, name="bench")


class HFEngine:
    """A DSPy 3.4 custom engine: one `model.generate` per request, as DSPy issues them."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def complete(self, request):
        messages = [{"role": "system", "content": request.system}] if request.system else []
        messages += [{"role": m.role, "content": m.text} for m in request.messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(DEVICE)
        with torch.inference_mode():
            out = self.model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        reply = self.tokenizer.decode(new, skip_special_tokens=True)
        usage = Usage(input_tokens=ids["input_ids"].shape[1], output_tokens=len(new),
                      total_tokens=ids["input_ids"].shape[1] + len(new))
        return Response(id=None, model=request.model, message=Message.assistant([TextPart(text=reply)]),
                        finish_reason="stop", usage=usage)

    def close(self):
        pass


class DSPyProgram(dspy.Module):
    def __init__(self):
        super().__init__()
        self.topic = dspy.Predict(SIGNATURES["topic"])
        self.answer = dspy.Predict(SIGNATURES["answer"])

    def forward(self, question):
        topic = self.topic(question=question).topic
        return self.answer(question=question, topic=topic)


def run_tandem(path: Path, examples: list[dict], constrained: bool | None = None) -> tuple[float, int]:
    pipe = tandem_pipeline(path, constrained)
    pipe.batch(examples[:4])  # load weights outside the timed region
    start = time.perf_counter()
    results = pipe.batch(examples)
    return time.perf_counter() - start, sum(r.ok for r in results)


def tandem_threads(path: Path) -> int | None:
    """The intra-op threads tandem's backend computes with now (None: torch's own count)."""
    return tandem_pipeline(path).models["lm"].backend.thread_count()


@contextmanager
def competing_load(busy: bool) -> Iterator[None]:
    """With `busy`, another process keeps one core busy until the block ends (or fails)."""
    if not busy:
        yield
        return
    loop = subprocess.Popen([sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True)
    try:
        loop.stdout.readline()  # spinning before anything is timed
        yield
    finally:
        loop.kill()
        loop.wait()


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def run_dspy(path: Path, examples: list[dict], threads: int) -> tuple[float, int]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = dspy.LM("local/tiny", engine=HFEngine(model, tokenizer), cache=False, temperature=0.0,
                 max_tokens=MAX_NEW_TOKENS, num_retries=0)
    program = DSPyProgram()
    program.set_lm(lm)
    dspy.configure(adapter=ADAPTERS[ADAPTER]())
    batch = [dspy.Example(**e).with_inputs("question") for e in examples]
    program.batch(batch[:2], num_threads=threads, disable_progress_bar=True)
    start = time.perf_counter()
    outputs = program.batch(batch, num_threads=threads, disable_progress_bar=True, max_errors=len(batch) * 2)
    return time.perf_counter() - start, sum(o is not None for o in outputs)


def run_raw(path: Path, examples: list[dict], batch_size: int, threads: int | None) -> float:
    """Raw batched generate over the prompts tandem formats for both stages (answer stage fed the
    topics the first stage produced), no parsing, on `threads` intra-op threads."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:  # as the hf backend does
        tokenizer.pad_token = tokenizer.eos_token
    pipe = tandem_pipeline(path)
    first = [pipe.nodes["topic"].request(e).messages for e in examples]
    topics = [r.outputs.get("topic", "") for r in pipe.batch(examples)]
    second = [pipe.nodes["answer"].request({**e, "topic": t}).messages
              for e, t in zip(examples, topics, strict=True)]
    stages = [[tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True)
               for m in stage] for stage in (first, second)]
    start = time.perf_counter()
    with torch_threads(threads):
        for prompts in stages:
            for i in range(0, len(prompts), batch_size):
                ids = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(DEVICE)
                with torch.inference_mode():
                    out = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id)
                tokenizer.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of tandem and raw (interleaved; the median counts)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the same for all three)")
    parser.add_argument("--model", type=Path, help="a real model: checkpoint folder or .gguf file")
    parser.add_argument("--data", type=Path, help="questions (.jsonl with 'question') for --model; "
                        "default: mmlu_test.jsonl under $TANDEM_REPLAY_DIR or ../shared/data/replay")
    parser.add_argument("--adapter", choices=sorted(ADAPTERS), default="chat")
    parser.add_argument("--max-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--busy", action="store_true",
                        help="time everything while another process keeps one core busy")
    parser.add_argument("--torch-threads", type=lambda v: v if v == "auto" else int(v), default="auto",
                        help="tandem's and raw's intra-op threads: 'auto' (the hf backend's "
                        "default) or a count")
    return parser.parse_args()


def measure(path: Path, examples: list[dict], args: argparse.Namespace) -> dict:
    """Seconds and parse counts of every side, and the torch threads each computed with."""
    out: dict = {"free": None}
    with competing_load(args.busy):
        if args.model is not None:
            out["free"] = run_tandem(path, examples, constrained=False)  # parse rate, no grammar
        tandem_times, raw_times = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine speed hits both
            elapsed, out["ok_tandem"] = run_tandem(path, examples)
            tandem_times.append(elapsed)
            # what the run just used ("auto" follows the load), None: torch's own count
            threads = tandem_threads(path)
            raw_times.append(run_raw(path, examples, args.batch_size, threads))
        out["threads"] = threads or torch.get_num_threads()
        out["dspy_threads"] = torch.get_num_threads()  # what DSPy's worker threads start with
        out["dspy"], out["ok_dspy"] = run_dspy(path, examples, args.threads)  # the slowest: once
    out["tandem"], out["raw"] = median(tandem_times), median(raw_times)
    return out


def report(args: argparse.Namespace, n: int, m: dict) -> None:
    free, ok_tandem, ok_dspy = m["free"], m["ok_tandem"], m["ok_dspy"]
    eps = {"tandem": n / m["tandem"], "dspy": n / m["dspy"], "raw": n / m["raw"]}
    print(f"model          : {args.model or 'tiny (trained here)'}, {n} examples, adapter {ADAPTER}, "
          f"max {MAX_NEW_TOKENS} new tokens, {DEVICE}")
    print(f"tandem batched : {eps['tandem']:8.1f} examples/s ({ok_tandem}/{n} parsed, "
          f"constrained decoding on)")
    if free is not None:
        print(f"tandem free    : {n / free[0]:8.1f} examples/s ({free[1]}/{n} parsed, constrained "
              f"decoding off)")
    print(f"dspy per-call  : {eps['dspy']:8.1f} examples/s ({ok_dspy}/{n} parsed, {args.threads} threads)")
    print(f"raw generate   : {eps['raw']:8.1f} examples/s (no parsing)")
    vs_dspy, vs_raw = eps["tandem"] / eps["dspy"], eps["tandem"] / eps["raw"]
    print(f"tandem / dspy = {vs_dspy:.2f}x   tandem / raw = {vs_raw:.2f}x")
    print(f"torch threads  : tandem {m['threads']} (threads={TORCH_THREADS!r}), raw {m['threads']}, "
          f"dspy {m['dspy_threads']} in each of its {args.threads} threads; {os.cpu_count()} cores")
    if args.busy:
        print("measured under --busy: another process kept one core busy for the whole timed part")
    print(json.dumps({"device": DEVICE, "model": str(args.model or "tiny"), "examples": n,
                      "adapter": ADAPTER, "tandem_eps": round(eps["tandem"], 2),
                      "dspy_eps": round(eps["dspy"], 2), "raw_eps": round(eps["raw"], 2),
                      "vs_dspy": round(vs_dspy, 2), "vs_raw": round(vs_raw, 2),
                      "parsed": {"tandem": ok_tandem, "dspy": ok_dspy,
                                 "tandem_free": free[1] if free else None},
                      "busy": args.busy, "threads": {"tandem": m["threads"], "raw": m["threads"],
                                                     "dspy": m["dspy_threads"]}}))


def main() -> None:
    global DEVICE, MAX_NEW_TOKENS, ADAPTER, TORCH_THREADS
    args = parse_args()
    DEVICE, MAX_NEW_TOKENS, ADAPTER = args.device, args.max_tokens, args.adapter
    TORCH_THREADS = args.torch_threads
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            examples = make_questions(args.examples, seed=0)
            print("building and briefly training the tiny model ...", flush=True)
            path = build_model(Path(tmp))
        else:
            data = args.data or Path(os.environ.get("TANDEM_REPLAY_DIR") or
                                     Path(__file__).resolve().parents[2] / "shared/data/replay") / "mmlu_test.jsonl"
            examples = real_questions(data, args.examples)
            path = real_model_folder(args.model)
        measured = measure(path, examples, args)
    report(args, len(examples), measured)


if __name__ == "__main__":
    main()
