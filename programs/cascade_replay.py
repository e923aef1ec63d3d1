"""A FrugalGPT cascade over real recorded API answers, judged by a MiniLM scorer.

OVERRULING (legal: does the sentence overrule a precedent?), 3 stages cheap → expensive:
J1-large ($0.36 per 1k queries) → GPT-3.5-turbo ($0.59) → GPT-4 ($8.9). Each model answers
with what that API really answered (FrugalGPT's data, Apache-2.0, packaged excerpt); a cross-
encoder on the real all-MiniLM-L6-v2 encoder scores (question, answer) and a stage keeps an
answer whose score reaches its threshold. The scorer's head is trained the first time the
program runs (seconds; cached) on the excerpt's even rows; evaluate on the odd rows:

    tandem eval programs/cascade_replay.py:program --data programs/data/overruling_test.jsonl \\
        --metric programs/cascade_replay.py:metric
"""

from __future__ import annotations

import hashlib
import json

from tandemlm import Model, Pipeline, Solve
from tandemlm.evaluate import packaged_data
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.score import Score
from tandemlm.runtime.backends.hf_classifier import minilm_path
from tandemlm.tiny import cache_dir

STAGES = ["j1-large", "gpt-3.5-turbo", "gpt-4"]
THRESHOLDS = [0.95, 0.6]


def _train_rows() -> list[dict]:
    rows = [json.loads(line) for line in packaged_data("overruling_excerpt.jsonl").open()]
    return rows[0::2]  # the test file holds the odd rows


def _scorer_path():
    """Train (once) a MiniLM cross-encoder head: (question, a cheap model's answer) -> correct?"""
    rows = _train_rows()
    pairs, labels = [], []
    for row in rows:
        for name in STAGES[:-1]:
            entry = row["models"][name]
            pairs.append((row["question"], entry["output"].strip()))
            labels.append(float(bool(entry["correct"])))
    key = hashlib.sha256(json.dumps([pairs, labels]).encode()).hexdigest()[:12]
    out = cache_dir() / f"overruling-scorer-{key}"
    if not (out / "model.safetensors").is_file():
        encoder = Model("hf-classifier", str(minilm_path()), device="cpu")
        encoder.backend.train_head(pairs, labels, out, epochs=20, seed=0)  # frozen encoder: seconds
    return out


def build() -> Pipeline:
    data = str(packaged_data("overruling_excerpt.jsonl"))
    models = {name: Model("recorded", name, data=data) for name in STAGES}
    scorer = Model("hf-classifier", str(_scorer_path()), device="cpu", name="minilm-scorer")
    stages = [Stage(Solve("prompt, question -> answer", model=models[name], name=name.replace(".", "_"),
                          prompt_field="prompt", key_field="id"),
                    judge=Score(scorer, fields=("question", "answer"), name=f"judge_{i}"),
                    threshold=THRESHOLDS[i])
              for i, name in enumerate(STAGES[:-1])]
    stages.append(Stage(Solve("prompt, question -> answer", model=models[STAGES[-1]], name="gpt_4",
                              prompt_field="prompt", key_field="id")))
    return Pipeline([Cascade(stages)], name="cascade_replay")


def metric(example, prediction, trace=None) -> bool:
    """Exact match with the gold label, as the source judged it."""
    return prediction.answer.strip() == example.gold.strip()


program = build
