"""The synthetic task the Finetune tests learn, shared by the tests and the subprocess the resume
test kills: map a letter code to a word ("f7" -> "bread": the letter picks the word, the digit
is noise), generated here with a fixed seed.

The small model is a real 2-layer, 64-wide Llama built and trained locally on unrelated text:
English sentences using the task's words and chats of another task (copy a sentence's first
noun) in the node's reply format — what a pretrained small model knows — but never this task,
so it fails it. The teacher is a rule (a scripted test double) that computes the right word.
Train and held-out codes are disjoint: the held-out score measures the letter -> word rule
learned, not memorised codes.

Run as a script (`python finetune_task.py OUT_DIR [--block-in-pass 2]`), it compiles the
resume-test program into OUT_DIR; with --block-in-pass N it writes OUT_DIR/../blocked once
pass N has taken its first training step, then waits there to be killed.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from tandemlm import LMNode, Model, Pipeline
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.optimizers import Reporter
from tandemlm.testing import chat_reply, request_field

WORDS = dict(zip("abcdefghjkmn", ["apple", "river", "stone", "cloud", "tiger", "bread", "light",
                                  "piano", "grass", "ocean", "money", "house"], strict=True))
SEED = 0
# LoRA on every linear layer *and* the output layer: in a 64-wide model the output layer is
# the bottleneck (with attention and MLP adapters alone the word never becomes predictable).
LORA = {"r": 16, "alpha": 32, "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj", "lm_head"]}
TRAINING = dict(lora=LORA, epochs=25, lr=3e-3, batch_size=8)


def make_data(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, held-out): 96 and 24 examples over disjoint codes (letter + digit)."""
    codes = [letter + str(digit) for letter in WORDS for digit in range(10)]
    random.Random(seed).shuffle(codes)
    rows = [{"code": code, "word": WORDS[code[0]]} for code in codes]
    return rows[:96], rows[96:]


def word_node(model: Model | str = "small", name: str = "word") -> LMNode:
    # CompactChatAdapter: ChatAdapter's format with a third of its prompt tokens.
    return LMNode("code -> word", model=model, name=name, adapter=CompactChatAdapter(),
                  instructions="Give the word for the code.", max_tokens=24)


def small_model(base: Path, **options) -> Model:
    return Model("hf", str(base), name="tiny-small", device="cpu", dtype="float32", **options)


def build(base: Path) -> Pipeline:
    """The program: one node on the small model, bound by name."""
    return Pipeline([word_node()], models={"small": small_model(base)}, name="codes")


def rule_reply(request) -> str:
    """TEST DOUBLE teacher: a rule computing the right word from the code's letter."""
    return chat_reply(word=WORDS[request_field(request, "code").strip()[0]])


TEACHER = Model("scripted", "rule-teacher", reply=rule_reply)


def metric(example, prediction, trace=None) -> bool:
    return str(prediction.word).strip() == example["word"]


def _base_texts() -> list[str]:
    from tandemlm.tiny import chat_template_tokenizer, default_corpus, node_chat_texts

    rng = random.Random(1)
    words = list(WORDS.values())
    sentences = [f"The {rng.choice(words)} and the {rng.choice(words)} are near the "
                 f"{rng.choice(words)}." for _ in range(150)]
    other = LMNode("sentence -> first", model="x", adapter=CompactChatAdapter(),
                   instructions="Copy the first noun.")
    chats = node_chat_texts(other, chat_template_tokenizer(),
                            [({"sentence": s}, {"first": s.split()[1]}) for s in sentences[:100]])
    return default_corpus(300) + sentences + chats


def base_model_path() -> Path:
    """The small model, built once into the tiny-model cache (about 15 s on 2 CPU cores), keyed
    by its texts and by the code that trains it (`build_cached`)."""
    from tandemlm.tiny import build_cached, build_tiny_lm, train_tiny_lm

    texts = _base_texts()

    def make(work: Path) -> None:
        build_tiny_lm(work, texts=texts, layers=2, hidden=64, heads=4, seed=0)
        train_tiny_lm(work, texts, steps=300, seed=0)

    return build_cached("finetune-test-base", {"texts": texts}, make)


# -- the resume test's program ----------------------------------------------------------------
RESUME_TRAIN = make_data()[0][:16]


def resume_passes() -> list:
    """Two Finetune passes on the same node: the second trains the first's adapter further,
    with the teacher seated by node name (after the first pass no model name reaches the node)."""
    from tandemlm.optimizers.finetune import Finetune

    quick = dict(lora={"r": 4, "alpha": 8, "dropout": 0.1}, epochs=2, lr=3e-3, batch_size=8)
    return [Finetune(teacher={"small": TEACHER}, **quick),
            Finetune(teacher={"word": TEACHER}, **{**quick, "lr": 1e-3})]


class BlockingReporter(Reporter):
    """Signals `flag` and blocks for good at the first training step of pass `block` (the
    test then kills the process there, mid-Finetune)."""

    def __init__(self, flag: Path, block: int) -> None:
        self.flag, self.block, self.started = flag, block, 0

    @contextmanager
    def progress(self, description: str, total: int):
        if not description.startswith("finetune"):
            yield lambda n=1: None
            return
        self.started += 1

        def advance(n: int = 1) -> None:
            if self.started == self.block:
                self.flag.write_text("blocked")
                threading.Event().wait()  # until SIGKILL

        yield advance


def compile_resume_program(out: Path, reporter: Reporter | None = None):
    from tandemlm.optimizers import compile

    return compile(build(base_model_path()), RESUME_TRAIN, metric, passes=resume_passes(),
                   out_dir=out, seed=SEED, progress=False, reporter=reporter)


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # as the in-process clean run: the same arithmetic, the same weights
    target = Path(sys.argv[1])
    block = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--block-in-pass" else 0
    reporter = BlockingReporter(target.parent / "blocked", block) if block else Reporter()
    compiled = compile_resume_program(target, reporter)
    print(json.dumps([{"name": r.name, "resumed": r.resumed} for r in compiled.compile_report]))
