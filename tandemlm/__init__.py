"""tandemlm: a compiler for LM pipelines in which small models help large ones."""

from tandemlm.compose import DSPyModule, ExampleResult, LMNode, Node, NodeTrace, Pipeline, Step
from tandemlm.evaluate import EvalResult, evaluate, load_data
from tandemlm.modules import Solve
from tandemlm.optimizers import compile, load
from tandemlm.runtime import (Backend, ConfigError, EvaluationWarning, GenRequest, GenResult, GraphError, Model,
                              ParseError, ScoreRequest, ScoreResult, TandemError, register_backend)

__version__ = "0.1.0"

__all__ = [
    "Backend", "ConfigError", "DSPyModule", "EvalResult", "EvaluationWarning", "ExampleResult", "GenRequest", "GenResult",
    "GraphError", "LMNode", "Model", "Node", "NodeTrace", "ParseError", "Pipeline",
    "ScoreRequest", "ScoreResult", "Solve", "Step", "TandemError", "compile", "evaluate", "load",
    "load_data",
    "register_backend",
]
