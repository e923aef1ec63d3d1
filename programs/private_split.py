"""PrivateSplit (CoGenesis, sketch variant) on real tiny local models.

A "remote" model (a tiny Llama marked `remote=True`: it runs here, but the pipeline treats it
as a hosted API) writes a reminder sketch from the public request only; a local tiny model
completes it with the private name and condition. Both models are trained for seconds on the
two nodes' formats the first time the program runs, and cached (see `tandemlm.tiny.cache_dir`).

    tandem eval programs/private_split.py:program --data programs/data/private_split.jsonl \\
        --metric programs/private_split.py:metric

The metric is the share of the two private values the final letter carries; the pipeline's
privacy checks guarantee neither ever reached the remote model (tests/modules/test_private_split.py).
"""

from __future__ import annotations

import random

from tandemlm import LMNode, Model, Pipeline
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.modules.private_split import PrivateSplit
from tandemlm.tiny import cached_chat_lm, chat_template_tokenizer, node_chat_texts

NAMES = ["Ada", "Bo", "Cyd", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]
CONDITIONS = ["asthma", "diabetes", "a sprain", "migraines", "flu", "allergies"]
EVENTS = ["checkup", "blood test", "x-ray", "follow-up", "vaccine", "consultation"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


def make_examples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        event, day = rng.choice(EVENTS), rng.choice(DAYS)
        rows.append({"request": f"Remind the patient of the {event} on {day}.",
                     "name": rng.choice(NAMES), "condition": rng.choice(CONDITIONS),
                     "sketch": f"Dear [NAME], your {event} is on {day}. About [CONDITION]: bring notes."})
    return rows


def _nodes() -> tuple[LMNode, LMNode]:
    adapter = CompactChatAdapter()  # short prompts: the tiny models train on them in seconds
    sketch = LMNode("request -> sketch", model="remote", name="sketch", max_tokens=40,
                    adapter=adapter, instructions="Write a reminder with [NAME] and [CONDITION].")
    complete = LMNode("request, sketch, name, condition -> letter", model="local", name="complete",
                      max_tokens=48, adapter=adapter,
                      instructions="Fill in [NAME] and [CONDITION] in the sketch.")
    return sketch, complete


def _letter(row: dict) -> str:
    return row["sketch"].replace("[NAME]", row["name"]).replace("[CONDITION]", row["condition"])


def build() -> Pipeline:
    """Train (once, cached) the two tiny models, and wire the private split."""
    sketch, complete = _nodes()
    tokenizer = chat_template_tokenizer()
    rows = make_examples(300, seed=1)
    remote_texts = node_chat_texts(sketch, tokenizer, [({"request": r["request"]},
                                                        {"sketch": r["sketch"]}) for r in rows])
    local_texts = node_chat_texts(complete, tokenizer, [(r, {"letter": _letter(r)}) for r in rows])
    remote = Model("hf", str(cached_chat_lm("private-remote", remote_texts, steps=200)),
                   device="cpu", remote=True, name="remote-tiny")
    local = Model("hf", str(cached_chat_lm("private-local", local_texts, steps=500)),
                  device="cpu", name="local-tiny")
    split = PrivateSplit(sketch, complete, private=["name", "condition"])
    return Pipeline([split], models={"remote": remote, "local": local}, name="private_split")


def metric(example, prediction, trace=None) -> float:
    """Share of the private values (name, condition) the letter carries."""
    letter = prediction.letter
    return (float(example.name in letter) + float(example.condition in letter)) / 2


program = build
