"""Write a tiny Llama checkpoint folder (e.g. from `tandemlm.tiny.build_tiny_lm`) as a GGUF file,
laid out as llama.cpp's converter lays it out, so the `hf` backend's GGUF path can be tested on a
file of under a megabyte. Weights stay float32 (GGML type F32): reading the file back must give
the folder's model exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

_LAYER_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}
_NORMAL, _CONTROL = 1, 3  # llama.cpp token types


def write_llama_gguf(model_dir: Path, out: Path) -> Path:
    """Write the Llama model and byte-level BPE tokenizer saved in `model_dir` to `out`."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    config = model.config
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    _add_tokenizer(writer, tokenizer)
    for name, tensor in model.state_dict().items():
        writer.add_tensor(*_gguf_tensor(name, tensor.numpy(), config))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tokenizer(writer, tokenizer) -> None:
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = {**data["model"]["vocab"], **{t["content"]: t["id"] for t in data["added_tokens"]}}
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in data["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([_CONTROL if t in special else _NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(True)
    writer.add_chat_template(tokenizer.chat_template)


def _gguf_tensor(name: str, weights: np.ndarray, config) -> tuple[str, np.ndarray]:
    if name in _TOP:
        return _TOP[name], weights
    _, _, layer, *rest = name.split(".")  # model.layers.<i>.<part>.weight
    part = ".".join(rest[:-1])
    # llama.cpp stores q and k rows in its own rotary order; transformers permutes them back
    if part == "self_attn.q_proj":
        weights = _permute(weights, config.num_attention_heads)
    elif part == "self_attn.k_proj":
        weights = _permute(weights, config.num_key_value_heads)
    return f"blk.{layer}.{_LAYER_PARTS[part]}.weight", np.ascontiguousarray(weights)


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))
