"""Packed prefill (`hf_prefill`) on real tiny Llama / GPT-2 checkpoints built here: the cache it
builds gives the logits of the padded prefill, and the backend's outputs with it equal the
outputs without it (greedy, seeded sampling, grammar-constrained)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

from tandemlm import LMNode
from tandemlm.compose.grammar import output_constraint
from tandemlm.runtime.backends import hf_prefill
from tandemlm.runtime.backends.hf import HFBackend
from tandemlm.runtime.backends.hf_prefill import forward_args, packed_cache, plan
from tandemlm.runtime.backends.hf_prompt import left_pad
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.types import GenRequest
from tandemlm.tiny import build_tiny_lm, default_corpus, train_tiny_lm

SYSTEM = "You answer in one word. Read the question with care and think of the verdict first."
QUESTIONS = ["The cat", "What is 3 plus 4?", "Claim: the teacher reads a book today.",
             "A robot builds the map with care. The river runs north.", "The cat", "Is it blue?"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    corpus = default_corpus()
    return {arch: train_tiny_lm(build_tiny_lm(tmp_path_factory.mktemp(arch), arch=arch, seed=0),
                                corpus, steps=150)
            for arch in ("llama", "gpt2")}


def _messages(question: str) -> tuple[dict, ...]:
    return ({"role": "system", "content": SYSTEM}, {"role": "user", "content": question})


def _prompt_sets(tokenizer) -> dict[str, list[list[int]]]:
    shared = [tokenizer.apply_chat_template(list(_messages(q)), add_generation_prompt=True)
              for q in QUESTIONS]
    shared = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in shared]
    prefix = shared[0][:hf_prefill.common_prefix(shared)]
    return {
        "shared prefix, a repeated prompt": shared,
        "a prompt one token past the prefix": shared + [prefix + shared[1][len(prefix):][:1]],
        "no common prefix, a one-token prompt": [p[3:] for p in shared] + [[shared[0][5]]],
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_packed_cache_gives_the_padded_prefills_logits(models, arch):
    model = AutoModelForCausalLM.from_pretrained(models[arch], dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    cache_arg, _ = forward_args(model)
    for case, prompts in _prompt_sets(AutoTokenizer.from_pretrained(models[arch])).items():
        ids, mask = left_pad(prompts, 0, "cpu")
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            padded = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            cache = packed_cache(model, prompts, "cpu")
            assert cache is not None, case
            assert cache.get_seq_length() == ids.shape[1] - 1
            packed = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:],
                           use_cache=True, **{cache_arg: cache}).logits[:, -1]
        assert torch.allclose(packed, padded, atol=1e-4), (case, (packed - padded).abs().max())
        assert padded.std() > 0.1  # real logits, not a constant both sides could share


def _node_requests() -> list[GenRequest]:
    """A node's ChatAdapter requests under its output grammar (a Literal field)."""
    node = LMNode("question -> verdict: Literal['yes', 'no', 'maybe']", model="m", name="v",
                  max_tokens=16)
    constraint = output_constraint(node.adapter, node.grammar_signature())
    assert constraint is not None
    return node.requests([{"question": q} for q in QUESTIONS], strict=True, constraint=constraint)


def test_outputs_with_packed_prefill_equal_the_padded_ones(models, monkeypatch):
    built = []
    original = hf_prefill.packed_cache

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs) is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr("tandemlm.runtime.backends.hf.packed_cache", spy)
    free = [GenRequest(messages=_messages(q), max_new_tokens=12) for q in QUESTIONS]
    sampled = [GenRequest(messages=_messages(q), max_new_tokens=12, temperature=1.0, n=2, seed=i)
               for i, q in enumerate(QUESTIONS)]
    outputs = {}
    for prefill in ("packed", "padded"):
        backend = HFBackend(str(models["llama"]), device="cpu", batch_size=16, prefill=prefill)
        outputs[prefill] = [[r.texts for r in backend.generate(requests)]
                            for requests in (free, sampled, _node_requests())]
        backend.close()
    assert built and all(built)  # every microbatch of the packed side used the packed cache
    assert outputs["packed"] == outputs["padded"]
    greedy, _, constrained = outputs["packed"]
    assert len({t[0] for t in greedy}) > 2  # outputs differ by question: the check has teeth
    assert all("[[ ## verdict ## ]]" in t[0] for t in constrained)


def test_sliding_window_models_keep_generates_own_prefill():
    config = MistralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                           sliding_window=8)
    model = MistralForCausalLM(config).eval()
    assert forward_args(model) is None
    assert packed_cache(model, [[1, 2, 3, 4], [1, 2, 5]], "cpu") is None


def test_plan_packs_only_when_it_saves_work():
    same_length = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]  # nothing shared, nothing padded
    assert plan(same_length, budget=1024) is None
    prompts = [[9, 9, 9, 9, 1], [9, 9, 9, 9, 2, 3, 4, 5, 6, 7], [9, 9, 9, 9, 1]]
    prefix, groups = plan(prompts, budget=1024)
    assert prefix == 4
    assert sorted(row for group in groups for row in group) == [0, 1]  # the repeat runs once
    prefix, groups = plan(prompts, budget=5)
    assert groups == [[0], [1]]  # the budget splits the rows


def test_prefill_option_is_checked(models):
    with pytest.raises(ConfigError, match="prefill must be one of 'packed', 'padded'"):
        HFBackend(str(models["llama"]), prefill="chunked")
