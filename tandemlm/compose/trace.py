"""Traces: what one example did at every node."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class NodeTrace:
    """One node's work on one example: inputs, outputs, model, tokens, cost, latency, error."""

    node: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    flops: float | None = None
    latency_s: float = 0.0
    calls: int = 0
    raw: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExampleResult:
    """One example's run through a pipeline: the fields it produced and its trace."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    trace: list[NodeTrace]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "outputs": self.outputs, "error": self.error,
                "trace": [t.to_dict() for t in self.trace]}
