"""Next-token logits of a local transformers model, one token at a time, for token-level mixing.

`LogitSession` holds a batch of prefixes (left-padded) and the model's KV cache: `next_logits()`
returns the logits of the next token for every row, `append(tokens)` feeds one token per row.
Positions follow the attention mask, so left padding does not shift them, and each step runs the
model on one new token per row. The hf backend opens sessions (`next_token_logits`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from tandemlm.runtime.backends.hf_prompt import left_pad


class LogitSession:
    """Incremental next-token logits for a batch of token-id prefixes on one model."""

    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int) -> None:
        self.model, self.prompts = model, prompts
        self.device = next(model.parameters()).device
        self.pending, self.mask = left_pad(prompts, pad_id, self.device)
        self.past: Any = None
        # transformers 5 names the KV cache `cache` (`past_key_values` is its deprecated alias)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT
        params = inspect.signature(base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def next_logits(self) -> torch.Tensor:
        """Logits (float32, [rows, vocabulary]) of the token after each row's prefix."""
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -self.pending.shape[1]:]
        with torch.inference_mode():
            out = self.model(input_ids=self.pending, attention_mask=self.mask, position_ids=positions,
                             use_cache=True, **{self._cache_arg: self.past})
        self.past = getattr(out, self._cache_arg)
        return out.logits[:, -1, :].float()

    def append(self, tokens: torch.Tensor) -> None:
        """Feed one token per row (what the caller chose after `next_logits`)."""
        self.pending = tokens.to(self.device).view(-1, 1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.pending)], dim=1)
