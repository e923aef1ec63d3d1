"""`LogitMix` on tiny real transformers models sharing one tokenizer: the mix reproduces the base
model exactly when the other terms cancel, logits and log-probabilities mix to the same
distribution, and models with different vocabularies are refused."""

from __future__ import annotations

import pytest
import torch

from tandemlm import Model, Pipeline
from tandemlm.modules import LogitMix, Term
from tandemlm.runtime import ConfigError, GenRequest
from tandemlm.tiny import build_tiny_lm

PROMPTS = ["Once upon a time", "The cat sat on", "A long way from home"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    def build(name, **kw):
        return Model("hf", str(build_tiny_lm(tmp_path_factory.mktemp(name), **kw)), name=name,
                     dtype="float32")
    return {"large": build("large", layers=3, hidden=96, seed=0),
            "small": build("small", layers=2, hidden=64, seed=1),
            "other": build("other", layers=2, hidden=64, seed=2),
            "foreign": build("foreign", layers=2, hidden=64, seed=0, vocab_size=300)}


def _run(node: LogitMix) -> list[str]:
    pipe = Pipeline([node])
    return [r.outputs["answer"] for r in pipe.batch([{"prompt": p} for p in PROMPTS])]


def _greedy(model: Model, tokens: int) -> list[str]:
    return [r.text for r in model.generate([GenRequest(prompt=p, max_new_tokens=tokens) for p in PROMPTS])]


def test_alpha_zero_reproduces_the_base_model_token_for_token(models):
    mix = LogitMix.proxy_tune(models["large"], models["small"], models["other"], alpha=0.0, max_tokens=12)
    assert _run(mix) == _greedy(models["large"], 12)


def test_identical_expert_and_anti_expert_cancel(models):
    for space in ("logprobs", "logits"):
        mix = LogitMix([Term(models["large"]), Term(models["small"], 2.0), Term(models["small"], -2.0)],
                       max_tokens=12, space=space)
        assert _run(mix) == _greedy(models["large"], 12)


def test_logits_and_logprobs_mix_to_the_same_distribution(models):
    terms = [Term(models["large"]), Term(models["small"], 0.7), Term(models["other"], -0.7)]
    mixes = {space: LogitMix(terms, space=space) for space in ("logits", "logprobs")}
    sessions = [t.model.backend.next_token_logits([GenRequest(prompt=p) for p in PROMPTS]) for t in terms]
    raw = [s.next_logits() for s in sessions]
    a, b = (mixes[s].combine(raw).softmax(-1) for s in ("logits", "logprobs"))
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, raw[0].softmax(-1), atol=1e-3)  # the mix moved the base
    assert _run(mixes["logits"]) == _run(mixes["logprobs"])


def test_a_mix_moves_the_base_and_sampling_is_seeded(models):
    moved = _run(LogitMix.proxy_tune(models["large"], models["small"], models["other"], alpha=3.0,
                                     max_tokens=12))
    assert moved != _greedy(models["large"], 12)
    sampled = [_run(LogitMix([Term(models["large"]), Term(models["small"], 0.5)], temperature=1.0,
                             seed=5, max_tokens=8)) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_different_vocabularies_and_bad_options_are_refused(models):
    mix = LogitMix([Term(models["large"]), Term(models["foreign"], 1.0)])
    with pytest.raises(ConfigError, match="different vocabularies"):
        _run(mix)
    with pytest.raises(ConfigError, match="space"):
        LogitMix([Term(models["large"])], space="probs")
    recorded = Model("recorded", "gpt-4", data="unused.jsonl")
    with pytest.raises(Exception, match="next_token_logits"):
        LogitMix([Term(recorded)])


def test_tune_mix_picks_the_weight_the_metric_prefers_and_refuses_pipelines_without_a_mix(models):
    from tandemlm import compile
    from tandemlm.modules import Solve
    from tandemlm.optimizers import TuneMix
    from tandemlm.runtime import CompileError

    base = dict(zip(PROMPTS, _greedy(models["large"], 10), strict=True))
    examples = [{"prompt": p} for p in PROMPTS]

    def like_base(example, prediction, trace=None):  # the metric prefers the base model's text
        return prediction.answer == base[example.prompt]

    mix = LogitMix.proxy_tune(models["large"], models["small"], models["other"], alpha=3.0,
                              max_tokens=10, name="mix")
    compiled = compile(Pipeline([mix]), examples, like_base, passes=[TuneMix(alphas=[3.0, 0.0],
                                                                             train_expert=False)],
                       progress=False)
    assert [t.weight for t in compiled.nodes["mix"].terms] == [1.0, 0.0, -0.0]
    assert compiled.compile_report[0].details["mix"]["scores"] == {"3.0": pytest.approx(
        compiled.compile_report[0].details["mix"]["scores"]["3.0"]), "0.0": 1.0}
    solo = Pipeline([Solve("prompt -> answer", model=models["large"], prompt_field="prompt")])
    with pytest.raises(CompileError, match="no LogitMix"):
        compile(solo, examples, like_base, passes=[TuneMix()], progress=False)
