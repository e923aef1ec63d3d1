"""A FrugalGPT cascade that the compiler builds: which APIs, in which order, with which thresholds.

OVERRULING (legal: does the sentence overrule a precedent?) with five recorded APIs as candidate
stages — GPT-J ($0.07 per 1k queries), J1-large ($0.36), GPT-3.5-turbo ($0.58), Cohere-xlarge
($3.2) and GPT-4 ($8.6) — each answering with what that API really answered (FrugalGPT's data,
Apache-2.0). Every stage is judged by one shared cross-encoder on the real all-MiniLM-L6-v2
encoder, which starts untrained. `compile` trains it on (question, answer) -> correct? from every
stage's answers on the trainset (`TrainScorer`), then `Calibrate(match=1.0)` picks the cheapest
chain of stages and thresholds whose validation accuracy matches the best single API's:

    tandem compile programs/cascade_compile.py:program --train programs/data/overruling_train.jsonl \\
        --val programs/data/overruling_val.jsonl --metric programs/cascade_compile.py:metric \\
        --passes "TrainScorer(train_encoder=True, epochs=3)" --passes "Calibrate(match=1.0)" \
        --out out/cascade
    tandem eval out/cascade --data programs/data/overruling_test.jsonl \\
        --metric programs/cascade_compile.py:metric

By default the recorded answers come from the packaged 432-row excerpt; set
`TANDEM_OVERRULING=path/to/overruling_all.jsonl` to replay the full 2,160-row file.
"""

from __future__ import annotations

import json
import os

from tandemlm import Model, Pipeline, Solve
from tandemlm.evaluate import packaged_data
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.score import Score
from tandemlm.runtime.backends.hf_classifier import minilm_path

STAGES = ["gptj_6B", "j1-large", "gpt-3.5-turbo", "xlarge", "gpt-4"]


def data_path() -> str:
    return os.environ.get("TANDEM_OVERRULING") or str(packaged_data("overruling_excerpt.jsonl"))


def build(data: str | None = None, max_length: int = 96) -> Pipeline:
    """The uncompiled cascade: every stage in price order, one untrained MiniLM judge."""
    data = data or data_path()
    scorer = Model("hf-classifier", str(minilm_path()), name="minilm-scorer", max_length=max_length)
    stages = []
    for i, name in enumerate(STAGES):
        solver = Solve("prompt, question -> answer", model=Model("recorded", name, data=data),
                       name=name.replace(".", "_").replace("-", "_"), prompt_field="prompt",
                       key_field="id")
        judge = Score(scorer, fields=("question", "answer"), name=f"judge_{i}") \
            if i < len(STAGES) - 1 else None
        stages.append(Stage(solver, judge=judge, threshold=0.5))
    return Pipeline([Cascade(stages)], name="cascade_compile")


def splits(path: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, val, test) of a replay file: test = rows with an odd index; of the even rows, every
    fourth calibrates (val) and the rest train the scorer."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    even, odd = rows[0::2], rows[1::2]
    return ([r for i, r in enumerate(even) if i % 4 != 0], [r for i, r in enumerate(even) if i % 4 == 0],
            odd)


def metric(example, prediction, trace=None) -> bool:
    """Exact match with the gold label, as the source judged it."""
    return prediction.answer.strip() == example.gold.strip()


program = build
