"""FrugalGPT's OVERRULING cascade, ready for the compiler: which APIs, in which order, with which
thresholds is left to `TrainScorer` + `Calibrate`.

OVERRULING (legal: does the sentence overrule a precedent?) with five recorded APIs as candidate
stages — GPT-J ($0.07 per 1k queries), J1-large ($0.36), GPT-3.5-turbo ($0.58), Cohere-xlarge
($3.2) and GPT-4 ($8.6) — each answering with what that API really answered (FrugalGPT's data,
Apache-2.0; the packaged excerpt's source is in tandemlm/data/README.md). Every stage is judged by
one shared cross-encoder on the real all-MiniLM-L6-v2 encoder, which starts untrained.
"""

from __future__ import annotations

import os
from pathlib import Path

from tandemlm.compose import Pipeline
from tandemlm.evaluate import packaged_data
from tandemlm.modules import Solve
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.score import Score
from tandemlm.runtime import Model
from tandemlm.runtime.backends.hf_classifier import minilm_path
from tandemlm.runtime.backends.recorded import read_replay_file

STAGES = ["gptj_6B", "j1-large", "gpt-3.5-turbo", "xlarge", "gpt-4"]


def data_path() -> str:
    """`TANDEM_OVERRULING` (e.g. the full 2,160-row replay file), else the packaged excerpt."""
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
    return Pipeline([Cascade(stages)], name="overruling_cascade")


def splits(path: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, val, test) of a replay file: test = rows with an odd index; of the even rows, every
    fourth calibrates (val) and the rest train the scorer."""
    rows = read_replay_file(path).rows
    even, odd = rows[0::2], rows[1::2]
    return ([r for i, r in enumerate(even) if i % 4 != 0], [r for i, r in enumerate(even) if i % 4 == 0],
            odd)


def metric(example, prediction, trace=None) -> bool:
    """Exact match with the gold label, as the source judged it."""
    return prediction.answer.strip() == example.gold.strip()


def suite(data: str | None = None):
    """One task: the cascade above compiled as `tandem demo` compiles it (TrainScorer +
    Calibrate), on the packaged excerpt or `data` (a replay file in the same format)."""
    from tandemlm.optimizers import Calibrate, TrainScorer
    from tandemlm.suites.suite import Suite, Task

    path = str(Path(data).resolve()) if data else data_path()
    train, val, test = splits(path)
    program = f"tandemlm.suites.overruling:build(data={path!r})"
    return Suite(name="overruling", description="FrugalGPT's OVERRULING cascade over five recorded APIs",
                 tasks={"overruling": Task(name="overruling", program=program, train=train, val=val,
                                           test=test, metric=metric,
                                           passes=[TrainScorer(train_encoder=True, epochs=3),
                                                   Calibrate(match=1.0)])})
