"""The `hf` backend on real tiny Llama / GPT-2 checkpoints built and briefly trained here.

The models are trained for a few seconds so that their next-token distributions are peaked:
greedy decoding of a random model can flip on float noise between padded and unpadded inputs,
and a comparison that flips by chance would not test batching.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tandemlm.runtime.backends.hf import HFBackend
from tandemlm.runtime.backends.hf_prompt import render_prompt
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.model import Model
from tandemlm.runtime.types import GenRequest, ScoreRequest
from tandemlm.tiny import build_tiny_lm, default_corpus, train_tiny_lm

QA = "Question: What is 12 plus 30?\nReasoning: 12 + 30 = 42.\nAnswer: 42\n"
PROMPTS = [  # 1 to ~250 tokens
    "The",
    "The cat",
    "Question: What is 3 plus",
    "Claim: the teacher reads a book today.\nVerdict:",
    "A robot builds the map with care. The river",
    QA + "Question: What is 7 plus",
    QA * 3 + "Claim: our team solves the plan.\nVerdict:",
    QA * 6 + "Question: What is 20 plus",
    "<|im_start|>user\nThe cat finds the answer.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    corpus = default_corpus()
    paths = {}
    for arch in ("llama", "gpt2"):
        path = build_tiny_lm(tmp_path_factory.mktemp(arch), arch=arch, seed=0)
        paths[arch] = train_tiny_lm(path, corpus, steps=150)
    paths["plain"] = build_tiny_lm(tmp_path_factory.mktemp("plain"), chat_template=False)
    return paths


@pytest.fixture(scope="session")
def llama(tiny_models):
    backend = HFBackend(str(tiny_models["llama"]), device="cpu", batch_size=32)
    yield backend
    backend.close()


def _reference_greedy(path, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding by hand: full forward of the unpadded sequence, argmax, no KV cache."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tokenizer(prompt)["input_ids"]
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
    return new


def _count_generate_calls(backend: HFBackend, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = backend._model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(backend._model, "generate", counting)
    return calls


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_greedy_equals_one_at_a_time_and_a_manual_decode(tiny_models, arch, monkeypatch):
    backend = HFBackend(str(tiny_models[arch]), device="cpu", batch_size=32)
    requests = [GenRequest(prompt=p, max_new_tokens=24) for p in PROMPTS]
    backend._load()
    calls = _count_generate_calls(backend, monkeypatch)
    batched = backend.generate(requests)
    assert calls == [len(PROMPTS)]  # one left-padded generate call for the whole batch
    single = [backend.generate([r])[0] for r in requests]
    assert all(r.ok for r in batched), [r.error for r in batched]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.tokens_out for r in batched] == [r.tokens_out for r in single]
    assert len({len(r.text) for r in batched}) > 3  # outputs differ: the comparison has teeth
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    for prompt, result in zip(PROMPTS, batched, strict=True):
        reference = _reference_greedy(tiny_models[arch], prompt, 24)
        assert result.tokens_in == len(tokenizer(prompt)["input_ids"])
        assert result.tokens_out == len(reference)
        assert result.text == tokenizer.decode(reference, skip_special_tokens=True)
    backend.close()


def test_microbatches_follow_batch_size_and_keep_request_order(tiny_models, monkeypatch):
    backend = HFBackend(str(tiny_models["llama"]), device="cpu", batch_size=4)
    requests = [GenRequest(prompt=p, max_new_tokens=8) for p in PROMPTS]
    backend._load()
    calls = _count_generate_calls(backend, monkeypatch)
    results = backend.generate(requests)
    assert calls == [4, 4, 1]
    alone = [backend.generate([r])[0].text for r in requests]
    assert [r.text for r in results] == alone


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: absolute positions must be right
def test_logprobs_equal_a_manual_forward_pass(tiny_models, arch, monkeypatch):
    path = tiny_models[arch]
    backend = HFBackend(str(path), device="cpu")
    backend._load()
    rows: list[int] = []
    original = backend._model.forward
    monkeypatch.setattr(backend._model, "forward",
                        lambda **kw: rows.append(kw["input_ids"].shape[0]) or original(**kw))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    chat = ({"role": "user", "content": "Is the claim correct?"},)
    requests = [
        ScoreRequest(prompt="Claim: the cat reads a book.\nVerdict:",
                     continuations=(" correct", " incorrect", " retrieval error\nConfidence: 0.5")),
        ScoreRequest(prompt=QA * 2 + "Question: What is 7 plus", continuations=(" 8?", " 123456")),
        ScoreRequest(messages=chat, continuations=("Summary: a robot", "Yes")),
    ]
    results = backend.logprobs(requests)
    assert rows == [7]  # all continuations of all requests in one padded forward
    lengths = set()
    for request, result in zip(requests, results, strict=True):
        assert result.ok, result.error
        if request.messages is not None:  # the template writes the BOS itself
            text = tokenizer.apply_chat_template(list(request.messages), tokenize=False,
                                                 add_generation_prompt=True)
            context = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            context = tokenizer(request.prompt)["input_ids"]
        for k, continuation in enumerate(request.continuations):
            cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            lengths.add(len(cont))
            with torch.inference_mode():
                logits = model(torch.tensor([context + cont])).logits[0].float()
            expected = torch.log_softmax(logits, -1)[len(context) - 1:-1].gather(
                -1, torch.tensor(cont)[:, None])[:, 0]
            assert result.token_logprobs[k] == pytest.approx(expected.tolist(), abs=1e-4)
            assert result.logprobs[k] == pytest.approx(float(expected.sum()), abs=1e-4)
    assert len(lengths) >= 3  # continuations of different token lengths shared the batch


def test_stop_strings_truncate_and_set_finish_reason(llama):
    free, stopped, other = llama.generate([
        GenRequest(prompt=PROMPTS[2], max_new_tokens=24),
        GenRequest(prompt=PROMPTS[2], max_new_tokens=24, stop=("\n",)),
        GenRequest(prompt=PROMPTS[1], max_new_tokens=24, stop=("\n",)),
    ])
    assert "\n" in free.text
    assert stopped.text == free.text.split("\n")[0]
    assert stopped.finish_reason == "stop"
    assert 0 < stopped.tokens_out < free.tokens_out
    # its neighbour in the batch is unaffected by the row that stopped early
    assert other.tokens_out > stopped.tokens_out
    assert other.text == llama.generate([GenRequest(prompt=PROMPTS[1], max_new_tokens=24,
                                                    stop=("\n",))])[0].text


def test_max_new_tokens_is_respected(llama):
    long, short = llama.generate([GenRequest(prompt="The cat", max_new_tokens=40),
                                  GenRequest(prompt="The cat", max_new_tokens=3)])
    assert long.tokens_out > 3
    assert short.tokens_out == 3 and short.finish_reason == "length"
    assert long.text.startswith(short.text)


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(llama):
    def sample(prompt, seed):
        return GenRequest(prompt=prompt, max_new_tokens=16, temperature=1.0, n=3, seed=seed)

    first = llama.generate([sample("The cat", 7)])[0]
    again = llama.generate([sample("The cat", 7)])[0]
    assert len(first.texts) == 3 and len(set(first.texts)) > 1
    assert first.texts == again.texts
    assert llama.generate([sample("The cat", 8)])[0].texts != first.texts
    in_batch = llama.generate([sample(PROMPTS[6], 1), sample("The cat", 7), sample("The", 2)])
    assert in_batch[1].texts == first.texts
    assert 3 <= first.tokens_out <= 3 * 16  # summed over the 3 sequences
    greedy = llama.generate([GenRequest(prompt="The cat", max_new_tokens=16, n=2)])[0]
    single = llama.generate([GenRequest(prompt="The cat", max_new_tokens=16)])[0]
    assert greedy.texts == [single.text] * 2 and greedy.tokens_out == 2 * single.tokens_out


def test_chat_template_is_used_when_present(tiny_models, llama):
    llama._load()
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "The cat"})
    rendered = render_prompt(llama._tokenizer, messages, None)
    expected = ("<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nThe cat<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert rendered == expected
    via_messages, via_prompt = llama.generate([GenRequest(messages=messages, max_new_tokens=12),
                                               GenRequest(prompt=expected, max_new_tokens=12)])
    assert via_messages.text == via_prompt.text
    # exactly one BOS: the template writes it, the tokenizer must not add a second one
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    assert via_messages.tokens_in == len(tokenizer(expected, add_special_tokens=False)["input_ids"])
    assert len(tokenizer(expected)["input_ids"]) == via_messages.tokens_in + 1


def test_plain_text_prompt_when_no_chat_template(tiny_models):
    backend = HFBackend(str(tiny_models["plain"]), device="cpu")
    backend._load()
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    expected = "System: Be brief.\n\nUser: Hi\n\nAssistant:"
    assert render_prompt(backend._tokenizer, messages, None) == expected
    via_messages, via_prompt = backend.generate([GenRequest(messages=messages, max_new_tokens=6),
                                                 GenRequest(prompt=expected, max_new_tokens=6)])
    assert via_messages.text == via_prompt.text
    assert via_messages.tokens_in == via_prompt.tokens_in


def test_too_long_request_fails_alone(llama):
    huge = "The cat reads the map. " * 600  # well over 2048 tokens
    requests = [GenRequest(prompt=p, max_new_tokens=8) for p in (PROMPTS[1], huge, PROMPTS[3])]
    results = llama.generate(requests)
    assert not results[1].ok and "2048 positions" in results[1].error
    alone = llama.generate([GenRequest(prompt=huge, max_new_tokens=8)])  # its group is empty
    assert not alone[0].ok and alone[0].finish_reason == "error"
    assert results[0].ok and results[2].ok
    assert [results[0].text, results[2].text] == [llama.generate([r])[0].text
                                                  for r in (requests[0], requests[2])]
    scored = llama.logprobs([ScoreRequest(prompt=huge, continuations=(" x",)),
                             ScoreRequest(prompt="The", continuations=(" cat",))])
    assert not scored[0].ok and scored[1].ok and scored[1].logprobs[0] < 0


def test_a_request_that_crashes_the_model_fails_alone(tiny_models, monkeypatch):
    backend = HFBackend(str(tiny_models["llama"]), device="cpu")
    backend._load()
    poison = backend._tokenizer("Verdict", add_special_tokens=False)["input_ids"][0]
    original = backend._model.forward

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and (ids == poison).any():
            raise RuntimeError("poisoned row")
        return original(*args, **kwargs)

    clean = [GenRequest(prompt=p, max_new_tokens=6) for p in ("The cat", "A robot")]
    expected = [r.text for r in backend.generate(clean)]
    monkeypatch.setattr(backend._model, "forward", forward)
    results = backend.generate([clean[0], GenRequest(prompt=PROMPTS[3], max_new_tokens=6), clean[1]])
    assert [r.ok for r in results] == [True, False, True]
    assert "poisoned row" in results[1].error and results[1].finish_reason == "error"
    assert [results[0].text, results[2].text] == expected
    scored = backend.logprobs([ScoreRequest(prompt="The", continuations=(" cat",)),
                               ScoreRequest(prompt=PROMPTS[3], continuations=(" yes",))])
    assert scored[0].ok and not scored[1].ok and "poisoned row" in scored[1].error


def test_options_and_paths_are_checked(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="'devcie'"):
        HFBackend(str(tiny_models["llama"]), devcie="cpu")
    with pytest.raises(ConfigError, match="dtype"):
        HFBackend(str(tiny_models["llama"]), dtype="fp8")
    missing = HFBackend(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="does not exist"):
        missing.generate([GenRequest(prompt="hi")])
    with pytest.raises(ConfigError):
        missing.identity()


def test_identity_tracks_the_weights_without_loading(tiny_models, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], copy)
    backend = HFBackend(str(copy))
    before = backend.identity()
    assert backend._model is None  # no load needed
    assert HFBackend(str(copy), batch_size=2).identity() == before
    build_tiny_lm(copy, seed=1)  # same architecture, different weights
    assert HFBackend(str(copy)).identity() != before
    assert HFBackend("org/some-model").identity() == "org/some-model"


def test_lora_adapter_is_applied(tiny_models, tmp_path):
    peft = pytest.importorskip("peft")
    path = tiny_models["llama"]
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    tuned = peft.get_peft_model(base, config).eval()
    tuned.save_pretrained(tmp_path / "adapter")
    request = ScoreRequest(prompt="Claim: the cat reads a book.\nVerdict:", continuations=(" correct",))
    with_adapter = HFBackend(str(path), device="cpu", adapter=str(tmp_path / "adapter"))
    score = with_adapter.logprobs([request])[0].logprobs[0]
    ids = AutoTokenizer.from_pretrained(path)(request.prompt + " correct")["input_ids"]
    with torch.inference_mode():
        expected = torch.log_softmax(tuned(input_ids=torch.tensor([ids])).logits[0, -2], -1)[ids[-1]]
    assert score == pytest.approx(float(expected), abs=1e-4)
    plain = HFBackend(str(path), device="cpu").logprobs([request])[0].logprobs[0]
    assert abs(plain - score) > 1e-3
    missing = HFBackend(str(path), device="cpu", adapter=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="adapter"):
        missing.logprobs([request])


def test_model_handle_runs_through_the_registry(tiny_models):
    model = Model("hf", str(tiny_models["llama"]), device="cpu", batch_size=8)
    results = model.generate([GenRequest(prompt="The cat", max_new_tokens=5),
                              GenRequest(messages=({"role": "user", "content": "Hi"},),
                                         max_new_tokens=5)])
    assert [r.ok for r in results] == [True, True]
    assert results[0].tokens_in == 3 and 0 < results[0].tokens_out <= 5
    assert isinstance(model.backend, HFBackend)
    assert model.logprobs([ScoreRequest(prompt="The", continuations=(" cat",))])[0].ok
    assert model.backend.num_parameters() > 0
    with pytest.raises(ConfigError, match="does not exist"):  # setup errors are raised, not hidden
        Model("hf", str(tiny_models["llama"]) + "-missing").generate([GenRequest(prompt="x")])
