"""Training and scoring the two kinds of scorer a `Score` or `Rank` node can run on, from rows of
(field -> value, label):

* a cross-encoder (`classify`, backend `hf-classifier`): its classification head (and optionally
  its encoder) on (text, text pair) exactly as `score.classify_request` builds them;
* a generative model (`logprobs` + `train`, backend `hf`): a LoRA adapter on the node's own yes/no
  question (`score.yes_no_messages`, the node's instructions) answered with its `yes` or `no`
  word, so P(yes) — what the node reads — moves toward the label.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandemlm.modules.score import classify_request, p_yes, yes_no_messages
from tandemlm.optimizers.finetune import trains_lora
from tandemlm.runtime import GenRequest, Model, ScoreRequest
from tandemlm.runtime.types import LoraOptions

Row = dict[str, Any]


def kind_of(model: Model | None) -> str | None:
    """"cross_encoder" for a trainable cross-encoder, "yes_no" for a trainable generative model with
    log-probabilities, else None (the node's scorer cannot be trained here)."""
    if model is None or not model.trainable:
        return None
    if model.supports("classify"):
        return "cross_encoder"
    if model.supports("logprobs") and trains_lora(model):
        return "yes_no"
    return None


def _question(node: Any, row: Row) -> tuple[dict[str, str], ...]:
    return tuple(yes_no_messages(row, node.instructions, node.yes, node.no))


def scores(model: Model, node: Any, rows: list[Row]) -> list[float | None]:
    """The node's score of each row with `model`, in one batch (None where a call failed)."""
    if not rows:
        return []
    if model.supports("classify"):
        return [r.positive if r.ok else None for r in model.classify([classify_request(x) for x in rows])]
    asks = [ScoreRequest(continuations=(node.yes, node.no), messages=_question(node, x)) for x in rows]
    return [p_yes(r) if r.ok else None for r in model.logprobs(asks)]


def train(kind: str, model: Model, node: Any, rows: list[Row], labels: list[float], out: Path, *,
          epochs: int, lr: float | None, batch_size: int, train_encoder: bool, lora: dict[str, Any],
          seed: int, progress: Callable[[int], None]) -> Model:
    """Train `model` on the rows into `out`; returns the Model serving the result."""
    if kind == "cross_encoder":
        model.backend.train_head([(r.text, r.text_pair) for r in map(classify_request, rows)], labels,
                                 out, epochs=epochs, lr=lr, batch_size=batch_size,
                                 train_encoder=train_encoder, seed=seed, progress=progress)
        options = {k: v for k, v in model.options.items() if k != "num_labels"}
        # the trained head serves in the untrained model's seat: same name, price and size, so
        # what a judge costs does not change with its weights
        return Model(model.backend_name, str(out), name=model.name, price=model.price,
                     params=model.params, remote=model.remote, **options)
    examples = [(GenRequest(messages=_question(node, row)), node.yes if y >= 0.5 else node.no)
                for row, y in zip(rows, labels, strict=True)]
    model.backend.train_lora(examples, out, lora=LoraOptions.from_dict(lora), epochs=epochs,
                             lr=lr or 2e-4, batch_size=batch_size, seed=seed, progress=progress)
    return Model.from_dict({**model.to_dict(), "adapter": str(out),
                            "name": model.name if "+scorer" in model.name else model.name + "+scorer"})
