"""`fit()`, the one training loop: it learns, the same seed gives the same weights, every batch
is visited once per epoch in a fresh seeded order, accumulation and clipping do what they say,
and the caller's random state and module mode are left alone."""

from __future__ import annotations

import pytest
import torch

from tandemlm.runtime import ConfigError
from tandemlm.runtime.train import count_steps, fit, to_device


def _data(seed: int = 0, n: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of 8 points labelled by which side of a fixed plane they lie on."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 1.5]) > 0).float()
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, n, 8)]


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                               torch.nn.Linear(16, 1))


def bce(model, batch):
    x, y = batch
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)


def test_fit_learns_and_the_same_seed_gives_the_same_weights():
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model = _model()
        result = fit(model, _data(), loss_fn=bce, epochs=30, lr=1e-2, seed=seed)
        runs[name] = (model.state_dict(), result)
    (a, ra), (b, _), (c, _) = runs["a"], runs["b"], runs["c"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # batch order and dropout follow the seed
    assert ra.final_loss < ra.first_loss / 4 and len(ra.losses) == 30 * 8
    assert ra.steps_per_epoch == 8 and ra.seconds > 0


def test_every_batch_once_per_epoch_in_a_fresh_seeded_order():
    seen: list[int] = []

    def record(model, batch):
        seen.append(int(batch["id"]))
        return (model(batch["x"]) ** 2).mean()

    batches = [{"id": torch.tensor(i), "x": torch.ones(1, 4) * i} for i in range(6)]
    fit(torch.nn.Linear(4, 1), batches, loss_fn=record, epochs=3, lr=1e-3, seed=0)
    epochs = [seen[i:i + 6] for i in range(0, 18, 6)]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # reshuffled every epoch
    again = list(seen)
    seen.clear()
    fit(torch.nn.Linear(4, 1), batches, loss_fn=record, epochs=3, lr=1e-3, seed=0)
    assert seen == again


def test_accumulated_batches_equal_one_batch_of_their_rows():
    """Two batches of one row, accumulated, take the same step as one batch of both rows."""
    x, y = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 2.0, 0.0]]), torch.tensor([1.0, 0.0])
    mse = lambda model, batch: ((model(batch[0])[:, 0] - batch[1]) ** 2).mean()
    split, joint = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    joint.load_state_dict(split.state_dict())
    r1 = fit(split, [(x[:1], y[:1]), (x[1:], y[1:])], loss_fn=mse, epochs=1, lr=0.1, seed=0,
             accumulate=2)
    r2 = fit(joint, [(x, y)], loss_fn=mse, epochs=1, lr=0.1, seed=0)
    assert len(r1.losses) == len(r2.losses) == 1 == count_steps(2, 1, accumulate=2)
    assert r1.losses[0] == pytest.approx(r2.losses[0])
    assert torch.allclose(split.weight, joint.weight) and torch.allclose(split.bias, joint.bias)
    assert count_steps(5, 3, accumulate=2) == 9


def test_clip_bounds_the_gradient_norm_of_every_step(monkeypatch):
    norms: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):  # records, then runs the real optimizer step
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    scaled = lambda model, batch: 1000 * bce(model, batch)
    fit(_model(), _data(), loss_fn=scaled, epochs=1, lr=1e-3, seed=0)
    assert max(norms) > 1.0
    norms.clear()
    fit(_model(), _data(), loss_fn=scaled, epochs=1, lr=1e-3, seed=0, clip=0.5)
    assert len(norms) == 8 and max(norms) <= 0.5 + 1e-5


def test_only_the_given_params_train_and_the_caller_state_is_left_alone():
    model = _model()
    first, last = model[0], model[3]
    frozen = first.weight.detach().clone()
    state = torch.get_rng_state()
    fit(model, _data(), loss_fn=bce, epochs=2, lr=1e-2, seed=0, params=last.parameters())
    assert torch.equal(first.weight, frozen)
    assert torch.equal(torch.get_rng_state(), state)  # seeding dropout did not reseed the caller
    assert not model.training


def test_batches_are_moved_to_the_device_of_the_model():
    batch = {"x": torch.ones(2, 4), "pair": (torch.zeros(2), [torch.ones(1)]), "tag": "keep"}
    moved = to_device(batch, torch.device("meta"))
    assert moved["x"].device.type == "meta" and moved["pair"][1][0].device.type == "meta"
    assert isinstance(moved["pair"], tuple) and moved["tag"] == "keep"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_on_cuda_trains_there_from_cpu_batches():
    model = _model().cuda()
    seen = []

    def loss(model, batch):
        seen.append(batch[0].device.type)
        return bce(model, batch)

    result = fit(model, _data(), loss_fn=loss, epochs=20, lr=1e-2, seed=0)
    assert set(seen) == {"cuda"} and next(model.parameters()).is_cuda
    assert result.final_loss < result.first_loss / 4


@pytest.mark.parametrize("kwargs, message", [
    ({"batches": []}, "no training batches"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"accumulate": 0}, "accumulate must be"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"clip": -1.0}, "clip must be > 0"),
])
def test_bad_options_are_config_errors(kwargs, message):
    options = {"batches": _data(), "epochs": 1, "lr": 1e-3, **kwargs}
    with pytest.raises(ConfigError, match=message):
        fit(_model(), options.pop("batches"), loss_fn=bce, seed=0, **options)


def test_no_trainable_parameter_or_a_diverging_loss_is_a_config_error():
    frozen = _model().requires_grad_(False)
    with pytest.raises(ConfigError, match="no parameter that requires a gradient"):
        fit(frozen, _data(), loss_fn=bce, epochs=1, lr=1e-3, seed=0)
    nan = lambda model, batch: bce(model, batch) * float("nan")
    with pytest.raises(ConfigError, match="loss became nan; lower the learning rate"):
        fit(_model(), _data(), loss_fn=nan, epochs=1, lr=1e-3, seed=0)
