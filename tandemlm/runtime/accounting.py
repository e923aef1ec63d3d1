"""Tokens, calls and cost per model.

Cost comes, in order of preference, from what the backend reports (a `recorded` model's real
cost), from a price in USD per million tokens (input, output), or — with no price — from an
estimate of 2 x parameters x tokens FLOPs, reported as FLOPs and never mixed into USD.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class Cost:
    """The cost of one call: USD when known, else an estimated FLOP count, else unknown."""

    usd: float | None = None
    flops: float | None = None


def call_cost(tokens_in: int | None, tokens_out: int | None, *, reported_usd: float | None,
              price: tuple[float, float] | None, params: int | None) -> Cost:
    """Price one call. `price` is USD per million (input, output) tokens."""
    if reported_usd is not None:
        return Cost(usd=float(reported_usd))
    if price is not None and tokens_in is not None and tokens_out is not None:
        return Cost(usd=(tokens_in * price[0] + tokens_out * price[1]) / 1e6)
    if params is not None and tokens_in is not None and tokens_out is not None:
        return Cost(flops=2.0 * params * (tokens_in + tokens_out))
    return Cost()


@dataclass
class ModelUsage:
    """Aggregated usage of one model; token counts stay None when the backend reports none."""

    calls: int = 0
    failed_calls: int = 0
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_usd: float | None = None
    flops_estimate: float | None = None

    def add(self, tokens_in: int | None, tokens_out: int | None, cost: Cost, ok: bool = True,
            calls: int = 1) -> None:
        self.calls += calls
        self.failed_calls += 0 if ok else calls
        if tokens_in is not None:
            self.tokens_in = (self.tokens_in or 0) + tokens_in
        if tokens_out is not None:
            self.tokens_out = (self.tokens_out or 0) + tokens_out
        if cost.usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + cost.usd
        if cost.flops is not None:
            self.flops_estimate = (self.flops_estimate or 0.0) + cost.flops

    @property
    def cost_kind(self) -> str:
        if self.cost_usd is not None:
            return "usd"
        return "flops_estimate" if self.flops_estimate is not None else "unknown"

    def to_dict(self) -> dict:
        return {**asdict(self), "cost_kind": self.cost_kind}


class Ledger:
    """Thread-safe usage per model name."""

    def __init__(self) -> None:
        self._usage: dict[str, ModelUsage] = {}
        self._lock = threading.Lock()

    def add(self, model: str, tokens_in: int | None, tokens_out: int | None, cost: Cost,
            ok: bool = True, calls: int = 1) -> None:
        with self._lock:
            self._usage.setdefault(model, ModelUsage()).add(tokens_in, tokens_out, cost, ok, calls)

    def per_model(self) -> dict[str, ModelUsage]:
        with self._lock:
            return dict(self._usage)

    def total_usd(self) -> float | None:
        costs = [u.cost_usd for u in self.per_model().values() if u.cost_usd is not None]
        return sum(costs) if costs else None

    def to_dict(self) -> dict[str, dict]:
        return {name: usage.to_dict() for name, usage in sorted(self.per_model().items())}
