"""Nodes, the pipeline graph, its validation and the stage-batched executor."""

from tandemlm.compose.composite import Composite
from tandemlm.compose.context import RunContext
from tandemlm.compose.dspy_module import DSPyModule
from tandemlm.compose.graph import build_graph, to_mermaid
from tandemlm.compose.lm_node import LMNode
from tandemlm.compose.node import Node, Step
from tandemlm.compose.pipeline import Pipeline
from tandemlm.compose.trace import ExampleResult, NodeTrace

__all__ = ["Composite", "DSPyModule", "ExampleResult", "LMNode", "Node", "NodeTrace", "Pipeline", "RunContext",
           "Step", "build_graph", "to_mermaid"]
