"""Packed prefill for the `hf` backend: a batch's shared prompt prefix is computed once, and no
prompt is padded to the longest one.

`model.generate` on a left-padded batch runs every row at the width of the longest prompt, and
runs the prompt tokens all rows share (a node's system message and instructions) once per row.
On a CPU, where the prompt's forward pass is most of a short generation's time, that is most of
the work: SmolLM2's 32 MMLU prompts of one node hold 2,124 tokens, 27 of each the same, padded
to 3,712. `packed_cache` builds the KV cache `generate` would have built itself for all but the
last token of each prompt, from

1. one forward pass of the common prefix (batch 1), and
2. forward passes of each prompt's remaining tokens after that prefix, rows sorted by length and
   grouped up to a token budget (right-padded within a group, which a causal model never reads),

then lays each row's keys and values out left-padded, as `generate`'s own prefill would have.
`generate` then starts from that cache (it runs only the last prompt token) and decodes as
before. Positions follow the attention mask in both, so the outputs are those of the padded
prefill up to float rounding.

Used only where it is exact and saves work: models whose cache is a plain full-attention
`DynamicCache` (sliding-window and linear-attention layers keep `generate`'s own prefill) and
batches where it skips at least a tenth of the padded prefill's tokens.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

# Tokens (rows x padded width) per forward pass of the remaining prompt tokens: on a CPU, larger
# passes gain nothing and waste more on padding; a GPU wants wide passes.
GROUP_TOKENS = {"cpu": 1024, "cuda": 16384}
_MIN_SAVING = 0.1


def forward_args(model: Any) -> tuple[str, bool] | None:
    """(name of forward's KV-cache argument, whether it takes `logits_to_keep`) for a model that
    packed prefill can drive, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT
    if getattr(base.config, "is_encoder_decoder", False):
        return None
    params = inspect.signature(base.forward).parameters
    if "position_ids" not in params:
        return None
    cache_arg = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
    if cache_arg is None or not _plain_cache(base.config):
        return None
    return cache_arg, "logits_to_keep" in params


def _plain_cache(config: Any) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config the cache cannot read: leave prefill to generate
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving every prompt at least one token."""
    limit = min(len(p) for p in prompts) - 1
    first, length = prompts[0], 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length


def _groups(lengths: list[int], order: list[int], budget: int) -> list[list[int]]:
    """Rows (in `order`, shortest first) cut into runs whose padded size fits `budget`."""
    groups: list[list[int]] = []
    for row in order:
        if groups and (len(groups[-1]) + 1) * lengths[row] <= budget:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def plan(prompts: list[list[int]], budget: int) -> tuple[int, list[list[int]]] | None:
    """(common prefix length, groups of distinct rows) when packing saves enough, else None."""
    prefix = common_prefix(prompts)
    distinct: dict[tuple[int, ...], int] = {}
    for row, prompt in enumerate(prompts):
        distinct.setdefault(tuple(prompt), row)
    rest = [len(p) - 1 - prefix for p in prompts]
    order = sorted(distinct.values(), key=lambda row: rest[row])
    groups = _groups(rest, order, budget)
    # + one last token per row, which generate then runs
    packed = prefix + sum(len(g) * max(rest[row] for row in g) for g in groups) + len(prompts)
    padded = len(prompts) * max(len(p) for p in prompts)
    return (prefix, groups) if packed <= (1 - _MIN_SAVING) * padded else None


def packed_cache(model: Any, prompts: list[list[int]], device: Any) -> Any | None:
    """The KV cache of every prompt but its last token, left-padded to the longest prompt (minus
    one), for `generate(input_ids=<left-padded prompts>, cache=...)`; None where `generate`'s
    own prefill should run (see the module docstring)."""
    args = forward_args(model)
    budget = GROUP_TOKENS.get(torch.device(device).type, GROUP_TOKENS["cpu"])
    useful = args is not None and len(prompts) > 1 and max(map(len, prompts)) > 1
    layout = plan(prompts, budget) if useful else None
    if layout is None:
        return None
    from transformers import DynamicCache

    cache_arg, keeps_logits = args
    extra = {"logits_to_keep": 1} if keeps_logits else {}
    prefix, groups = layout
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    shared: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        if prefix:
            ids = torch.tensor([prompts[0][:prefix]], dtype=torch.long, device=device)
            out = model(input_ids=ids, use_cache=True, **{cache_arg: DynamicCache(config=config)}, **extra)
            shared = [(layer.keys, layer.values) for layer in getattr(out, cache_arg).layers]
        rows: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for group in groups:
            rows.update(_run_group(model, prompts, group, prefix, shared, config, cache_arg,
                                   extra, device))
        return _left_padded(prompts, rows, config)


def _run_group(model: Any, prompts: list[list[int]], group: list[int], prefix: int,
               shared: list[tuple[torch.Tensor, torch.Tensor]], config: Any, cache_arg: str,
               extra: dict, device: Any) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per-row (keys, values) of each layer over prompt[:-1], for the rows of one group."""
    from transformers import DynamicCache

    rest = [prompts[row][prefix:-1] for row in group]
    width = max(len(r) for r in rest)
    if width == 0:  # every row of the group is the prefix and its last token (or one token)
        return {row: [(keys[0], values[0]) for keys, values in shared] or None for row in group}
    ids = torch.zeros((len(group), width), dtype=torch.long)
    mask = torch.zeros((len(group), prefix + width), dtype=torch.long)
    mask[:, :prefix] = 1
    for i, tokens in enumerate(rest):
        if tokens:
            ids[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[i, prefix:prefix + len(tokens)] = 1
    cache = DynamicCache(config=config)
    for layer, (keys, values) in zip(cache.layers, shared, strict=False):
        layer.update(keys.expand(len(group), -1, -1, -1).contiguous(),
                     values.expand(len(group), -1, -1, -1).contiguous())
    positions = (prefix + torch.arange(width)).unsqueeze(0).expand(len(group), -1)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                position_ids=positions.to(device), use_cache=True, **{cache_arg: cache}, **extra)
    layers = getattr(out, cache_arg).layers
    return {row: [(layer.keys[i, :, :prefix + len(rest[i])], layer.values[i, :, :prefix + len(rest[i])])
                  for layer in layers] for i, row in enumerate(group)}


def _left_padded(prompts: list[list[int]],
                 rows: dict[int, list[tuple[torch.Tensor, torch.Tensor]] | None], config: Any) -> Any:
    """One cache of all rows, each row's entries at the right end (None: a one-token prompt,
    nothing cached); the zeros on the left are padding the attention mask hides."""
    from transformers import DynamicCache

    source = {tuple(prompts[row]): row for row in rows}  # a repeated prompt was computed once
    width = max(len(p) for p in prompts) - 1
    cache = DynamicCache(config=config)
    filled = [kv for kv in rows.values() if kv is not None]
    for index, layer in enumerate(cache.layers):
        sample = filled[0][index][0]
        heads, dim = sample.shape[0], sample.shape[-1]
        keys = sample.new_zeros((len(prompts), heads, width, dim))
        values = torch.zeros_like(keys)
        for row, prompt in enumerate(prompts):
            kv = rows[source[tuple(prompt)]]
            if kv is None:
                continue
            k, v = kv[index]
            keys[row, :, width - k.shape[1]:] = k
            values[row, :, width - v.shape[1]:] = v
        layer.update(keys, values)
    return cache
