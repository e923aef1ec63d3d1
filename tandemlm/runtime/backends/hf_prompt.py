"""Text <-> token ids for the `hf` backend: rendering and encoding prompts, padding batches,
decoding outputs and watching for stop strings.

A request carries either chat `messages` or a raw `prompt`:

* messages + a tokenizer with a chat template -> `apply_chat_template(..., add_generation_prompt=True)`
* messages + no chat template (base models) -> plain text, one block per message, blank lines
  between, ending with an open assistant turn::

      System: You are terse.

      User: What is 2+2?

      Assistant:

* a raw prompt -> used exactly as given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

_PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_plain(messages: Sequence[dict[str, str]]) -> str:
    """Render chat messages for a model without a chat template (see the module docstring)."""
    blocks = []
    for message in messages:
        role = message.get("role", "user")
        blocks.append(f"{_PLAIN_ROLES.get(role, role.capitalize())}: {message.get('content', '')}")
    blocks.append("Assistant:")
    return "\n\n".join(blocks)


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]] | None,
                  prompt: str | None) -> str:
    """The exact text the model sees for a request's `messages` or raw `prompt`."""
    if messages is None:
        return prompt or ""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                             add_generation_prompt=True)
    return render_plain(messages)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt, with exactly one BOS where the tokenizer uses one.

    Chat templates of many models (Llama 3, Gemma, Mistral) write the BOS token into the text,
    and their tokenizers also prepend a BOS when encoding with special tokens: the model would
    then see two BOS tokens, a sequence it never saw in training, which shifts its outputs. So
    when the text already starts with the BOS token, encode without adding special tokens.
    """
    return encode_prompts(tokenizer, [text])[0]


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """`encode_prompt` for many texts, in one batched tokenizer call per BOS case (a fast
    tokenizer encodes a batch in parallel, which matters at hundreds of prompts per stage)."""
    bos = getattr(tokenizer, "bos_token", None)
    has_bos = [bool(bos) and text.startswith(bos) for text in texts]
    ids: list[list[int]] = [[] for _ in texts]
    for flag in (True, False):
        picked = [i for i, b in enumerate(has_bos) if b == flag]
        if picked:
            encoded = tokenizer([texts[i] for i in picked], add_special_tokens=not flag)["input_ids"]
            for i, row in zip(picked, encoded, strict=True):
                ids[i] = list(row)
    return ids


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a continuation scored after a prompt: never with special tokens (no BOS)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def decode_continuation(tokenizer: Any, prefix_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """Decode generated ids as a continuation of `prefix_ids` (the prompt's last tokens).

    Decoding new ids alone loses text that depends on what precedes them: SentencePiece
    tokenizers (Llama 2, Mistral) drop the leading space of the first token ("▁Paris" ->
    "Paris" instead of " Paris"). Decoding prefix + new and cutting the prefix's text off keeps
    it, as vLLM's incremental detokenizer does.
    """
    if not new_ids:
        return ""
    prefix = tokenizer.decode(list(prefix_ids), skip_special_tokens=True)
    full = tokenizer.decode(list(prefix_ids) + list(new_ids), skip_special_tokens=True)
    if prefix_ids and full.startswith(prefix):
        return full[len(prefix):]
    return tokenizer.decode(list(new_ids), skip_special_tokens=True)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def left_pad(rows: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into (input_ids, attention_mask) on `device`: rows end together."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


class StopOnStrings(StoppingCriteria):
    """Per-row stop: a row is done once its generated text contains a stop string; the others go
    on. Records, per row, how many tokens had been generated then (the last one completes the
    stop string). Text is decoded without special tokens: stops match what the caller will see."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_width: int, rows: int) -> None:
        self.tokenizer, self.stops, self.prompt_width = tokenizer, stops, prompt_width
        # Checked after every token, so a stop string always ends in the last few tokens; a
        # window of 4 tokens per character (+ slack) covers multi-token bytes and decoder quirks.
        self.window = 4 * max(len(s) for s in stops) + 8
        self.stopped_at: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_width
        tails = input_ids[:, max(self.prompt_width, input_ids.shape[1] - self.window):].tolist()
        for row, tail in enumerate(tails):
            if self.stopped_at[row] is None:
                text = self.tokenizer.decode(tail, skip_special_tokens=True)
                if any(stop in text for stop in self.stops):
                    self.stopped_at[row] = generated
        return torch.tensor([s is not None for s in self.stopped_at], device=input_ids.device)


class StepClock(StoppingCriteria):
    """Never stops a row: notes when each generated token is ready (`times[k]`: token k+1 of
    every row) so a row's latency is the time its own answer took, not the whole microbatch's,
    and passes the step to `on_step(done)` (a progress report)."""

    def __init__(self, on_step: Any = None) -> None:
        self.times: list[float] = []
        self.on_step = on_step

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        self.times.append(time.perf_counter())
        if self.on_step is not None:
            self.on_step(len(self.times))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def ready_at(self, steps: int, default: float) -> float:
        """When a row that generated `steps` tokens was done (`default`: if it is not known)."""
        return self.times[min(steps, len(self.times)) - 1] if steps > 0 and self.times else default
