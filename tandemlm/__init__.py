"""tandemlm: a compiler for LM pipelines in which small models help large ones.

The public names load on first use (PEP 562), so `import tandemlm` and the `tandem` command
start without DSPy, torch or transformers; `from tandemlm import Pipeline` loads what it needs.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(["DSPyModule", "ExampleResult", "LMNode", "Node", "NodeTrace", "Pipeline",
                     "Step"], "tandemlm.compose"),
    **dict.fromkeys(["EvalResult", "evaluate", "load_data"], "tandemlm.evaluate"),
    "Solve": "tandemlm.modules",
    **dict.fromkeys(["compile", "load"], "tandemlm.optimizers"),
    **dict.fromkeys(["Backend", "ConfigError", "EvaluationWarning", "GenRequest", "GenResult",
                     "GraphError", "Model", "ParseError", "ScoreRequest", "ScoreResult",
                     "TandemError", "register_backend"], "tandemlm.runtime"),
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from tandemlm.compose import DSPyModule, ExampleResult, LMNode, Node, NodeTrace, Pipeline, Step
    from tandemlm.evaluate import EvalResult, evaluate, load_data
    from tandemlm.modules import Solve
    from tandemlm.optimizers import compile, load
    from tandemlm.runtime import (Backend, ConfigError, EvaluationWarning, GenRequest, GenResult,
                                  GraphError, Model, ParseError, ScoreRequest, ScoreResult,
                                  TandemError, register_backend)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tandemlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """Keeps a public name that is also a subpackage's name (`evaluate`) the public object.

    Importing a submodule binds it on its parent package; for `tandemlm.evaluate` that would
    hide the `evaluate` function from `from tandemlm import evaluate` once anything had imported
    the subpackage. The binding is skipped for such names, so the lookup reaches `__getattr__`;
    the subpackage stays reachable through `sys.modules` and `import tandemlm.evaluate`.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType) \
                and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
