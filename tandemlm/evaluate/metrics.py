"""Ready metrics. A metric is `fn(example, prediction, trace=None)`
returning a float or bool, as in DSPy; `example` and `prediction` allow attribute access."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

Metric = Callable[..., Any]


def normalize(text: Any) -> str:
    """Lowercase, drop punctuation and articles, squeeze whitespace (SQuAD-style)."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(example: Any, prediction: Any, trace: Any = None) -> bool:
    """Normalised `prediction.answer == example.answer` (or `example.gold`)."""
    gold = example.get("answer", example.get("gold"))
    return normalize(prediction.get("answer", "")) == normalize(gold)
