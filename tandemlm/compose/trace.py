"""Traces: what one example did at every node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandemlm.runtime import Model


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
    #: traces of child nodes a composite ran for this example (their calls carry the cost)
    children: list[NodeTrace] = field(default_factory=list)
    #: what a composite decided, e.g. {"answered_by": 1} for a cascade
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def walk(self) -> Iterator[NodeTrace]:
        """This trace and every descendant's, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def account(trace: NodeTrace, model: Model, result: Any) -> None:
    """Add one model call (a GenResult, ScoreResult or ClassifyResult) to `trace`: calls, tokens,
    cost, latency and generated text."""
    cost = model.cost(result)
    trace.calls += 1
    trace.latency_s += result.latency_s
    trace.raw.extend(getattr(result, "texts", []))
    tokens_in, tokens_out = result.tokens_in, getattr(result, "tokens_out", None)
    if tokens_in is not None:
        trace.tokens_in = (trace.tokens_in or 0) + tokens_in
    if tokens_out is not None:
        trace.tokens_out = (trace.tokens_out or 0) + tokens_out
    if cost.usd is not None:
        trace.cost_usd = (trace.cost_usd or 0.0) + cost.usd
    if cost.flops is not None:
        trace.flops = (trace.flops or 0.0) + cost.flops
    if getattr(result, "confidence", None) is not None:
        trace.info["confidence"] = result.confidence  # the last call's, as for the answer


def spent(traces: list[NodeTrace]) -> dict[str, float | None]:
    """What `traces` and all their descendants cost: {"usd": ..., "flops": ...}, each None when
    no call reported it."""
    calls = [t for root in traces for t in root.walk()]
    usd = [t.cost_usd for t in calls if t.cost_usd is not None]
    flops = [t.flops for t in calls if t.flops is not None]
    return {"usd": sum(usd) if usd else None, "flops": sum(flops) if flops else None}


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
