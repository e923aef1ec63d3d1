"""Ready metrics. A metric is `fn(example, prediction, trace=None)`
returning a float or bool, as in DSPy; `example` and `prediction` allow attribute access."""

from __future__ import annotations

import inspect
import re
import string
from collections.abc import Callable
from typing import Any

import dspy

from tandemlm.runtime import ConfigError

Metric = Callable[..., Any]

_SHAPE = "a metric is a function (example, prediction[, trace]) -> number or bool"


def check_metric(metric: Any, name: str | None = None) -> Metric:
    """`metric`, or a `ConfigError` when it cannot be one: not callable, a program (a Pipeline
    or other dspy.Module), or a function that cannot take (example, prediction). Caught here, a
    wrong metric would otherwise fail on every example and score 0."""
    label = f"metric '{name}'" if name else "the metric"
    if isinstance(metric, dspy.Module):
        raise ConfigError(f"{label} is a {type(metric).__name__} (a program), not a metric; "
                          f"{_SHAPE}")
    if not callable(metric):
        raise ConfigError(f"{label} is a {type(metric).__name__}, not a function; {_SHAPE}")
    try:
        signature = inspect.signature(metric)
    except (TypeError, ValueError):
        return metric  # a builtin without a signature: let the calls tell
    try:
        signature.bind(None, None)
    except TypeError as exc:
        raise ConfigError(f"{label} has the signature {signature}, which cannot be called as "
                          f"metric(example, prediction) ({exc}); {_SHAPE}") from None
    return metric


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
