"""The `vllm` backend's contract with vLLM's offline API, checked against a FAKE `vllm` package
(tests/runtime/fake_vllm: a labelled test double that rejects argument names and types vLLM
0.33.0 would not take). The real engine runs in benchmarks/gpu_smoke.py on a CUDA machine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tandemlm import Model
from tandemlm.runtime import ConfigError, GenRequest, ScoreRequest

FAKE = Path(__file__).parent / "fake_vllm"


@pytest.fixture
def vllm(monkeypatch):
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKE))
    import vllm as fake
    from tandemlm.runtime.backends import vllm_backend

    fake.CALLS.clear()
    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    monkeypatch.setattr(vllm_backend, "_ADAPTER_IDS", {})
    return fake


def _chat(text: str, **kw) -> GenRequest:
    return GenRequest(messages=({"role": "user", "content": text},), **kw)


def test_a_batch_is_one_chat_call_and_one_generate_call_with_per_request_sampling(vllm):
    model = Model("vllm", "org/small", gpu_memory_utilization=0.3, dtype="bfloat16")
    got = model.generate([_chat("hello there"), GenRequest(prompt="raw words"),
                          _chat("sample me", n=2, temperature=0.7, top_p=0.9, seed=3, stop=("\n",),
                                max_new_tokens=5)])
    assert [r.texts for r in got] == [["fake:<assistant> "], ["fake:raw words"], ["fake:<assistant> "] * 2]
    assert got[1].tokens_in == 2 and got[2].tokens_out == 6
    kinds = [name for name, _ in vllm.CALLS]
    assert kinds == ["LLM", "chat", "generate"]
    engine = vllm.CALLS[0][1]
    assert engine["model"] == "org/small" and engine["enable_lora"] is True
    assert engine["gpu_memory_utilization"] == 0.3 and engine["dtype"] == "bfloat16"
    sampled = vllm.CALLS[1][1]["params"][1]
    assert (sampled.n, sampled.temperature, sampled.top_p, sampled.seed, sampled.stop, sampled.max_tokens) \
        == (2, 0.7, 0.9, 3, ["\n"], 5)


def test_adapters_share_their_base_models_engine_as_lora_requests(vllm, tmp_path):
    a, b = tmp_path / "adapter-a", tmp_path / "adapter-b"
    for path in (a, b):
        path.mkdir()
        (path / "adapter_config.json").write_text("{}")
    base = Model("vllm", "org/small")
    node_a = Model("vllm", "org/small", adapter=str(a))
    node_b = Model("vllm", "org/small", adapter=str(b))
    for model in (base, node_a, node_b, node_a):
        model.generate([_chat("hi")])
    assert [name for name, _ in vllm.CALLS].count("LLM") == 1  # one engine for all three
    loras = [call["lora"] for name, call in vllm.CALLS if name == "chat"]
    assert loras[0] is None
    assert [(r.lora_int_id, r.lora_path) for r in loras[1:]] == [(1, str(a)), (2, str(b)), (1, str(a))]
    assert len({base.fingerprint, node_a.fingerprint, node_b.fingerprint}) == 3


def test_a_request_vllm_rejects_fails_alone(vllm):
    got = Model("vllm", "org/small").generate([_chat("fine"), _chat("TOO LONG"), _chat("also fine")])
    assert [r.ok for r in got] == [True, False, True]
    assert "maximum model length" in got[1].error


def test_continuation_scoring_uses_prompt_logprobs(vllm):
    model = Model("vllm", "org/small")
    (scored,) = model.logprobs([ScoreRequest(continuations=("Yes", "No thanks"),
                                             messages=({"role": "user", "content": "Is it?"},))])
    assert scored.ok and scored.token_logprobs == [[-0.25], [-0.5, -0.5]]
    assert scored.logprobs == [-0.25, -1.0]
    (_, call), = [(n, c) for n, c in vllm.CALLS if n == "generate"]
    assert all(p.prompt_logprobs == 0 and p.max_tokens == 1 for p in call["params"])


def test_unknown_options_and_a_missing_vllm_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown vllm backend options: gpu_mem"):
        Model("vllm", "org/small", gpu_mem=0.5).generate([_chat("x")])
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    from tandemlm.runtime.backends import vllm_backend

    monkeypatch.setattr(vllm_backend, "_ENGINES", {})
    with pytest.raises(ConfigError, match="tandemlm\\[vllm\\]"):
        vllm_backend.VLLMBackend("org/small").engine()
