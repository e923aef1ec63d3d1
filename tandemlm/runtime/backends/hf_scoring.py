"""Log-probabilities of given continuations on the `hf` backend (`HFBackend.logprobs`).

Context and continuation are tokenized separately and their ids concatenated, as
lm-evaluation-harness does: tokenizing them jointly would let BPE merge tokens across the
boundary (" Yes" after "Answer:" might become one token with the colon, or split differently),
so the scored tokens would not be the continuation's own tokens. Sequences are sorted by length
and scored `batch_size` at a time; a sequence that fails is retried alone, so it fails alone.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from tandemlm.runtime.backends.hf_prompt import (encode_continuation, encode_prompt, left_pad,
                                                 render_prompt)
from tandemlm.runtime.types import ScoreRequest, ScoreResult


def score(backend: Any, requests: list[ScoreRequest]) -> list[ScoreResult]:
    """One result per request (the backend's model loaded, its lock held)."""
    results = [ScoreResult(logprobs=[0.0] * len(r.continuations),
                           token_logprobs=[[] for _ in r.continuations], tokens_in=0)
               for r in requests]
    sequences = []  # (request index, continuation index, ids, continuation length)
    for i, request in enumerate(requests):
        try:
            sequences += _sequences(backend, i, request)
        except Exception as exc:
            results[i].error = f"{type(exc).__name__}: {exc}"
    sequences = [s for s in sequences if results[s[0]].error is None and s[3] > 0]
    sequences.sort(key=lambda s: len(s[2]))
    for start in range(0, len(sequences), backend.batch_size):
        _isolated(backend, sequences[start:start + backend.batch_size], results)
    for result in results:
        if result.error is not None:
            result.logprobs, result.token_logprobs = [], []
    return results


def _sequences(backend: Any, i: int, request: ScoreRequest) -> list[tuple[int, int, list[int], int]]:
    context = encode_prompt(backend._tokenizer,
                            render_prompt(backend._tokenizer, request.messages, request.prompt))
    if not context:
        raise ValueError("the prompt encodes to no tokens; a continuation needs a context")
    limit, out = backend._max_positions(), []
    for j, continuation in enumerate(request.continuations):
        cont = encode_continuation(backend._tokenizer, continuation)
        if limit is not None and len(context) + len(cont) > limit:
            raise ValueError(f"prompt + continuation {j} is {len(context) + len(cont)} tokens, "
                             f"more than the model's {limit} positions; shorten the prompt")
        out.append((i, j, context + cont, len(cont)))
    return out


def _isolated(backend: Any, batch: list, results: list[ScoreResult]) -> None:
    try:
        scored = _microbatch(backend, batch)
    except Exception as exc:
        if len(batch) > 1:
            for item in batch:
                _isolated(backend, [item], results)
        else:
            results[batch[0][0]].error = f"{type(exc).__name__}: {exc}"
        return
    for (i, j, ids, _), (values, latency) in zip(batch, scored, strict=True):
        results[i].token_logprobs[j] = values
        results[i].logprobs[j] = float(sum(values))
        results[i].tokens_in = (results[i].tokens_in or 0) + len(ids)
        results[i].latency_s += latency


def _microbatch(backend: Any, batch: list) -> list[tuple[list[float], float]]:
    model = backend._model
    device = next(model.parameters()).device
    input_ids, mask = left_pad([ids for _, _, ids, _ in batch],
                                model.generation_config.pad_token_id, device)
    # Left padding shifts each row's tokens right, so positions come from the mask, not the
    # column index; otherwise a padded row would see different position embeddings.
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    # Rows end together, so only the last columns matter: asking the model for those logits
    # alone avoids a (batch x length x vocabulary) tensor, gigabytes for long prompts.
    keep = max(n for *_, n in batch) + 1
    extra = {"logits_to_keep": keep} if backend._keeps_logits else {}
    started = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                       **extra).logits[:, -keep:, :]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
    latency = time.perf_counter() - started
    out = []
    for row, (_, _, ids, n) in enumerate(batch):
        # logits column c predicts the token after it: columns keep-n-1 .. keep-2
        targets = torch.tensor(ids[-n:], device=device)
        picked = logprobs[row, keep - n - 1:keep - 1].gather(-1, targets[:, None])[:, 0]
        out.append((picked.tolist(), latency))
    return out
