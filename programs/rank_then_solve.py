"""Rank → solve (MindAct's shape): a small cross-encoder keeps the 3 passages most relevant to a
question out of 12, and only those reach the solver.

Each question asks one fact about a made-up entity ("What is the capital of Vorlandia?"). Its 12
candidate passages hold one answer and 11 distractors chosen to be hard: four other facts about
the same entity ("Vorlandia mainly exports copper.") and five facts of the same kind about other
entities ("The capital of Quenbrook is Telsa."), plus two unrelated ones. The ranker is the real
pretrained all-MiniLM-L6-v2 encoder used as a cross-encoder, with a relevance head trained on
questions disjoint from the evaluation ones; the solver is a `Step` that reads the kept passages
in rank order and extracts the asked fact (it answers "unknown" when none of them holds it), so
the end accuracy shows exactly what ranking lost.

    tandem eval programs/rank_then_solve.py:program \\
        --data programs/data/rank_qa.jsonl --metric programs/rank_then_solve.py:metric

`recall_at_3` is the ranker's own metric (the gold passage is among the kept three). On the 100
shipped questions: recall@3 0.97 and accuracy 0.97 (the solver reads 3 passages instead of 12);
the same encoder with its untrained head keeps the gold passage 0.30 of the time (chance: 0.25).
1,200 classify requests, ~24k encoder tokens. On a busy 2-core CPU the first run (training
included) took 82 s and later runs 42 s; the compute is ~10 s of single-core CPU for training and
~6 s for the evaluation.

No download: on first use the ranker's head is trained (the MiniLM encoder frozen, its outputs
computed once; seconds on CPU) into `$TANDEM_CACHE/rank_then_solve/` (default
`~/.cache/tandemlm/rank_then_solve/`), in a folder named after a hash of the recipe; later runs
load it from there. Training is seeded, so the same code gives the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

from tandemlm import Model, Pipeline, Step
from tandemlm.modules.rank import Rank
from tandemlm.runtime.backends.hf_classifier import minilm_path

DATA = Path(__file__).resolve().parent / "data" / "rank_qa.jsonl"
TRAIN_QUESTIONS, EVAL_QUESTIONS, SEED = 160, 100, 0
HEAD = dict(epochs=30, lr=1e-1, batch_size=128)
NEGATIVES = 5  # distractors per training question

# attribute -> (question template, passage template, values)
FACTS = {
    "capital": ("What is the capital of {e}?", "The capital of {e} is {v}.",
                ["Telsa", "Marrow", "Odrin", "Castel", "Brisk", "Yonder", "Pellam", "Isk"]),
    "founder": ("Who founded {e}?", "{e} was founded by {v}.",
                ["Ada Morn", "Ivo Tarr", "Lena Quist", "Omar Vell", "Rhea Dunn", "Sol Prack"]),
    "export": ("What does {e} mainly export?", "{e} mainly exports {v}.",
               ["copper", "salt", "timber", "wool", "glass", "tea", "silk", "amber"]),
    "language": ("What language is spoken in {e}?", "People in {e} speak {v}.",
                 ["Orvish", "Talic", "Menari", "Quell", "Doran", "Ysti"]),
    "founded": ("When was {e} founded?", "{e} was established in {v}.",
                ["1204", "1387", "1521", "1619", "1744", "1802", "1876", "1931"]),
    "river": ("Which river flows through {e}?", "The river {v} flows through {e}.",
              ["Ambra", "Velt", "Siskin", "Oxley", "Narn", "Tiber Minor"]),
}
_SYLLABLES = ["vor", "lan", "quen", "brook", "tal", "mir", "zen", "dor", "pel", "ast", "kor",
              "ith", "mar", "sel", "ven", "rul", "gan", "ost", "fey", "lum", "dra", "wen"]


# -- the task ---------------------------------------------------------------------------------
def _entities(rng: random.Random, n: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize())
    return sorted(names)


def _world(rng: random.Random, entities: list[str]) -> dict[str, dict[str, str]]:
    return {e: {a: rng.choice(values) for a, (_, _, values) in FACTS.items()} for e in entities}


def _passage(world: dict, entity: str, attribute: str) -> str:
    return FACTS[attribute][1].format(e=entity, v=world[entity][attribute])


def _question(rng: random.Random, world: dict, entity: str, attribute: str) -> dict:
    others = [e for e in world if e != entity]
    same_entity = [_passage(world, entity, a) for a in FACTS if a != attribute]
    same_kind = [_passage(world, e, attribute) for e in rng.sample(others, 5)]
    unrelated = [_passage(world, e, rng.choice([a for a in FACTS if a != attribute]))
                 for e in rng.sample(others, 2)]
    gold = _passage(world, entity, attribute)
    passages = [gold, *rng.sample(same_entity, 4), *same_kind, *unrelated]
    rng.shuffle(passages)
    return {"question": FACTS[attribute][0].format(e=entity), "passages": passages,
            "answer": world[entity][attribute], "gold_passage": gold}


def make_data(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(train, eval) questions over two disjoint sets of made-up entities, seeded."""
    rng = random.Random(seed)
    entities = _entities(rng, 120)
    rng.shuffle(entities)
    rows = []
    for names, count in ((entities[:60], TRAIN_QUESTIONS), (entities[60:], EVAL_QUESTIONS)):
        world = _world(rng, names)
        rows.append([_question(rng, world, rng.choice(names), rng.choice(list(FACTS)))
                     for _ in range(count)])
    train, evals = rows
    return train, [{"id": f"rank-{i}", **row} for i, row in enumerate(evals)]


def write_data(path: Path = DATA) -> Path:
    """Write the evaluation file shipped under programs/data/ (deterministic)."""
    _, evals = make_data()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in evals))
    return path


# -- the ranker -------------------------------------------------------------------------------
def training_pairs(train: list[dict],
                   negatives: int = NEGATIVES) -> tuple[list[tuple[str, str]], list[float]]:
    """(question, passage) pairs of the training questions, labelled relevant or not: each gold
    passage and the first `negatives` distractors of its (shuffled) list."""
    pairs, labels = [], []
    for row in train:
        distractors = [p for p in row["passages"] if p != row["gold_passage"]][:negatives]
        for passage in [row["gold_passage"], *distractors]:
            pairs.append((row["question"], passage))
            labels.append(float(passage == row["gold_passage"]))
    return pairs, labels


def cache_dir() -> Path:
    """$TANDEM_CACHE (default ~/.cache/tandemlm)/rank_then_solve/<hash of the recipe>."""
    root = Path(os.environ.get("TANDEM_CACHE") or Path.home() / ".cache" / "tandemlm")
    recipe = json.dumps([HEAD, TRAIN_QUESTIONS, NEGATIVES, SEED, FACTS, _SYLLABLES], sort_keys=True)
    return root / "rank_then_solve" / hashlib.sha256(recipe.encode()).hexdigest()[:12]


def ensure_ranker(root: Path | None = None) -> Path:
    """Train the ranker's head into `root` (default `cache_dir()`) unless it is already there;
    built in a temporary sibling and renamed into place, so a half-trained head is never used."""
    from tandemlm.runtime.backends.hf_classifier import HFClassifierBackend

    target = (root or cache_dir()) / "ranker"
    if (target / "model.safetensors").is_file():
        return target
    print(f"rank_then_solve: training the ranker's head into {target} (first run only)",
          file=sys.stderr)
    work = target.with_name(f"ranker.tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    train, _ = make_data()
    HFClassifierBackend(str(minilm_path()), device="cpu").train_head(
        *training_pairs(train), work, seed=SEED, **HEAD)
    try:
        work.rename(target)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(work, ignore_errors=True)
    return target


# -- the pipeline -----------------------------------------------------------------------------
def _pattern(template: str, **groups: str) -> re.Pattern:
    """A template ("The capital of {e} is {v}.") as a regex, each placeholder replaced."""
    pattern = re.escape(template)
    for name, regex in groups.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), regex)
    return re.compile(pattern)


_ASKS = [(attribute, _pattern(ask, e="(?P<e>.+)")) for attribute, (ask, _, _) in FACTS.items()]


def read_answer(question: str, top_passages: list[str]) -> str:
    """The solver: the asked fact from the first kept passage (in rank order) that states it
    for the asked entity, else "unknown"."""
    for attribute, ask in _ASKS:
        asked = ask.fullmatch(question)
        if asked:
            fact = _pattern(FACTS[attribute][1], e=re.escape(asked["e"]), v="(?P<v>.+)")
            for passage in top_passages:
                found = fact.fullmatch(passage)
                if found:
                    return found["v"]
    return "unknown"


def build(ranker: Model | None = None, k: int = 3) -> Pipeline:
    """Rank (MiniLM cross-encoder, top k) → read the answer from the kept passages."""
    ranker = ranker or Model("hf-classifier", str(ensure_ranker()), name="minilm-ranker",
                             device="cpu", batch_size=64)
    return Pipeline([
        Rank(ranker, query="question", items="passages", k=k, into="top_passages"),
        Step(read_answer, inputs="question, top_passages", outputs="answer", name="solve"),
    ], name="rank_then_solve")


def program() -> Pipeline:
    """The pipeline on the cached trained ranker (trained on first use, see the docstring)."""
    return build()


def metric(example, prediction, trace=None) -> bool:
    """Exact match of the extracted answer."""
    return prediction.answer == example.answer


def recall_at_3(example, prediction, trace=None) -> bool:
    """Whether the ranker kept the gold passage."""
    return example.gold_passage in prediction.top_passages


if __name__ == "__main__":
    print(write_data())
