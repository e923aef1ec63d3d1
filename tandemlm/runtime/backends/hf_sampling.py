"""Seeded sampling on the `hf` backend, per sequence: a row samples the same text whatever else
shares its batch (the executor's contract: one example or a thousand give the same outputs)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import torch
from transformers import LogitsProcessor


class RowSampler(LogitsProcessor):
    """Sample every row from softmax(logits / T) restricted to the top-p nucleus, each row with its
    own seeded generator, by the Gumbel-max trick: argmax(logits + Gumbel noise) is an exact sample,
    so `generate` runs in greedy mode and its argmax does the sampling. HF's own sampler draws all
    rows from one generator, which would make a row's text depend on its batch neighbours."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: Any) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, order = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            # drop a token when the tokens ranked above it already hold top_p of the mass
            drop = (probs.cumsum(dim=-1) - probs) > self.top_p
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device)
                               for g in self.generators])
        return scores - torch.log(-torch.log(uniform))


def row_seed(seed: int | None, sample: int) -> int:
    """Seed of sample `sample` of a request: fixed for a seeded request, fresh otherwise."""
    if seed is None:
        return random.SystemRandom().getrandbits(63)
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample}".encode()).digest()[:8], "big") >> 1
