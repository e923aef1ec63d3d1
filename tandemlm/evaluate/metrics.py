"""Ready metrics. A metric is `fn(example, prediction, trace=None)`
returning a float or bool, as in DSPy; `example` and `prediction` allow attribute access."""

from __future__ import annotations

import inspect
import math
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


def metric_name(metric: Metric) -> str:
    """How messages name a metric: its qualified name ("Grader.score", "exact_match")."""
    return (getattr(metric, "__qualname__", None) or getattr(metric, "__name__", None)
            or type(metric).__name__)


def metric_value(metric: Metric, value: Any, example: dict[str, Any],
                 index: int | None = None) -> float:
    """What `metric` returned for `example` (the `index`-th), as a float; a `ConfigError` naming
    the metric, the example and the value when it is not a finite number or bool. A NaN would
    make every mean and standard error it enters NaN (or crash them), and a string or None
    stands for a score only by accident: the metric needs fixing, not the example."""
    number = None
    if not isinstance(value, str | bytes):  # float("0.5") would pass a string for a number
        try:
            number = float(value)  # bool, int, numpy scalars, a dspy.Prediction with a score
        except (TypeError, ValueError, OverflowError):
            pass
    if number is not None and math.isfinite(number):
        return number
    which = f"example {index}" if index is not None else "an example"
    if isinstance(example, dict) and "id" in example:
        which += f" (id {example['id']!r})"
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise ConfigError(f"metric '{metric_name(metric)}' returned {shown} for {which}; a metric must "
                      f"return a finite number or bool. Fix the metric (e.g. return 0.0 where it "
                      f"cannot score an example)")


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
