"""Throughput: tandem's stage-batched executor vs DSPy per-call vs raw batched `generate`.

The same 2-node pipeline (question -> topic; question, topic -> answer) runs over 128 examples
on the same tiny local Llama (built from a config, briefly trained to answer in DSPy's
ChatAdapter format, saved and loaded with `from_pretrained`), three ways in one run:

1. tandem: `Pipeline.batch` — one `hf` backend batch per node per stage.
2. DSPy 3.4: the same two signatures as `dspy.Predict` modules on a `dspy.LM` with a custom
   engine that calls `model.generate` one request at a time, run with `Module.batch` (thread pool).
3. raw: `model.generate` over the prompts tandem formats, in batches of the same size, no parsing.

Tandem and raw are timed `--repeats` times, interleaved, and their medians count; DSPy, ten
times slower, once. Prints examples/s and the ratios; the last line is one JSON object.

    python benchmarks/batched_vs_dspy.py [--examples 128] [--threads 8] [--batch-size 64] [--repeats 3]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import dspy
import torch
from dspy.lm15 import Message, Response, TextPart, Usage
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandemlm import LMNode, Model, Pipeline
from tandemlm.tiny import build_tiny_lm, node_chat_texts, train_tiny_lm

TOPICS = ["math", "animals", "cities", "music", "rivers", "colors", "planets", "sports"]
WORDS = ["which", "small", "large", "model", "answer", "river", "north", "number", "blue", "song"]
SIGNATURES = {"topic": "question -> topic", "answer": "question, topic -> answer"}
MAX_NEW_TOKENS = 24


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


DEVICE = "cpu"  # --device; float32 everywhere so the three ways compute the same thing


def tandem_pipeline(path: Path) -> Pipeline:
    model = Model("hf", str(path), device=DEVICE, dtype="float32", batch_size=64)
    return Pipeline([LMNode(SIGNATURES["topic"], model="tiny", name="topic", max_tokens=MAX_NEW_TOKENS),
                     LMNode(SIGNATURES["answer"], model="tiny", name="answer",
                            max_tokens=MAX_NEW_TOKENS)],
                    models={"tiny": model}, name="bench")


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


def run_tandem(path: Path, examples: list[dict]) -> tuple[float, int]:
    pipe = tandem_pipeline(path)
    pipe.batch(examples[:4])  # load weights outside the timed region
    start = time.perf_counter()
    results = pipe.batch(examples)
    return time.perf_counter() - start, sum(r.ok for r in results)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def run_dspy(path: Path, examples: list[dict], threads: int) -> tuple[float, int]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = dspy.LM("local/tiny", engine=HFEngine(model, tokenizer), cache=False, temperature=0.0,
                 max_tokens=MAX_NEW_TOKENS, num_retries=0)
    program = DSPyProgram()
    program.set_lm(lm)
    batch = [dspy.Example(**e).with_inputs("question") for e in examples]
    program.batch(batch[:2], num_threads=threads, disable_progress_bar=True)
    start = time.perf_counter()
    outputs = program.batch(batch, num_threads=threads, disable_progress_bar=True, max_errors=len(batch) * 2)
    return time.perf_counter() - start, sum(o is not None for o in outputs)


def run_raw(path: Path, examples: list[dict], batch_size: int) -> float:
    """Raw batched generate over the prompts tandem formats for both stages (answer stage fed the
    topics the first stage produced), no parsing."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    pipe = tandem_pipeline(path)
    first = [pipe.nodes["topic"].request(e).messages for e in examples]
    topics = [r.outputs.get("topic", "") for r in pipe.batch(examples)]
    second = [pipe.nodes["answer"].request({**e, "topic": t}).messages
              for e, t in zip(examples, topics, strict=True)]
    stages = [[tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True)
               for m in stage] for stage in (first, second)]
    start = time.perf_counter()
    for prompts in stages:
        for i in range(0, len(prompts), batch_size):
            ids = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(DEVICE)
            with torch.inference_mode():
                out = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            tokenizer.batch_decode(out[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs of tandem and raw (interleaved; the median counts)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the same for all three)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    examples = make_questions(args.examples, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        print("building and briefly training the tiny model ...", flush=True)
        path = build_model(Path(tmp))
        tandem_times, raw_times = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine speed hits both
            elapsed, ok_tandem = run_tandem(path, examples)
            tandem_times.append(elapsed)
            raw_times.append(run_raw(path, examples, args.batch_size))
        t_dspy, ok_dspy = run_dspy(path, examples, args.threads)  # ~30 s a run: once
        t_tandem, t_raw = median(tandem_times), median(raw_times)
    n = len(examples)
    eps = {"tandem": n / t_tandem, "dspy": n / t_dspy, "raw": n / t_raw}
    print(f"tandem batched : {eps['tandem']:8.1f} examples/s ({ok_tandem}/{n} parsed)")
    print(f"dspy per-call  : {eps['dspy']:8.1f} examples/s ({ok_dspy}/{n} parsed, {args.threads} threads)")
    print(f"raw generate   : {eps['raw']:8.1f} examples/s (no parsing)")
    vs_dspy, vs_raw = eps["tandem"] / eps["dspy"], eps["tandem"] / eps["raw"]
    print(f"tandem / dspy = {vs_dspy:.2f}x   tandem / raw = {vs_raw:.2f}x")
    print(json.dumps({"device": DEVICE, "tandem_eps": round(eps["tandem"], 2),
                      "dspy_eps": round(eps["dspy"], 2), "raw_eps": round(eps["raw"], 2),
                      "vs_dspy": round(vs_dspy, 2), "vs_raw": round(vs_raw, 2)}))


if __name__ == "__main__":
    main()
