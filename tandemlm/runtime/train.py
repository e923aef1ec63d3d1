"""The one training loop: every fine-tuning in tandemlm (LoRA SFT of a generative model, a
scorer's classification head) goes through `fit()`.

    result = fit(model, batches, loss_fn=lambda model, batch: model(**batch).loss,
                 epochs=3, lr=2e-4, seed=0)
    result.losses      # mean loss of every optimizer step, in order

What a caller brings: the model (already on its device), a list of batches (any nesting of
dicts, lists and tuples holding tensors; moved to the model's device here) and a `loss_fn`
returning a scalar. What `fit` owns: AdamW, the batch order (a seeded permutation every epoch),
the seed of dropout masks, gradient accumulation and clipping, train/eval mode. So the same
model, batches and seed give the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tandemlm.runtime.errors import ConfigError

if TYPE_CHECKING:  # torch loads when something trains, not when tandemlm is imported
    import torch

LossFn = Callable[[Any, Any], "torch.Tensor"]


@dataclass
class FitResult:
    """What `fit` did: the mean loss of each optimizer step, the steps per epoch, the time."""

    losses: list[float] = field(default_factory=list)
    steps_per_epoch: int = 0
    seconds: float = 0.0

    @property
    def final_loss(self) -> float | None:
        """Mean step loss over the last epoch (None when nothing trained)."""
        last = self.losses[-self.steps_per_epoch:] if self.steps_per_epoch else []
        return sum(last) / len(last) if last else None

    @property
    def first_loss(self) -> float | None:
        """Mean step loss over the first epoch."""
        first = self.losses[:self.steps_per_epoch] if self.steps_per_epoch else []
        return sum(first) / len(first) if first else None


def count_steps(n_batches: int, epochs: int, accumulate: int = 1) -> int:
    """Optimizer steps `fit` takes for `n_batches` (for sizing a progress bar beforehand)."""
    return epochs * math.ceil(n_batches / accumulate)


def fit(model: torch.nn.Module, batches: Sequence[Any], *, loss_fn: LossFn, epochs: int,
        lr: float, seed: int, params: Iterable[torch.nn.Parameter] | None = None,
        progress: Callable[[int], None] | None = None, accumulate: int = 1,
        clip: float | None = None, weight_decay: float = 0.0) -> FitResult:
    """Train `model` in place on `batches` and leave it in eval mode.

    Args:
        model: a torch module; it trains where its parameters are (CPU or CUDA).
        batches: the training batches; each epoch visits all of them in a seeded random order.
        loss_fn: `loss_fn(model, batch)` -> scalar loss tensor.
        epochs: passes over `batches`.
        lr: AdamW learning rate.
        seed: seeds the batch order and dropout: the same inputs give the same weights.
        params: the parameters to train (default: every parameter with `requires_grad`).
        progress: called with 1 after every optimizer step.
        accumulate: batches whose gradients add up to one optimizer step.
        clip: clip the gradient norm to this value before each step.
        weight_decay: AdamW weight decay.
    """
    import torch

    _check_options(batches, epochs, lr, accumulate, clip)
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    if not params:
        raise ConfigError("fit: the model has no parameter that requires a gradient; unfreeze "
                          "the weights to train (or pass params=...)")
    device = next(iter(params)).device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order = torch.Generator().manual_seed(seed)
    result = FitResult(steps_per_epoch=math.ceil(len(batches) / accumulate))
    started = time.perf_counter()
    # fork_rng: seeding dropout here must not change the caller's random state.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.train()
        try:
            for _ in range(epochs):
                visit = torch.randperm(len(batches), generator=order).tolist()
                for start in range(0, len(visit), accumulate):
                    group = visit[start:start + accumulate]
                    loss = _accumulate(model, [batches[b] for b in group], loss_fn, device)
                    if clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    result.losses.append(loss)
                    if progress is not None:
                        progress(1)
        finally:
            model.eval()
    result.seconds = time.perf_counter() - started
    return result


def _accumulate(model: torch.nn.Module, group: list[Any], loss_fn: LossFn,
                device: torch.device) -> float:
    """Backpropagate the mean loss of `group`'s batches; returns that mean."""
    import torch

    total = 0.0
    for batch in group:
        loss = loss_fn(model, to_device(batch, device))
        if not torch.isfinite(loss):
            raise ConfigError(f"fit: the loss became {loss.item()}; lower the learning rate or "
                              f"clip the gradient norm (clip=1.0)")
        (loss / len(group)).backward()
        total += float(loss.detach())
    return total / len(group)


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (through dicts, lists, tuples) on `device`."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):  # dicts and transformers BatchEncodings
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _check_options(batches: Sequence[Any], epochs: int, lr: float, accumulate: int,
                   clip: float | None) -> None:
    if not len(batches):
        raise ConfigError("fit: no training batches; there is nothing to learn from")
    for name, value in (("epochs", epochs), ("accumulate", accumulate)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"fit: {name} must be an integer >= 1, got {value!r}")
    if not lr > 0:
        raise ConfigError(f"fit: lr must be > 0, got {lr!r}")
    if clip is not None and not clip > 0:
        raise ConfigError(f"fit: clip must be > 0 (or None for no clipping), got {clip!r}")
