"""Ready metrics and metric loading. A metric is `fn(example, prediction, trace=None)`
returning a float or bool, as in DSPy; `example` and `prediction` allow attribute access."""

from __future__ import annotations

import importlib
import importlib.util
import re
import string
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandemlm.runtime import ConfigError

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


def load_object(spec: str, what: str = "object") -> Any:
    """Load `module.path:NAME` or `path/to/file.py:NAME`."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{what} '{spec}' must look like MODULE:NAME or FILE.py:NAME")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{what} file '{target}' does not exist")
        module_name = f"_tandem_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[module_name] = module
            spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import module '{target}' for {what} '{spec}': {exc}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{what} '{spec}': '{target}' has no attribute '{attr}'")
    return getattr(module, attr)
