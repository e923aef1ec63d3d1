"""LoRA supervised fine-tuning for the `hf` backend: (request, completion) pairs in, a PEFT
adapter directory (`adapter_config.json` + `adapter_model.safetensors`) out.

    result = backend.train_lora([(request, "[[ ## answer ## ]]\\nplum\\n\\n[[ ## completed ## ]]")],
                                "out/adapters/01-solve", lora=LoraOptions(r=8), epochs=3)
    Model("hf", base_path, adapter="out/adapters/01-solve")   # serves base + adapter

Each example is tokenized exactly as the backend prompts at run time: the request rendered by
`render_prompt` (the chat template) and encoded by `encode_prompt` (one BOS), then the
completion's tokens, encoded on their own like a scored continuation, and the EOS token the
model must learn to stop with. Only completion tokens carry a loss; prompt positions are -100.
"""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tandemlm.runtime.backends.hf_common import LOAD_LOCK, placement
from tandemlm.runtime.backends.hf_prompt import encode_continuation, encode_prompt, render_prompt
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.train import FitResult, fit
from tandemlm.runtime.types import GenRequest, LoraOptions
from tandemlm.runtime.verified_files import verified_source

if TYPE_CHECKING:
    from tandemlm.runtime.backends.hf import HFBackend

IGNORE = -100  # the label torch's cross-entropy skips


def encode_example(tokenizer: Any, request: GenRequest, completion: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one training example; labels are -100 on the prompt."""
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token, so a fine-tuned model could not learn "
                          "to stop; set tokenizer.eos_token in the checkpoint")
    prompt = encode_prompt(tokenizer, render_prompt(tokenizer, request.messages, request.prompt))
    answer = encode_continuation(tokenizer, completion) + [tokenizer.eos_token_id]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def sft_batches(rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                seed: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of (ids, labels) rows; membership is a seeded shuffle (`fit` then
    visits the batches in a fresh seeded order every epoch)."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = []
    for start in range(0, len(order), batch_size):
        picked = [rows[i] for i in order[start:start + batch_size]]
        width = max(len(ids) for ids, _ in picked)
        input_ids = torch.full((len(picked), width), pad_id, dtype=torch.long)
        labels = torch.full((len(picked), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(picked), width), dtype=torch.long)
        for row, (ids, targets) in enumerate(picked):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            labels[row, :len(ids)] = torch.tensor(targets)
            mask[row, :len(ids)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return batches


def causal_lm_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the batch's labelled (completion) tokens."""
    return model(**batch).loss


def _check_lengths(rows: list[tuple[list[int], list[int]]], limit: int | None) -> None:
    if limit is None:
        return
    longest = max(range(len(rows)), key=lambda i: len(rows[i][0]))
    if len(rows[longest][0]) > limit:
        raise ConfigError(f"training example {longest} is {len(rows[longest][0])} tokens (prompt + "
                          f"completion), more than the model's {limit} positions; shorten the "
                          f"node's prompt (fewer demos, shorter instructions)")


@contextmanager
def _peft() -> Iterator[Any]:
    """The `peft` module, with the noise it makes about library versions silenced: peft reads
    transformers' deprecated `is_gradient_checkpointing` while wrapping or loading a model."""
    try:
        import peft
    except ImportError as exc:
        raise ConfigError("LoRA adapters need peft: pip install 'tandemlm[train]' (or pip install "
                          "peft)") from exc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield peft


def _peft_model(model: Any, lora: LoraOptions, adapter: str | None, seed: int) -> Any:
    """`model` wrapped with a trainable LoRA adapter: the existing `adapter`, trained further,
    or a new one whose initialisation is seeded."""
    with _peft() as peft:
        if adapter is not None:
            try:
                return peft.PeftModel.from_pretrained(model, adapter, is_trainable=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"could not load adapter '{adapter}' to train it further: "
                                  f"{exc}") from exc
        modules = (lora.target_modules if isinstance(lora.target_modules, str)
                   else list(lora.target_modules))
        config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                 target_modules=modules, task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA's A matrices start random: seed them
            try:
                return peft.get_peft_model(model, config)
            except ValueError as exc:  # e.g. target modules the model lacks
                raise ConfigError(f"cannot attach LoRA (target_modules={modules!r}) to this model: "
                                  f"{exc}") from exc


def _sort_target_modules(path: Path) -> None:
    """peft writes `target_modules` from a set, in an order that changes from process to
    process; sorted, the same training writes the same bytes, so the adapter's checksum and
    the model's fingerprint (the call cache's key) are reproducible."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def train_lora(backend: HFBackend, examples: Sequence[tuple[GenRequest, str]], out_dir: str | Path, *,
               lora: LoraOptions | None = None, epochs: int = 3, lr: float = 2e-4,
               batch_size: int = 8, seed: int = 0, accumulate: int = 1, clip: float | None = 1.0,
               progress: Callable[[int], None] | None = None) -> FitResult:
    """Train a LoRA adapter for `backend`'s model on `examples` and save it to `out_dir`.

    The weights are a fresh copy (the model the backend serves stays as it is), on the
    backend's device: float32 on CPU; on CUDA the backend's dtype, the adapter in float32. A
    backend serving an adapter trains that adapter further rather than a new one, so a second
    fine-tuning refines the first (the adapter keeps its own rank and target modules).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not examples:
        raise ConfigError("train_lora needs at least one (request, completion) example")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    source = verified_source(backend._source())  # a checked artifact's files: the checked bytes
    device, dtype = placement(backend.device_option, backend.dtype_option)
    dtype = "float32" if device == "cpu" else dtype
    remote = backend.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=remote)
    rows = [encode_example(tokenizer, request, completion) for request, completion in examples]
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype),
                                                     trust_remote_code=remote)
    _check_lengths(rows, getattr(model.config, "max_position_embeddings", None))
    adapter = verified_source(backend.adapter) if backend.adapter is not None else None
    model = _peft_model(model.to(device), lora or LoraOptions(), adapter, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        result = fit(model, sft_batches(rows, batch_size, pad, seed), loss_fn=causal_lm_loss,
                     epochs=epochs, lr=lr, seed=seed, progress=progress, accumulate=accumulate,
                     clip=clip)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # Only the adapter trained: never copy the base's embedding / output weights into it
        # (peft's default does when lm_head is a target).
        model.save_pretrained(str(out), safe_serialization=True, save_embedding_layers=False)
        _sort_target_modules(out / "adapter_config.json")
    finally:
        del model  # the training copy: free its memory now, not at the next collection
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return result


def load_adapter(model: Any, adapter: str, model_id: str) -> Any:
    """`model` wrapped with the PEFT adapter at `adapter` (what the `hf` backend serves)."""
    try:
        with _peft() as peft:
            return peft.PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load adapter '{adapter}' onto model '{model_id}': {exc}") from exc
