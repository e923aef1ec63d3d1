"""The `vllm` backend's contract with vLLM's offline API, checked against a FAKE `vllm` package
(tests/runtime/fake_vllm: a labelled test double that rejects argument names and types vLLM
0.33.0 would not take). The real engine runs in benchmarks/gpu_smoke.py on a CUDA machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from checkpoints import fake_checkpoint
from tandemlm import Model
from tandemlm.runtime import ConfigError, Constraint, GenRequest, ScoreRequest

FAKE = Path(__file__).parent / "fake_vllm"


@pytest.fixture
def vllm(monkeypatch):
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKE))
    import vllm as fake
    from tandemlm.runtime.backends import vllm_backend

    fake.CALLS.clear()
    monkeypatch.setattr(fake, "STRUCTURED_REPLIES", [])
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


def test_each_requests_constraint_reaches_sampling_params_as_structured_outputs(vllm):
    from vllm.sampling_params import StructuredOutputsParams

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    lark = 'start: T0\nT0: /\\[\\[ ## verdict ## \\]\\]\\n(?:yes|no)/\n'
    vllm.STRUCTURED_REPLIES[:] = ["no", '{"n": 7}', "[[ ## verdict ## ]]\nyes"]
    model = Model("vllm", "org/small")
    assert model.supports("constrained")
    got = model.generate([_chat("free"), _chat("a", constraint=Constraint("json_schema", json.dumps(schema))),
                          _chat("b", constraint=Constraint("regex", "(yes|no)")),
                          _chat("c", constraint=Constraint("lark", lark))])
    assert [r.text for r in got] == ["fake:<assistant> ", '{"n": 7}', "no", "[[ ## verdict ## ]]\nyes"]
    engine = vllm.CALLS[0][1]
    assert engine["structured_outputs_config"] == {"backend": "guidance"}  # lark needs guidance
    (_, chat), = [(n, c) for n, c in vllm.CALLS if n == "chat"]
    free, json_params, regex_params, lark_params = (p.structured_outputs for p in chat["params"])
    assert free is None
    assert isinstance(json_params, StructuredOutputsParams) and json_params.json == schema
    assert json_params.regex is None and json_params.grammar is None
    assert regex_params.kind() == ("regex", "(yes|no)")
    assert lark_params.kind() == ("grammar", lark)


def test_a_constrained_lm_node_decodes_to_text_it_parses(vllm):
    from tandemlm import Pipeline
    from tandemlm.modules import Solve

    vllm.STRUCTURED_REPLIES[:] = ["[[ ## verdict ## ]]\nmaybe\n\n[[ ## completed ## ]]",
                                  "[[ ## verdict ## ]]\nno\n\n[[ ## completed ## ]]"]
    node = Solve("question -> verdict: Literal['yes', 'no']", model=Model("vllm", "org/small"))
    (out,) = Pipeline([node]).batch([{"question": "Is it?"}])
    assert out.ok and out.outputs["verdict"] == "no"  # the grammar refuses "maybe": the fake skips it
    (_, chat), = [(n, c) for n, c in vllm.CALLS if n == "chat"]
    assert chat["params"][0].structured_outputs.grammar.startswith("start: ")


def test_a_constraint_that_cannot_run_fails_alone_with_the_fix(vllm, monkeypatch):
    lark = Constraint("lark", "start: T0\nT0: /yes/\n")
    vllm.STRUCTURED_REPLIES[:] = ["yes"]
    xgrammar = Model("vllm", "org/small", structured_outputs_config={"backend": "xgrammar"})
    got = xgrammar.generate([_chat("a", constraint=lark), _chat("b", constraint=Constraint("regex", "yes"))])
    assert not got[0].ok and "'guidance'" in got[0].error and "JSONAdapter" in got[0].error
    assert got[1].ok and got[1].text == "yes"
    engine = next(c for n, c in vllm.CALLS if n == "LLM")
    assert engine["structured_outputs_config"] == {"backend": "xgrammar"}  # the user's choice kept

    off = Model("vllm", "org/small", constrained=False)
    assert not off.supports("constrained")
    (refused, free) = off.generate([_chat("a", constraint=lark), _chat("b")])
    assert not refused.ok and "constrained=False" in refused.error and free.ok

    monkeypatch.delattr(sys.modules["vllm.sampling_params"], "StructuredOutputsParams")  # vLLM < 0.12
    monkeypatch.setattr(vllm, "__version__", "0.11.2")
    (old, free) = Model("vllm", "org/small").generate([_chat("a", constraint=lark), _chat("b")])
    assert not old.ok and "needs vLLM >= 0.12" in old.error and "vLLM 0.11.2 has none" in old.error
    assert free.ok


def test_models_on_one_base_share_one_engine_whether_or_not_they_constrain(vllm):
    for model in (Model("vllm", "org/small"), Model("vllm", "org/small", constrained=False),
                  Model("vllm", "org/small", structured_outputs_config={"disable_any_whitespace": True})):
        model.generate([_chat("hi")])
    engines = [c["structured_outputs_config"] for n, c in vllm.CALLS if n == "LLM"]
    assert engines == [{"backend": "guidance"}, {"disable_any_whitespace": True, "backend": "guidance"}]


def test_a_local_checkpoint_rewritten_in_place_misses_the_call_cache(vllm, tmp_path):
    from tandemlm.runtime import CallCache, use_cache

    checkpoint = tmp_path / "merged"
    weights = fake_checkpoint(checkpoint)
    model = Model("vllm", str(checkpoint))
    with use_cache(CallCache()):
        model.generate([_chat("hi")])
        model.generate([_chat("hi")])
        assert [name for name, _ in vllm.CALLS].count("chat") == 1
        weights.write_bytes(b"weights v2")  # e.g. a merged fine-tune saved over the same path
        model.generate([_chat("hi")])
    assert [name for name, _ in vllm.CALLS].count("chat") == 2
    assert Model("vllm", "org/small").backend.identity() == "org/small"  # a hub name names its weights
