"""`Verify`: option probabilities from one batched logprobs call (checked against a plain forward
pass of a real tiny model), the instruction ensemble, the parsed-text fallback, and validation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandemlm import Model, Pipeline
from tandemlm.compose import RunContext
from tandemlm.modules.verify import OPTIONS, Verify
from tandemlm.runtime import CapabilityError, ConfigError, register_backend
from tandemlm.testing import ScriptedBackend, request_text
from tandemlm.tiny import build_tiny_lm

ROWS = [{"question": "Who founded Zorvik?", "evidence": "Zorvik was founded by Ilo.", "answer": "Ilo"},
        {"question": "What is the capital of Kesh?", "evidence": "Pellin lies on a river.",
         "answer": "Maltor"},
        {"question": "Which river crosses Dramen?", "evidence": "The Sova crosses Dramen.",
         "answer": "the Sova river, which is long"}]
CTX = RunContext(resolve=lambda ref: ref)


class NoLogprobsBackend(ScriptedBackend):
    """TEST DOUBLE: the scripted backend without the logprobs capability."""

    name = "scripted-generate-only"
    supports_logprobs = False


register_backend("scripted-generate-only", NoLogprobsBackend)


def _count_calls(backend, method):
    """Record the batch size of every call to `backend.<method>`."""
    sizes, original = [], getattr(backend, method)

    def counted(requests):
        sizes.append(len(requests))
        return original(requests)

    setattr(backend, method, counted)
    return sizes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised 2-layer Llama (untrained: the check is arithmetic, not quality)."""
    path = build_tiny_lm(tmp_path_factory.mktemp("verify") / "lm", seed=0)
    model = Model("hf", str(path), device="cpu", dtype="float32", batch_size=4)
    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, lm, AutoTokenizer.from_pretrained(str(path))


def _manual_logprobs(lm, tokenizer, node: Verify, values: dict) -> list[float]:
    """log-softmax over options of log P(verdict header + option | chat prompt), by one plain
    forward pass per option."""
    messages = list(node.request(values).messages)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # the template writes BOS
    scores = []
    for option in node.options:
        cont = tokenizer("[[ ## verdict ## ]]\n" + option, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context + cont])
        with torch.no_grad():
            logprobs = torch.log_softmax(lm(input_ids=ids).logits[0].float(), dim=-1)
        scores.append(sum(logprobs[len(context) + j - 1, t].item() for j, t in enumerate(cont)))
    return torch.log_softmax(torch.tensor(scores, dtype=torch.float64), dim=0).tolist()


def test_option_probabilities_equal_a_manual_softmax_on_a_real_model(tiny):
    model, lm, tokenizer = tiny
    node = Verify(model)
    calls = _count_calls(model.backend, "logprobs")
    traces = node.run_batch(ROWS, CTX)
    assert calls == [len(ROWS)]  # one batched call for all examples
    for values, trace in zip(ROWS, traces, strict=True):
        assert trace.ok, trace.error
        expected = _manual_logprobs(lm, tokenizer, node, values)
        got = [math.log(trace.outputs["verdict_probs"][o]) for o in OPTIONS]
        assert got == pytest.approx(expected, abs=1e-5)
        assert trace.outputs["verdict"] == OPTIONS[max(range(3), key=expected.__getitem__)]
        assert math.log(trace.outputs["score"]) == pytest.approx(expected[2], abs=1e-5)
        assert trace.info["scoring"] == "logprobs" and trace.calls == 1 and trace.tokens_in > 0
    # each example's own prompt was scored: the distributions differ beyond float noise
    assert len({round(math.log(t.outputs["verdict_probs"]["retrieval_error"]), 3)
                for t in traces}) == len(ROWS)


def test_instruction_ensemble_sums_variants_in_one_batch_on_a_real_model(tiny):
    model, lm, tokenizer = tiny
    # One-letter options are one token each, so their probabilities are of one magnitude and a
    # wrong sum would show (multi-token options leave the shortest with nearly all the mass).
    variants, letters = ["Judge the answer.", "Is the evidence about the question?"], ("A", "B", "C")
    node = Verify(model, instructions=variants, options=letters)
    calls = _count_calls(model.backend, "logprobs")
    traces = node.run_batch(ROWS[:2], CTX)
    assert calls == [2 * len(variants)]
    for values, trace in zip(ROWS[:2], traces, strict=True):
        per_variant = [[math.exp(x) for x in _manual_logprobs(
            lm, tokenizer, Verify(model, instructions=v, options=letters), values)] for v in variants]
        assert per_variant[0] != pytest.approx(per_variant[1], abs=1e-5)  # variants differ
        expected = [(a + b) / 2 for a, b in zip(*per_variant, strict=True)]
        assert [trace.outputs["verdict_probs"][o] for o in letters] == pytest.approx(expected, abs=1e-6)
        assert trace.outputs["score"] == pytest.approx(expected[2], abs=1e-6)  # the last option
        assert [[v[o] for o in letters] for v in trace.info["variants"]] == \
               [pytest.approx(p, abs=1e-6) for p in per_variant]


def _scripted_logprob(request, continuation):
    """Log-probabilities that depend on the instruction variant and the example."""
    text, option = request_text(request), continuation.split("\n")[-1]
    base = {"retrieval_error": -1.0, "generation_error": -2.0, "correct": -0.5}[option]
    if "Variant B" in text and option == "retrieval_error":
        base += 1.0
    return base + (2.0 if "Kesh" in text and option == "generation_error" else 0.0)


def test_scripted_logprobs_softmax_and_ensemble_sum():
    model = Model("scripted", "judge", logprob=_scripted_logprob)
    node = Verify(model, instructions=["Variant A.", "Variant B.", "Variant C."])
    calls = _count_calls(model.backend, "logprobs")
    traces = node.run_batch(ROWS[:2], CTX)
    assert calls == [6]
    for values, trace in zip(ROWS[:2], traces, strict=True):
        sums = dict.fromkeys(OPTIONS, 0.0)
        for variant in ("A", "B", "C"):
            request = Verify(model, instructions=f"Variant {variant}.").request(values)
            raw = [_scripted_logprob(request, "x\n" + o) for o in OPTIONS]
            z = sum(math.exp(r) for r in raw)
            for o, r in zip(OPTIONS, raw, strict=True):
                sums[o] += math.exp(r) / z
        assert trace.outputs["verdict_probs"] == pytest.approx({o: s / 3 for o, s in sums.items()})
        assert sum(trace.outputs["verdict_probs"].values()) == pytest.approx(1.0)
    assert traces[0].outputs["verdict"] == "correct"
    assert traces[1].outputs["verdict"] == "generation_error"


def _text_judge(replies: dict[str, str]):
    """A generate-only model answering by instruction variant (substring of the prompt)."""
    rules = [(k, f"[[ ## verdict ## ]]\n{v}\n\n[[ ## completed ## ]]") for k, v in replies.items()]
    return Model("scripted-generate-only", "text-judge", rules=rules)


def test_text_fallback_when_the_backend_lacks_logprobs():
    model = _text_judge({"Check it.": "generation_error"})
    node = Verify(model, instructions="Check it.")
    traces = Pipeline([node]).batch(ROWS)
    assert model.backend.batches == [3]
    for result in traces:
        assert result.outputs["verdict"] == "generation_error"
        assert result.outputs["verdict_probs"] == {"retrieval_error": 0.0, "generation_error": 1.0,
                                                   "correct": 0.0}
        assert result.outputs["score"] == 0.0 and result.trace[0].info["scoring"] == "text"


def test_text_ensemble_votes_in_one_batch_and_retries_unparsable_once():
    model = _text_judge({"One.": "correct", "Two.": "retrieval_error", "Three.": "correct",
                         "Broken.": "maybe?"})
    node = Verify(model, instructions=["One.", "Two.", "Three.", "Broken."])
    traces = node.run_batch(ROWS[:2], CTX)
    assert model.backend.batches == [8, 2]  # all variants at once, then the retry of "Broken."
    for trace in traces:
        assert trace.outputs["verdict_probs"] == pytest.approx(
            {"retrieval_error": 1 / 3, "generation_error": 0.0, "correct": 2 / 3})
        assert trace.outputs["verdict"] == "correct" and trace.calls == 5
        assert len(trace.info["variant_errors"]) == 1 and "3:" in trace.info["variant_errors"][0]


def test_scoring_text_on_a_logprobs_backend_generates():
    model = Model("scripted", "judge", reply="[[ ## verdict ## ]]\ncorrect\n\n[[ ## completed ## ]]")
    (trace,) = Verify(model, scoring="text").run_batch(ROWS[:1], CTX)
    assert model.backend.batches == [1] and trace.outputs["score"] == 1.0


def test_an_example_without_any_verdict_fails_alone():
    model = Model("scripted-generate-only", "judge", fail="Kesh",
                  reply="[[ ## verdict ## ]]\ncorrect\n\n[[ ## completed ## ]]")
    results = Pipeline([Verify(model)]).batch(ROWS)
    assert [r.ok for r in results] == [True, False, True]
    assert "no variant produced a verdict" in results[1].error


def test_custom_options_score_the_last_option_and_reject_prefixes():
    model = Model("scripted", "judge", logprob=lambda r, c: 0.0 if c.endswith("yes") else -1.0)
    (trace,) = Verify(model, options=("no", "yes")).run_batch(ROWS[:1], CTX)
    assert trace.outputs["score"] == pytest.approx(1 / (1 + math.exp(-1)))
    with pytest.raises(ConfigError, match="prefix"):
        Verify(model, options=("correct", "correct_but_long"))
    with pytest.raises(ConfigError, match="distinct"):
        Verify(model, options=("yes",))
    with pytest.raises(CapabilityError, match="logprobs"):
        Verify(Model("scripted-generate-only", "x"), scoring="logprobs").run_batch(ROWS[:1], CTX)


def test_verify_is_a_typed_pipeline_node():
    node = Verify("small", inputs=("question", "answer"))
    assert list(node.input_fields) == ["question", "answer"]
    assert set(node.output_fields) == {"verdict", "verdict_probs", "score"}
    pipe = Pipeline([node], models={"small": Model("scripted", "s", logprob=lambda r, c: 0.0)})
    out = pipe(question="q", answer="a")
    assert out.verdict_probs == pytest.approx(dict.fromkeys(OPTIONS, 1 / 3))
    assert out.verdict == "retrieval_error"  # ties go to the earlier option
