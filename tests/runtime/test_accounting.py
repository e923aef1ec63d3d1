"""Cost per call and usage per model: reported USD > price > FLOPs estimate > unknown."""

from __future__ import annotations

import uuid

import pytest

from tandemlm.runtime import Cost, GenResult, Ledger, Model, ModelUsage, call_cost


def test_reported_usd_wins_over_price_and_params():
    cost = call_cost(1000, 100, reported_usd=0.5, price=(3.0, 15.0), params=10**9)
    assert cost == Cost(usd=0.5, flops=None)


def test_reported_zero_usd_is_a_real_cost_not_missing():
    assert call_cost(1000, 100, reported_usd=0.0, price=(3.0, 15.0), params=10**9) == Cost(usd=0.0)


def test_price_per_million_tokens_wins_over_params():
    cost = call_cost(2_000, 500, reported_usd=None, price=(3.0, 15.0), params=10**9)
    assert cost.usd == pytest.approx((2_000 * 3.0 + 500 * 15.0) / 1e6)
    assert cost.flops is None


def test_params_give_a_flops_estimate_never_usd():
    cost = call_cost(30, 10, reported_usd=None, price=None, params=7_000)
    assert cost == Cost(usd=None, flops=2.0 * 7_000 * 40)


def test_price_without_token_counts_falls_through_to_flops_or_unknown():
    # A price is no use without tokens; the estimate needs tokens too.
    assert call_cost(None, 5, reported_usd=None, price=(1.0, 1.0), params=100) == Cost()
    assert call_cost(None, None, reported_usd=None, price=(1.0, 1.0), params=None) == Cost()


def test_nothing_known_is_unknown():
    assert call_cost(10, 10, reported_usd=None, price=None, params=None) == Cost()


def test_model_usage_aggregates_calls_failures_tokens_and_usd():
    usage = ModelUsage()
    usage.add(100, 10, Cost(usd=0.25))
    usage.add(None, None, Cost(), ok=False)
    usage.add(50, 5, Cost(usd=0.5), calls=2)
    assert (usage.calls, usage.failed_calls) == (4, 1)
    assert (usage.tokens_in, usage.tokens_out) == (150, 15)
    assert usage.cost_usd == pytest.approx(0.75)
    assert usage.flops_estimate is None
    assert usage.cost_kind == "usd"
    assert usage.to_dict() == {"calls": 4, "failed_calls": 1, "tokens_in": 150, "tokens_out": 15,
                               "cost_usd": pytest.approx(0.75), "flops_estimate": None,
                               "cost_kind": "usd"}


def test_cost_kind_is_flops_estimate_then_unknown():
    usage = ModelUsage()
    assert usage.cost_kind == "unknown"
    usage.add(10, 10, Cost())
    assert usage.cost_kind == "unknown" and usage.cost_usd is None
    usage.add(10, 10, Cost(flops=1e9))
    usage.add(10, 10, Cost(flops=2e9))
    assert usage.cost_kind == "flops_estimate"
    assert usage.flops_estimate == pytest.approx(3e9)
    assert usage.cost_usd is None  # FLOPs are never mixed into USD


def test_ledger_keeps_models_apart_and_totals_usd():
    ledger = Ledger()
    ledger.add("large", 100, 20, Cost(usd=0.1))
    ledger.add("small", 100, 20, Cost(flops=4e6))
    ledger.add("large", 50, 10, Cost(usd=0.2), calls=3)
    ledger.add("small", 1, 1, Cost(), ok=False)
    usage = ledger.per_model()
    assert set(usage) == {"large", "small"}
    large = usage["large"]
    assert (large.calls, large.tokens_in, large.tokens_out) == (4, 150, 30)
    assert usage["large"].cost_usd == pytest.approx(0.3)
    assert (usage["small"].calls, usage["small"].failed_calls) == (2, 1)
    assert usage["small"].cost_kind == "flops_estimate"
    assert ledger.total_usd() == pytest.approx(0.3)  # FLOPs stay out of the USD total
    assert list(ledger.to_dict()) == ["large", "small"]
    assert ledger.to_dict()["small"]["cost_kind"] == "flops_estimate"


def test_ledger_with_no_usd_has_no_usd_total():
    ledger = Ledger()
    ledger.add("small", 1, 1, Cost(flops=1.0))
    assert ledger.total_usd() is None


def _model(**kwargs) -> Model:
    return Model("scripted", f"acct-{uuid.uuid4().hex}", reply="ok", **kwargs)


def test_model_cost_uses_its_price():
    model = _model(price=(2.0, 8.0), params=10**9)
    cost = model.cost(GenResult(texts=["x"], tokens_in=1_000, tokens_out=250))
    assert cost == Cost(usd=pytest.approx((1_000 * 2.0 + 250 * 8.0) / 1e6))


def test_model_cost_uses_params_without_price():
    model = _model(params=500_000_000)
    cost = model.cost(GenResult(texts=["x"], tokens_in=12, tokens_out=8))
    assert cost == Cost(flops=2.0 * 500_000_000 * 20)


def test_model_cost_prefers_the_reported_cost():
    model = _model(price=(2.0, 8.0))
    assert model.cost(GenResult(texts=["x"], tokens_in=10, tokens_out=10, cost_usd=0.125)) \
        == Cost(usd=0.125)


def test_model_cost_falls_back_to_the_backends_parameter_count():
    from tandemlm.runtime import Backend, register_backend

    class Counted(Backend):
        name = "acct-counted"

        def generate(self, requests):
            return [GenResult(texts=["x"]) for _ in requests]

        def num_parameters(self):
            return 1_000

    register_backend("acct-counted", Counted)
    model = Model("acct-counted", f"m-{uuid.uuid4().hex}")
    assert model.cost(GenResult(texts=["x"], tokens_in=3, tokens_out=2)) == Cost(flops=10_000.0)
    # An explicit params= overrides the backend's count.
    explicit = Model("acct-counted", f"m-{uuid.uuid4().hex}", params=10)
    assert explicit.cost(GenResult(texts=["x"], tokens_in=3, tokens_out=2)) == Cost(flops=100.0)
