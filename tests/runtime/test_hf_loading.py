"""Models loading in several threads at once. transformers' `from_pretrained` swaps
`PreTrainedModel.tie_weights` for a no-op while it loads and puts back what it found; two loads in
two threads used to leave the no-op there for the rest of the process, and every later model with
tied embeddings (SmolLM2, GPT-2) then loaded with an empty output layer ("Cannot copy out of meta
tensor"). Every load in tandemlm holds one lock."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tandemlm.runtime.backends.hf import HFBackend
from tandemlm.runtime.backends.hf_classifier import HFClassifierBackend
from tandemlm.tiny import build_tiny_lm


def test_loads_in_many_threads_leave_weight_tying_intact(tmp_path):
    from transformers import PreTrainedModel

    path = build_tiny_lm(tmp_path / "gpt2", arch="gpt2")  # GPT-2 ties its output layer to wte
    original = PreTrainedModel.tie_weights

    def load(i: int):
        backend = (HFBackend if i % 2 else HFClassifierBackend)(str(path), device="cpu",
                                                                 dtype="float32")
        return backend._load()[0]

    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(load, range(16)))
    assert PreTrainedModel.tie_weights is original
    for model in models[1::2]:  # the causal LMs
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    fresh = load(1)
    assert fresh.lm_head.weight.device.type == "cpu"
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()
