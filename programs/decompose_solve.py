"""Decompose → solve each sub-question → solve (DaSLaM's shape) on real tiny local models.

A small model (2-layer, 64-wide Llama) writes the sub-questions of a two-step arithmetic
question; a larger one (4-layer, 128-wide) answers every sub-question — all of them in one
batch, through `Map` — and then the whole question from the sub-questions and their answers:

    "What is (3+4)+(2+5)?"  --small-->  ["What is (3+4)?", "What is (2+5)?"]
                            --large-->  ["7", "7"]  --large-->  "14"

    tandem eval programs/decompose_solve.py:program \\
        --data programs/data/decompose_arith.jsonl --metric programs/decompose_solve.py:metric

No download: on first use both models are built from a config and briefly trained, on
deterministic synthetic chats in each node's exact prompt format (`node_chat_texts`), into
`$TANDEM_CACHE/decompose_solve/` (default `~/.cache/tandemlm/decompose_solve/`); later runs
load them from there. Training is seeded, so the same code gives the same weights. The
evaluation questions (`programs/data/decompose_arith.jsonl`, written by `write_data()`) are
never in the training set; the one-digit sums they need are.

What to expect: in the seconds of training a CLI run affords, the small model learns to
decompose (it copies the bracketed groups into sub-questions, nearly always right), while the
larger one learns the answer format but hardly any of the addition table inside the long
ChatAdapter prompt. The mechanism — one batch per node, sub-questions mapped in one batch,
per-model cost — is what this program shows; its accuracy is that of two tiny models.

Time: about 1.5 minutes on 2 CPU cores for the first run (training), seconds afterwards. On a
machine whose cores other processes also use, set OMP_NUM_THREADS=1: torch's spinning worker
threads otherwise make generation many times slower there.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from tandemlm import Model, Pipeline, Solve
from tandemlm.modules.decompose import Decompose
from tandemlm.modules.map import Map
from tandemlm.tiny import build_once, chat_template_tokenizer
from tandemlm.tiny import cache_dir as tiny_cache_dir

DATA = Path(__file__).resolve().parent / "data" / "decompose_arith.jsonl"
# Steps fit a CLI run on 2 CPU cores: the small model needs ~500 cheap steps before copying
# the groups "clicks"; more steps on the large one buy format, not the addition table.
SMALL = dict(layers=2, hidden=64, heads=4, short_steps=500, chat_steps=120, lr=3e-3)
LARGE = dict(layers=4, hidden=128, heads=4, short_steps=150, chat_steps=80, lr=3e-3)
VOCAB = 1024  # enough for whole-word tokens: shorter sequences, faster training
TRAIN_QUESTIONS, EVAL_QUESTIONS, SEED = 480, 60, 0


# -- the task ---------------------------------------------------------------------------------
def _pairs() -> list[tuple[int, int]]:
    """Digit pairs with a one-digit sum: every sub-answer is a digit."""
    return [(a, b) for a in range(10) for b in range(10) if a + b <= 9]


def _example(groups: list[tuple[int, int]]) -> dict:
    expression = "+".join(f"({a}+{b})" for a, b in groups)
    return {"question": f"What is {expression}?",
            "subquestions": [f"What is ({a}+{b})?" for a, b in groups],
            "subanswers": [str(a + b) for a, b in groups],
            "answer": str(sum(a + b for a, b in groups))}


def make_data(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, eval): distinct questions of two bracketed digit sums, seeded."""
    rng = random.Random(seed)
    pairs = _pairs()
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < TRAIN_QUESTIONS + EVAL_QUESTIONS:
        row = _example([rng.choice(pairs), rng.choice(pairs)])
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    evals = [{"id": f"arith-{i}", **r} for i, r in enumerate(rows[TRAIN_QUESTIONS:])]
    return rows[:TRAIN_QUESTIONS], evals


def write_data(path: Path = DATA) -> Path:
    """Write the evaluation file shipped under programs/data/ (deterministic)."""
    _, evals = make_data()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in evals))
    return path


# -- the pipeline -----------------------------------------------------------------------------
def nodes(small: Model | str = "small", large: Model | str = "large") -> list:
    """Decompose (small) → Map(solve each sub-question) (large) → final solve (large)."""
    return [
        # A short instruction keeps the tiny model's prompt (and training) short; a real
        # decomposer would keep the module's default, which says what good sub-questions are.
        Decompose(model=small, max_subquestions=3, max_tokens=48,
                  instructions="Write the sub-questions of the question, in order."),
        Map(Solve("subquestion -> subanswer", model=large, name="solve_sub", max_tokens=16),
            over="subquestions", into="subanswers"),
        Solve("question, subquestions: list[str], subanswers: list[str] -> answer", model=large,
              name="final", max_tokens=16),
    ]


def _chats(node_list: list, tokenizer, train: list[dict], system: bool = True
           ) -> tuple[list[str], list[str]]:
    """Whole chats in each node's exact prompt format (`node_chat_texts`), for the small model
    (decompose) and the large one (solve_sub, final). With `system=False` the chats lack their
    system message — the long part every prompt of a node shares — which makes them ~3 times
    shorter: cheap texts to learn the task from before learning the whole format."""
    from tandemlm.tiny import node_chat_texts

    decompose, mapped, final = node_list
    small, large = [], []
    for row in train:
        small.append(({"question": row["question"]}, {"subquestions": row["subquestions"]}))
        large += [({"subquestion": sub}, {"subanswer": ans})
                  for sub, ans in zip(row["subquestions"], row["subanswers"], strict=True)]
        large.append(({k: row[k] for k in ("question", "subquestions", "subanswers")},
                      {"answer": row["answer"]}))
    texts = node_chat_texts(decompose, tokenizer, small), [
        node_chat_texts(final if "answer" in out else mapped.node, tokenizer, [(inp, out)])[0]
        for inp, out in large]
    if system:
        return texts
    return tuple([re.sub(r"<\|im_start\|>system\n.*?<\|im_end\|>\n", "", t, flags=re.S)
                  for t in group] for group in texts)


def cache_dir() -> Path:
    """Where the trained models live: $TANDEM_CACHE or ~/.cache/tandemlm, then a key of the
    recipe (a changed recipe trains into a new directory)."""
    root = tiny_cache_dir()
    recipe = json.dumps([SMALL, LARGE, VOCAB, TRAIN_QUESTIONS, SEED, Path(__file__).read_text()],
                        sort_keys=True)
    return root / "decompose_solve" / hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _train(path: Path, spec: dict, short: list[str], chats: list[str], vocab: list[str]) -> None:
    """Build one model, train it on the chats without their system message (short sequences:
    cheap steps, where it learns the task), then on the whole chats."""
    from tandemlm.tiny import build_tiny_lm, train_tiny_lm

    build_tiny_lm(path, texts=vocab, layers=spec["layers"], hidden=spec["hidden"],
                  heads=spec["heads"], seed=SEED, vocab_size=VOCAB)
    train_tiny_lm(path, short, steps=spec["short_steps"], lr=spec["lr"], batch_size=16, seed=SEED)
    train_tiny_lm(path, chats, steps=spec["chat_steps"], lr=spec["lr"], batch_size=8, seed=SEED,
                  max_tokens=512)


def ensure_models(root: Path | None = None) -> tuple[Path, Path]:
    """Build and train both models into `root` (default `cache_dir()`) unless already there.

    Both share one tokenizer, trained on all the texts. `build_once` builds aside and renames
    into place, so an interrupted run never leaves a half-trained model later runs would trust.
    """
    def build(work: Path) -> None:
        train, _ = make_data()
        renderer = chat_template_tokenizer()  # renders the chats; the models' own comes next
        small_chats, large_chats = _chats(nodes(), renderer, train)
        small_short, large_short = _chats(nodes(), renderer, train, system=False)
        vocab = small_chats + large_chats
        _train(work / "small", SMALL, small_short, small_chats, vocab)
        _train(work / "large", LARGE, large_short, large_chats, vocab)

    root = build_once(root or cache_dir(), build)
    return root / "small", root / "large"


def program() -> Pipeline:
    """The pipeline on the cached tiny models (trained on first use, see the module docstring)."""
    small, large = ensure_models()
    options = dict(device="cpu", dtype="float32", batch_size=32)
    return Pipeline(nodes(), name="decompose_solve", models={
        "small": Model("hf", str(small), name="tiny-small-2x64", **options),
        "large": Model("hf", str(large), name="tiny-large-4x128", **options)})


def metric(example, prediction, trace=None) -> bool:
    """Exact match of the final answer (an integer) with the gold one."""
    return str(prediction.answer).strip() == str(example.answer).strip()


if __name__ == "__main__":
    print(write_data())
