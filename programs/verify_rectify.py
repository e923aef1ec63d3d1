"""Verify → rectify (KALMV's shape): answer from retrieved evidence, let a small verifier judge
(question, evidence, answer), and on its verdict re-retrieve or regenerate, on real tiny models.

The corpus (`programs/data/qa_corpus_passages.jsonl`, 40 passages) holds two facts about each of
16 made-up towns ("Caldor was founded by Bram.", "The river Hask flows through Caldor.") and
8 distractors ("Oona, who grew up in Caldor, founded its first school."). Each of the 32
questions (`programs/data/qa_corpus.jsonl`) has its answer in exactly one passage. BM25 ranks a
distractor first for the 8 "Who founded X?" questions whose town has one — there the solver,
reading the top passage, names the wrong person: a retrieval error. The pipeline is one
`Rectify` node: BM25 `Retrieve` (top 3) → `Solve` (question, evidence → answer) → `Verify`
(option probabilities of retrieval_error / generation_error / correct) → next passage, resample,
or stop, for at most 3 turns.

    tandem eval programs/verify_rectify.py:program \\
        --data programs/data/qa_corpus.jsonl --metric programs/verify_rectify.py:metric
    tandem eval programs/verify_rectify.py:single_pass ...   # the same, without rectification

No download: on first use two 2-layer, 64-wide Llamas are built and briefly trained (about a
minute of CPU; on a busy shared machine set OMP_NUM_THREADS=1, as torch's threads then mostly
wait on each other) into `$TANDEM_CACHE/verify_rectify/` (default
`~/.cache/tandemlm/verify_rectify/`), in a folder named after a hash of the recipe and the data;
later runs load them from there. Training is seeded, so the same code gives the same weights.
Both models are trained on chats built from this corpus and these questions — the solver reads
each question's top-3 passages, the verifier judges (question, passage, answer) triples with
wrong answers drawn at random — so the figures measure what the loop recovers with an imperfect
in-domain solver and verifier, not generalisation to unseen facts (models this small do not
learn to read new passages in a minute of training).

Measured (CPU, 1 thread): single pass 0.750 (24/32: every distractor-first question wrong),
rectified 0.969 (31/32) at 2.6x the calls of each model (82 vs 32). The verifier flags all 8
distractors as retrieval errors, but also calls most right answers generation errors, so many
examples run all 3 turns; keeping the best-scored turn makes those false alarms harmless
(keeping the last turn instead scores 0.906).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from tandemlm.compose.adapters import CompactChatAdapter

from tandemlm import Model, Pipeline, Solve
from tandemlm.modules.rectify import Rectify
from tandemlm.modules.retrieve import Retrieve
from tandemlm.modules.verify import Verify
from tandemlm.tiny import build_once, build_tiny_lm, chat_template_tokenizer, train_tiny_lm
from tandemlm.tiny import cache_dir as tiny_cache_dir

HERE = Path(__file__).resolve().parent
DATA, PASSAGES = HERE / "data" / "qa_corpus.jsonl", HERE / "data" / "qa_corpus_passages.jsonl"
TOWNS, DISTRACTORS, TOP_K, SEED = 16, 8, 3, 0
SOLVER = dict(layers=2, hidden=64, heads=4, steps=500, lr=3e-3)
VERIFIER = dict(layers=2, hidden=64, heads=4, steps=700, lr=3e-3)
WRONG_PER_FACT, CORRECT_COPIES = 2, 2  # verifier chats per gold passage (balances the verdicts)

_SYLLABLES = ["zor", "vik", "kes", "mal", "tor", "pel", "lin", "dra", "men", "sov", "ar", "bel",
              "cal", "dor", "fen", "gil", "hal", "jor", "nim", "qua", "rud", "tam", "ul", "wex"]
PEOPLE = ["Ilo", "Aya", "Bram", "Cora", "Dax", "Edda", "Finn", "Gala", "Hugo", "Iris", "Jory",
          "Kaia", "Lev", "Mira", "Nox", "Oona", "Pim", "Rhea", "Sol", "Tova"]
RIVERS = ["Sova", "Tarn", "Ulla", "Vey", "Wend", "Yara", "Zeb", "Orla", "Brin", "Cask", "Dune",
          "Elm", "Fjor", "Grue", "Hask", "Isk", "Jun", "Kell", "Lune", "Mord"]


# -- the corpus -------------------------------------------------------------------------------
def make_corpus(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(passages, questions), seeded. A passage: {id, text, town, kind, name}; a question:
    {id, question, answer, gold} where `gold` is the id of the one passage holding the answer."""
    rng = random.Random(seed)
    towns: set[str] = set()
    while len(towns) < TOWNS:
        towns.add((rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES)).capitalize())
    order = sorted(towns)
    rng.shuffle(order)
    founders, rivers = rng.sample(PEOPLE, TOWNS), rng.sample(RIVERS, TOWNS)
    passages, questions = [], []
    for town, founder, river in zip(order, founders, rivers, strict=True):
        for kind, name, text, question in (
                ("founder", founder, f"{town} was founded by {founder}.", f"Who founded {town}?"),
                ("river", river, f"The river {river} flows through {town}.",
                 f"Which river flows through {town}?")):
            passages.append({"text": text, "town": town, "kind": kind, "name": name})
            questions.append({"question": question, "answer": name, "gold": text})
    for k, town in enumerate(order[:DISTRACTORS]):
        # "who" and "founded" match "Who founded <town>?" better than the fact itself does
        person = founders[(k + 3) % TOWNS]
        passages.append({"text": f"{person}, who grew up in {town}, founded its first school.",
                         "town": town, "kind": "distractor", "name": person})
    rng.shuffle(passages)
    ids = {p["text"]: f"p{i}" for i, p in enumerate(passages)}
    passages = [{"id": ids[p["text"]], **p} for p in passages]
    questions = [{"id": f"q{i}", **q, "gold": ids[q["gold"]]} for i, q in enumerate(questions)]
    return passages, questions


def write_data() -> tuple[Path, Path]:
    """Write the two files shipped under programs/data/ (deterministic)."""
    passages, questions = make_corpus()
    DATA.parent.mkdir(parents=True, exist_ok=True)
    PASSAGES.write_text("".join(json.dumps(p) + "\n" for p in passages))
    DATA.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return DATA, PASSAGES


def load_corpus() -> tuple[list[dict], list[dict]]:
    """The shipped (passages, questions)."""
    read = lambda path: [json.loads(line) for line in path.read_text().splitlines() if line]
    return read(PASSAGES), read(DATA)


# -- the pipeline -----------------------------------------------------------------------------
def rectify(solver: Model | str = "solver", verifier: Model | str = "verifier",
            passages: list[str] | None = None, max_turns: int = 3) -> Rectify:
    """The Rectify node over the shipped corpus (or `passages`)."""
    texts = passages if passages is not None else [p["text"] for p in load_corpus()[0]]
    adapter = CompactChatAdapter()
    return Rectify(
        Solve("question, evidence -> answer", model=solver, adapter=adapter, max_tokens=24,
              instructions="Answer with the name the evidence gives."),
        Verify(verifier, adapter=adapter,
               instructions="Is the evidence about the question, and does the answer match it?"),
        Retrieve(texts, k=TOP_K), max_turns=max_turns, seed=SEED)


def _chats(tokenizer, passages: list[dict], questions: list[dict]) -> tuple[list[str], list[str]]:
    """Training chats: the solver names what each top-3 passage says; the verifier judges
    (question, passage, answer) triples — the gold passage with its answer (correct) or a wrong
    name of the same kind (generation_error), any other passage (retrieval_error)."""
    from tandemlm.tiny import node_chat_texts

    node = rectify(passages=[p["text"] for p in passages])
    by_text = {p["text"]: p for p in passages}
    rng = random.Random(SEED)
    solver_rows, verifier_rows = [], []
    for q in questions:
        gold = next(p for p in passages if p["id"] == q["gold"])
        for i, _ in node.retriever.search(q["question"]):
            text = passages[i]["text"]
            seen = {"question": q["question"], "evidence": text}
            solver_rows.append((seen, {"answer": by_text[text]["name"]}))
            if text != gold["text"]:
                verifier_rows.append(({**seen, "answer": by_text[text]["name"]},
                                      {"verdict": "retrieval_error"}))
                continue
            verifier_rows += [({**seen, "answer": q["answer"]}, {"verdict": "correct"})] * CORRECT_COPIES
            pool = PEOPLE if gold["kind"] == "founder" else RIVERS
            for wrong in rng.sample([n for n in pool if n != q["answer"]], WRONG_PER_FACT):
                verifier_rows.append(({**seen, "answer": wrong}, {"verdict": "generation_error"}))
    return (node_chat_texts(node.solver, tokenizer, solver_rows),
            node_chat_texts(node.verifier, tokenizer, verifier_rows))


def cache_dir() -> Path:
    """$TANDEM_CACHE (or ~/.cache/tandemlm)/verify_rectify/<hash of the recipe and the data>."""
    root = tiny_cache_dir()
    recipe = json.dumps([SOLVER, VERIFIER, WRONG_PER_FACT, CORRECT_COPIES, SEED,
                         Path(__file__).read_text(), DATA.read_text(), PASSAGES.read_text()])
    return root / "verify_rectify" / hashlib.sha256(recipe.encode()).hexdigest()[:12]


def ensure_models(root: Path | None = None) -> tuple[Path, Path]:
    """Build and train both models into `root` (default `cache_dir()`) unless already there;
    `build_once` builds aside and renames into place, so an interrupted run never leaves a
    half-trained model that later runs would trust."""
    def build(work: Path) -> None:
        chats = _chats(chat_template_tokenizer(), *load_corpus())
        for name, spec, texts in zip(("solver", "verifier"), (SOLVER, VERIFIER), chats, strict=True):
            build_tiny_lm(work / name, texts=texts, layers=spec["layers"], hidden=spec["hidden"],
                          heads=spec["heads"], seed=SEED, vocab_size=1024)
            train_tiny_lm(work / name, texts, steps=spec["steps"], lr=spec["lr"], seed=SEED)

    root = build_once(root or cache_dir(), build)
    return root / "solver", root / "verifier"


def build(max_turns: int = 3) -> Pipeline:
    """The pipeline on the cached tiny models (trained on first use, see the module docstring)."""
    solver, verifier = ensure_models()
    options = dict(device="cpu", dtype="float32", batch_size=64)
    return Pipeline([rectify(max_turns=max_turns)], name=f"verify_rectify[turns={max_turns}]",
                    models={"solver": Model("hf", str(solver), name="tiny-solver-2x64", **options),
                            "verifier": Model("hf", str(verifier), name="tiny-verifier-2x64",
                                              **options)})


def program() -> Pipeline:
    """Answer, verify and rectify for up to 3 turns."""
    return build(max_turns=3)


def single_pass() -> Pipeline:
    """The baseline: answer from the top passage and verify once, no rectification."""
    return build(max_turns=1)


def metric(example, prediction, trace=None) -> bool:
    """Exact match of the answer (a name) with the gold one, ignoring case and a final period."""
    return str(prediction.answer).strip().rstrip(".").lower() == example.answer.lower()


if __name__ == "__main__":
    print(*write_data())
