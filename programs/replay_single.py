"""One `Solve` node on a `recorded` model: the OVERRULING task, replayed from real API outputs.

The model answers with exactly what that API answered to the same 5-shot prompt (FrugalGPT's
data, Apache-2.0; see tandemlm/data/README.md), and costs what it really cost.

    tandem eval programs/replay_single.py:program \\
        --data tandemlm/data/overruling_excerpt.jsonl --metric programs/replay_single.py:metric

`build(model=..., data=...)` replays another recorded model, or another replay file.
"""

from __future__ import annotations

from pathlib import Path

from tandemlm import Model, Pipeline, Solve
from tandemlm.evaluate import packaged_data


def build(model: str = "gpt-3.5-turbo", data: str | Path | None = None) -> Pipeline:
    """The pipeline, replaying `model` from `data` (default: the packaged excerpt)."""
    recorded = Model("recorded", model, data=str(data or packaged_data("overruling_excerpt.jsonl")))
    # The recorded models saw the raw 5-shot prompt, so the node sends it unformatted and looks
    # the answer up by row id (a few prompts occur twice in the full file).
    solve = Solve("prompt -> answer", model=recorded, prompt_field="prompt", key_field="id",
                  max_tokens=16)
    return Pipeline([solve], name=f"replay_single[{model}]")


def metric(example, prediction, trace=None) -> bool:
    """Exact match of the answer with the gold label, as the source judged it."""
    return prediction.answer.strip() == example.gold.strip()


program = build()
