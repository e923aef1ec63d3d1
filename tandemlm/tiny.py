"""Real tiny transformers models for tests, benchmarks and demos, built locally (no download).

The models are genuine `LlamaForCausalLM` / `GPT2LMHeadModel` checkpoints with a real byte-level
BPE tokenizer, saved with `save_pretrained` and therefore loaded through the same
`from_pretrained` path as a downloaded model. Only their size is fake.

    path = build_tiny_lm(tmp / "llama")                 # random weights, chat template
    train_tiny_lm(path, default_corpus(), steps=100)    # a few seconds on CPU: peaked logits

A freshly initialised model has near-flat logits, so its greedy argmax can flip on float noise;
a briefly trained one has clear winners, which tests comparing batched and unbatched decoding
need.

Models that take long to train are built once into `cache_dir()` (`build_cached`), in a folder
named after a hash of the spec *and* of the code that trains them (`code_version`), so editing a
builder trains a new model rather than reusing the one the old code left there.
"""

from __future__ import annotations

import random
from pathlib import Path

# build_once and cache_dir live in the runtime (the hf backend caches converted GGUF files
# with them); imported here so `from tandemlm.tiny import build_once, cache_dir` keeps working
from tandemlm.runtime.files import build_once, cache_dir

BOS, EOS, PAD, UNK = "<s>", "<|im_end|>", "<pad>", "<unk>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = (PAD, UNK, BOS, IM_START, EOS)

# ChatML with a leading BOS. The BOS in the template is deliberate: real templates (Llama 3,
# Gemma, Mistral) carry it too, and the backend must then not add a second one when tokenizing.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SUBJECTS = ["the cat", "a small model", "the large model", "my friend", "the teacher", "a robot",
             "the old man", "the verifier", "a student", "the river", "the city", "our team"]
_VERBS = ["reads", "answers", "checks", "writes", "finds", "sees", "likes", "builds", "solves"]
_OBJECTS = ["the question", "a book", "the answer", "an apple", "the map", "a long letter",
            "the plan", "every claim", "the red door", "a simple proof", "the last step"]
_ENDINGS = ["today.", "again.", "with care.", "before noon.", "in the garden.", "very quickly.",
            "step by step.", "at the end."]


def default_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """A small deterministic English + output-format corpus (sentences, Q/A, verdicts, chat turns)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        sentences = " ".join(
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_ENDINGS)}" for _ in range(rng.randint(1, 4)))
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        kind = i % 4
        if kind == 0:
            texts.append(sentences)
        elif kind == 1:
            texts.append(f"Question: What is {a} plus {b}?\nReasoning: {a} + {b} = {a + b}.\n"
                         f"Answer: {a + b}")
        elif kind == 2:
            verdict = rng.choice(["correct", "incorrect", "retrieval error", "generation error"])
            texts.append(f"Claim: {sentences}\nVerdict: {verdict}\nConfidence: {rng.random():.2f}")
        else:
            texts.append(f"{IM_START}user\n{sentences}{EOS}\n{IM_START}assistant\n"
                         f"Summary: {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
                         f"{rng.choice(_OBJECTS)}.{EOS}\n")
    return texts


def build_tokenizer(path: str | Path, texts: list[str], vocab_size: int = 512,
                    chat_template: bool = True):
    """Train a byte-level BPE tokenizer on `texts` and save it as a transformers tokenizer.

    Special tokens: bos `<s>` (added in front of every encoded text, like Llama's), eos
    `<|im_end|>`, pad `<pad>`, unk `<unk>`, and `<|im_start|>`. With `chat_template`, a ChatML
    template is attached. Returns the `PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[IM_START], add_bos_token=True, add_eos_token=False,
        model_max_length=2048)
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_tiny_lm(path: str | Path, texts: list[str] | None = None, arch: str = "llama",
                  layers: int = 2, hidden: int = 64, heads: int = 4, seed: int = 0,
                  chat_template: bool = True, vocab_size: int = 512) -> Path:
    """Build and save a randomly initialised tiny causal LM (+ tokenizer) at `path`.

    `arch` is "llama" (`LlamaForCausalLM`) or "gpt2" (`GPT2LMHeadModel`); both have 2048
    positions. The same arguments give the same files (tokenizer training and init are seeded).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path, texts if texts is not None else default_corpus(),
                                vocab_size=vocab_size, chat_template=chat_template)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 4,
                             num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=heads, max_position_embeddings=2048,
                             tie_word_embeddings=False, **ids)
        model_cls = LlamaForCausalLM
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=2048, **ids)
        model_cls = GPT2LMHeadModel
    else:
        raise ValueError(f"unknown arch '{arch}'; expected 'llama' or 'gpt2'")
    torch.manual_seed(seed)
    model = model_cls(config)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def train_tiny_lm(path: str | Path, texts: list[str], steps: int = 200, lr: float = 3e-3,
                  batch_size: int = 16, seed: int = 0, max_tokens: int = 256) -> Path:
    """Briefly train the model saved at `path` on `texts` (causal LM loss, AdamW, CPU); save back.

    Each text is encoded as BOS + text + EOS (truncated to `max_tokens`), so the model also learns
    to stop. Batches are drawn with a seeded generator: the same call gives the same weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tandemlm.runtime.backends.hf_common import LOAD_LOCK

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"][: max_tokens - 1]
               + [tokenizer.eos_token_id] for text in texts]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    # One thread: for a model this small it is as fast as two on an idle machine, and torch's
    # spinning worker threads make it ~20x slower when another process holds a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_steps(model, encoded, tokenizer.pad_token_id, optimizer, generator, steps, batch_size)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def _train_steps(model, encoded, pad_id, optimizer, generator, steps, batch_size) -> None:
    import torch

    for _ in range(steps):
        picks = torch.randint(len(encoded), (min(batch_size, len(encoded)),), generator=generator)
        batch = [encoded[i] for i in picks.tolist()]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(ids)
        loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def node_chat_texts(node, tokenizer, rows: list[tuple[dict, dict]]) -> list[str]:
    """Whole chats — an LM node's exact prompt for `inputs`, then its adapter's answer with
    `outputs` — rendered with the tokenizer's chat template: training texts that teach a tiny
    model to answer a node in its format (e.g. ChatAdapter's `[[ ## field ## ]]` blocks).

    `node` is an `LMNode` (duck-typed: `request(inputs)`, `adapter`, `signature`).
    """
    texts = []
    for inputs, outputs in rows:
        messages = list(node.request(inputs).messages)
        reply = node.adapter.format_assistant_message_content(node.signature, outputs)
        texts.append(tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": reply.rstrip()}], tokenize=False))
    return texts


def code_version(*builders) -> str:
    """A short hash of the code that shapes a cached model's weights: this module's source (the
    tokenizer trainer, the model's initialisation, the training loop), the source of each of
    `builders` (the caller's recipe: which of these functions it calls, with what), and the
    major.minor versions of the libraries whose initialisers, kernels and BPE trainer the weights
    come out of. Part of every cache key here: a cache keyed by the spec alone keeps serving the
    model an older builder trained after the builder changes.

        code_version(make)  # -> "3f9c0a1b2d4e"; a different one once `make` or tiny.py changes
    """
    import hashlib
    import inspect
    import sys

    parts = [inspect.getsource(sys.modules[__name__]), *map(_source, builders),
             *(f"{name}=={_major_minor(name)}" for name in _WEIGHT_LIBRARIES)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


# Their versions shape the weights a builder produces (init schemes, BPE merges, kernels).
_WEIGHT_LIBRARIES = ("torch", "transformers", "tokenizers")


def _source(builder) -> str:
    import inspect

    try:
        return inspect.getsource(builder)
    except (OSError, TypeError):  # no source file (a REPL, a frozen module): its bytecode
        code = builder.__code__
        return repr((code.co_code, code.co_consts, code.co_names))


def _major_minor(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return ".".join(version(distribution).split(".")[:2])
    except PackageNotFoundError:
        return "absent"


def build_cached(name: str, spec, build) -> Path:
    """`build_once(cache_dir() / "<name>-<key>", build)`, the key a hash of `spec` (JSON: the
    data and settings) and of `code_version(build)` (the code): a changed recipe, builder or
    library version builds a new folder, and never serves an old model.

        path = build_cached("my-lm", {"texts": texts, "steps": 200}, make)
    """
    import hashlib
    import json

    keyed = json.dumps({"spec": spec, "code": code_version(build)}, sort_keys=True)
    return build_once(cache_dir() / f"{name}-{hashlib.sha256(keyed.encode()).hexdigest()[:12]}", build)


def cached_chat_lm(name: str, texts: list[str], *, layers: int = 2, hidden: int = 64,
                   heads: int = 4, steps: int = 200, seed: int = 0, max_tokens: int = 640) -> Path:
    """A tiny Llama whose tokenizer and weights are trained on `texts` (e.g. `node_chat_texts`),
    built once under `cache_dir()` (`build_cached`: the folder is named after a hash of
    everything that shapes it, code included). Texts are trained up to `max_tokens` tokens:
    chats in DSPy's ChatAdapter format run to a few hundred.
    """
    spec = {"texts": texts, "layers": layers, "hidden": hidden, "heads": heads, "steps": steps,
            "seed": seed, "max_tokens": max_tokens}

    def build(work: Path) -> None:
        build_tiny_lm(work, texts=texts, layers=layers, hidden=hidden, heads=heads, seed=seed)
        train_tiny_lm(work, texts, steps=steps, seed=seed, max_tokens=max_tokens)

    return build_cached(name, spec, build)


def chat_template_tokenizer():
    """A tokenizer carrying the tiny models' chat template, for rendering training chats before
    a model exists (any tiny tokenizer renders the same template)."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer(tmp, default_corpus(40), vocab_size=300)
        return AutoTokenizer.from_pretrained(tmp)
