"""The `hf` backend: a local Hugging Face transformers causal LM, batched, on CPU or GPU.

    backend = HFBackend("./models/qwen-0.5b", device="cpu", dtype="float32", batch_size=16)
    backend.generate([GenRequest(messages=({"role": "user", "content": "Hi"},))])
    HFBackend("./models/smollm2.Q4_1.gguf")   # a GGUF file: converted once, cached (see hf_gguf)

Requests sharing sampling settings run together: sorted by prompt length (less padding), cut into
microbatches of `batch_size` sequences, one left-padded `model.generate` call each, started from
a KV cache `hf_prefill` builds without padding and with the prompts' shared prefix computed
once (`prefill="packed"`, the default). Sampling
settings come from the request alone: the checkpoint's `generation_config.json` defaults
(temperature, top_k, repetition penalty, ...) are ignored, except its EOS token ids.

A seeded request samples the same text whatever else shares its batch: every sampled sequence
draws from its own seeded generator (see `hf_sampling`), so running one example or a thousand
gives the same outputs, as the executor's contract requires.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from tandemlm.runtime import progress
from tandemlm.runtime.backends.hf_prompt import (StepClock, StopOnStrings, cut_at_stop,
                                                 decode_continuation, encode_prompt, encode_prompts,
                                                 left_pad, render_prompt)
from tandemlm.runtime.backends.hf_common import (DTYPES, LOAD_LOCK, TransformersBackend, placement,
                                                 weights_identity)
from tandemlm.runtime.backends.hf_grammar import GrammarMask, GrammarTokenizer, grammar_text
from tandemlm.runtime.backends.hf_prefill import packed_cache
from tandemlm.runtime.backends.hf_gguf import gguf_folder, gguf_identity, gguf_path
from tandemlm.runtime.backends.hf_sampling import RowSampler, row_seed
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.threads import check_threads
from tandemlm.runtime.verified_files import verified_source
from tandemlm.runtime.types import Constraint, GenRequest, GenResult, ScoreRequest, ScoreResult

_OPTIONS = ("device", "dtype", "batch_size", "adapter", "trust_remote_code", "gguf_file",
            "constrained", "prefill", "threads")
_PREFILLS = ("packed", "padded")
_PREFIX_TOKENS = 4  # prompt tokens decoded in front of the output, see decode_continuation


def _looks_local(model_id: str) -> bool:
    """True for ids that can only be paths ("/x", "./x", "~/x", "a/b/c"); "org/name" may be a hub id."""
    return model_id.startswith(("/", ".", "~")) or model_id.count("/") >= 2 or "\\" in model_id


class HFBackend(TransformersBackend):
    """Hugging Face transformers causal LM, loaded lazily on first use.

    Args:
        model_id: local model directory (or a hub id that `from_pretrained` can resolve), or a
            GGUF file (`*.gguf`), converted once into a cached checkpoint (see `hf_gguf`).
        device: "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (bfloat16 on cuda, float32 on cpu), "float32", "float16" or "bfloat16".
        batch_size: sequences decoded (or scored) at once; a request with n samples counts n.
        adapter: path of a PEFT (LoRA) adapter applied on top of the weights.
        trust_remote_code: passed to `from_pretrained`.
        gguf_file: name of a GGUF file inside the folder `model_id`, loaded as a `*.gguf`
            model_id is (needs `pip install 'tandemlm[gguf]'`).
        constrained: decode requests that carry a grammar (`GenRequest.constraint`) under it,
            with llguidance (see `hf_grammar`); False declares no `constrained` capability, so
            LM nodes send this model free prompts, as to a remote API.
        prefill: "packed" (default): a microbatch's shared prompt prefix is computed once and
            no prompt is padded to the longest (see `hf_prefill`; models with sliding-window
            layers keep the padded prefill); "padded": `model.generate`'s own prefill.
        threads: torch's intra-op threads while this backend runs (generate, logprobs, LoRA
            training); torch's count is process-wide, so it is set for that work and put back
            after (see `tandemlm.runtime.threads`). "auto"/None (default): on CPU, torch's own
            count lowered to the cores other processes leave free (never below 1); threads=1
            where other work shares the cores. Changes how fast the model runs, not what it is.
    """

    name = "hf"
    supports_logprobs = True
    supports_next_token_logits = True  # see next_token_logits
    supports_train = True  # LoRA adapters, see train_lora
    supports_constrained = True  # grammar masks, see hf_grammar (off with constrained=False)
    instance_capabilities = True

    def __init__(self, model_id: str, *, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, adapter: str | None = None,
                 trust_remote_code: bool = False, gguf_file: str | None = None,
                 constrained: bool = True, prefill: str = "packed", threads: int | str | None = None,
                 **unknown: Any) -> None:
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(map(repr, sorted(unknown)))} for backend "
                              f"'hf' (model '{model_id}'); known options: {', '.join(_OPTIONS)}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not supported by backend 'hf'; use one of "
                              f"{', '.join(DTYPES)}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if gguf_file is not None and (not isinstance(gguf_file, str) or not gguf_file):
            raise ConfigError(f"gguf_file must be a file name inside the folder '{model_id}', got "
                              f"{gguf_file!r}")
        if not isinstance(constrained, bool):
            raise ConfigError(f"constrained must be True or False, got {constrained!r}")
        if prefill not in _PREFILLS:
            raise ConfigError(f"prefill must be one of {', '.join(map(repr, _PREFILLS))}, got "
                              f"{prefill!r}")
        self.threads = check_threads(threads, "hf")
        super().__init__(model_id, device=device, dtype=dtype, batch_size=batch_size,
                         adapter=adapter, trust_remote_code=trust_remote_code, gguf_file=gguf_file,
                         constrained=constrained, prefill=prefill, threads=threads)
        self.supports_constrained = constrained
        self.prefill = prefill
        self.gguf = gguf_path(model_id, gguf_file)  # the GGUF file to load, if the model is one
        self.device_option, self.dtype_option = device, dtype
        self.batch_size, self.adapter, self.trust_remote_code = batch_size, adapter, trust_remote_code
        self._lock = threading.RLock()  # guards loading and serialises use of the one model
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: set[int] = set()
        self._keeps_logits = False  # whether forward() takes `logits_to_keep`
        self._cache_arg = "cache"  # forward()'s name for the KV cache
        self._grammar_tokenizer: Any = None  # llguidance's view of the vocabulary, built on use

    # ---- loading -------------------------------------------------------------------------------

    def _source(self) -> str:
        if self.gguf is not None:
            return str(gguf_folder(self.gguf))
        path = Path(self.model_id).expanduser()
        if path.exists():
            return str(path)
        if _looks_local(self.model_id):
            raise ConfigError(f"model directory '{self.model_id}' does not exist (backend 'hf'); "
                              f"check the path, or build a local model with tandemlm.tiny")
        return self.model_id

    def _load(self) -> tuple[Any, Any]:
        """Load once. A model that cannot load is a setup error (`ConfigError`), raised to the
        caller: no request could succeed, so failing each one would only hide the cause."""
        with self._lock:
            if self._model is None:
                self._load_now()
            return self._model, self._tokenizer

    def _load_now(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        # A checked artifact's files load from the bytes that were checked (see verified_files).
        source = verified_source(self._source())
        device, dtype = placement(self.device_option, self.dtype_option)
        remote = self.trust_remote_code
        try:
            with LOAD_LOCK:
                tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=remote)
                # transformers 5 takes `dtype` (`torch_dtype` is its deprecated alias)
                model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype),
                                                             trust_remote_code=remote)
        except Exception as exc:  # any loading failure (missing files, bad config, corrupt weights)
            where = "local directory" if Path(source).exists() else "hub id (no such local directory)"
            raise ConfigError(f"could not load model '{self.model_id}' ({where}) with transformers: "
                              f"{exc}") from exc
        model.to(device)
        if self.adapter is not None:
            from tandemlm.runtime.backends.hf_lora import load_adapter

            model = load_adapter(model, verified_source(self.adapter), self.model_id)
        model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        eos = model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self._eos_ids = {i for i in eos + [tokenizer.eos_token_id] if i is not None}
        # Requests carry the whole sampling spec: drop the checkpoint's sampling defaults.
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=sorted(self._eos_ids) or None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # transformers 5 names generate's KV cache `cache` (`past_key_values`: deprecated alias)
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._model, self._tokenizer = model, tokenizer

    def _max_positions(self) -> int | None:
        return getattr(self._model.config, "max_position_embeddings", None)

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """One result per request, in request order; a bad request fails alone."""
        with self._lock, self._torch_threads():
            self._load()
            results: list[GenResult | None] = [None] * len(requests)
            groups: dict[tuple, list[tuple[int, list[int]]]] = defaultdict(list)
            for index, (request, ids) in enumerate(zip(requests, self._prompt_ids(requests),
                                                       strict=True)):
                if isinstance(ids, Exception):
                    results[index] = GenResult.failed(f"{type(ids).__name__}: {ids}")
                else:
                    groups[self._group_key(request)].append((index, ids))
            chunks = []
            for items in groups.values():
                request = requests[items[0][0]]
                rows = 1 if request.greedy else request.n
                items.sort(key=lambda item: len(item[1]))
                step = max(1, self.batch_size // rows)
                chunks += [items[start:start + step] for start in range(0, len(items), step)]
            label = Path(self.model_id).name or self.model_id
            for number, chunk in enumerate(chunks, 1):
                where = f"{label} · microbatch {number}/{len(chunks)}"
                done = self._run_isolated(requests, chunk, where)
                for (index, _), result in zip(chunk, done, strict=True):
                    results[index] = result
            return results  # type: ignore[return-value]

    @staticmethod
    def _group_key(request: GenRequest) -> tuple:
        # The seed is not part of the key: each row samples from its own generator.
        return (request.max_new_tokens, request.temperature, request.top_p, request.n, request.stop)

    def _prompt_ids(self, requests: list[GenRequest]) -> list[list[int] | Exception]:
        """Token ids of every request's prompt (encoded in one batch), or why it cannot run."""
        texts: list[str | Exception] = []
        for request in requests:
            try:
                if request.max_new_tokens < 1:
                    raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
                if request.constraint is not None:
                    self._check_constraint(request.constraint)
                texts.append(render_prompt(self._tokenizer, request.messages, request.prompt))
            except Exception as exc:
                texts.append(exc)
        good = [i for i, t in enumerate(texts) if not isinstance(t, Exception)]
        encoded = encode_prompts(self._tokenizer, [texts[i] for i in good])
        out: list[list[int] | Exception] = list(texts)  # type: ignore[arg-type]
        limit = self._max_positions()
        for i, ids in zip(good, encoded, strict=True):
            need = requests[i].max_new_tokens
            if not ids:
                out[i] = ValueError("the prompt encodes to no tokens; the model needs at least one")
            elif limit is not None and len(ids) + need > limit:
                out[i] = ValueError(f"prompt of {len(ids)} tokens + max_new_tokens {need} exceeds "
                                    f"the model's {limit} positions; shorten the prompt or lower "
                                    f"max_new_tokens")
            else:
                out[i] = ids
        return out

    def _check_constraint(self, constraint: Constraint) -> None:
        """Compile a request's grammar before decoding (a bad one fails that request alone)."""
        if not self.supports_constrained:
            raise ConfigError(f"model '{self.model_id}' was created with constrained=False; drop "
                              f"the request's constraint or create it with constrained=True")
        grammar_text(constraint)
        if self._grammar_tokenizer is None:
            vocab = self._model.get_output_embeddings().weight.shape[0]
            self._grammar_tokenizer = GrammarTokenizer(self._tokenizer, vocab, self._eos_ids)

    def _run_isolated(self, requests: list[GenRequest], chunk: list[tuple[int, list[int]]],
                      where: str = "") -> list[GenResult]:
        try:
            return self._run_microbatch(requests, chunk, where)
        except Exception as exc:
            if len(chunk) == 1:
                return [GenResult.failed(f"{type(exc).__name__}: {exc}")]
            return [self._run_isolated(requests, [item], where)[0] for item in chunk]

    def _run_microbatch(self, requests: list[GenRequest], chunk: list[tuple[int, list[int]]],
                        where: str = "") -> list[GenResult]:
        model, tokenizer = self._model, self._tokenizer
        request = requests[chunk[0][0]]
        rows = 1 if request.greedy else request.n
        constraints = [requests[index].constraint for index, _ in chunk for _ in range(rows)]
        grammar = (GrammarMask(self._grammar_tokenizer, constraints, request.max_new_tokens)
                   if any(c is not None for c in constraints) else None)
        heads = grammar.heads if grammar is not None else [[] for _ in constraints]
        prompts = [ids + head for ids, head in zip(
            (ids for _, ids in chunk for _ in range(rows)), heads, strict=True)]
        budget = grammar.budget if grammar is not None else request.max_new_tokens
        device = next(model.parameters()).device
        input_ids, mask = left_pad(prompts, model.generation_config.pad_token_id, device)
        width = input_ids.shape[1]
        stops = tuple(s for s in request.stop if s)
        stopper = StopOnStrings(tokenizer, stops, width, len(prompts)) if stops else None
        throttle = progress.Throttle()
        clock = StepClock(lambda k: throttle(lambda: f"{where} · token {k}/{budget}"))
        kwargs: dict[str, Any] = {"stopping_criteria": StoppingCriteriaList(
            [clock] if stopper is None else [clock, stopper])}
        processors: list[LogitsProcessor] = [grammar] if grammar is not None else []  # mask first
        if not request.greedy:
            seeds = [row_seed(requests[index].seed, j) for index, _ in chunk for j in range(rows)]
            processors.append(RowSampler(seeds, request.temperature, request.top_p, device))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        started = time.perf_counter()
        cache = packed_cache(model, prompts, device) if self.prefill == "packed" else None
        if cache is not None:  # generate runs the prompts' last tokens only
            kwargs[self._cache_arg] = cache
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                    max_new_tokens=max(1, budget), **kwargs)
        ended = time.perf_counter()
        new_tokens = output[:, width:].tolist()
        results = []
        for k, (_, ids) in enumerate(chunk):
            texts, tokens_out, finished, ready = [], 0, True, started
            for row in range(k * rows, (k + 1) * rows):
                stopped = stopper.stopped_at[row] if stopper is not None else None
                ends = (heads[row], grammar.tails[row]) if grammar is not None else ([], [])
                text, used, done, steps = self._finish_row(ids, new_tokens[row], stopped, stops, *ends)
                texts.append(text)
                tokens_out += used
                finished = finished and done
                ready = max(ready, clock.ready_at(steps, ended))
            if rows != request.n:  # greedy with n > 1: the n sequences are identical
                texts, tokens_out = texts * request.n, tokens_out * request.n
            # latency: until this request's last row was done, not the whole microbatch
            results.append(GenResult(texts=texts, tokens_in=len(ids), tokens_out=tokens_out,
                                     latency_s=ready - started,
                                     finish_reason="stop" if finished else "length"))
        return results

    def _finish_row(self, prompt: list[int], new: list[int], stopped_at: int | None,
                    stops: tuple[str, ...], head: list[int] = (), tail: list[int] = ()
                    ) -> tuple[str, int, bool, int]:
        """(text, tokens used, whether it stopped, tokens decoded until it ended) for one
        generated row; `head` and `tail` are output tokens a grammar forced without decoding
        (see `hf_grammar`)."""
        eos_at = next((i for i, token in enumerate(new) if token in self._eos_ids), None)
        used, hit_eos = (len(new), False) if eos_at is None else (eos_at + 1, True)
        if stopped_at is not None and stopped_at < used:
            used, hit_eos = stopped_at, False
        body = [*head, *(new[:used - 1] if hit_eos else new[:used]), *(tail if hit_eos else ())]
        text = decode_continuation(self._tokenizer, prompt[-_PREFIX_TOKENS:], body)
        text, hit_stop = cut_at_stop(text, stops)
        return (text, used + len(head) + (len(tail) if hit_eos else 0), hit_eos or hit_stop,
                used)

    # ---- token-level mixing --------------------------------------------------------------------
    def next_token_logits(self, requests: list[GenRequest]) -> Any:
        """A `LogitSession` over the prompts of `requests` (rendered as `generate` renders them)."""
        from tandemlm.runtime.backends.hf_logits import LogitSession

        model, tokenizer = self._load()
        prompts = [encode_prompt(tokenizer, render_prompt(tokenizer, r.messages, r.prompt)) for r in requests]
        return LogitSession(model, prompts, model.generation_config.pad_token_id)

    def vocabulary(self) -> dict[str, int]:
        """Token -> id (models mixed per token must share it)."""
        return self._load()[1].get_vocab()

    def eos_ids(self) -> set[int]:
        self._load()
        return set(self._eos_ids)

    def decode(self, prompt: list[int], new: list[int]) -> str:
        return decode_continuation(self._load()[1], prompt[-_PREFIX_TOKENS:], new)

    # ---- scoring -------------------------------------------------------------------------------

    def logprobs(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """Log-probability of each continuation after each request's rendered prompt, the
        continuation tokenized apart from its context (see `hf_scoring`)."""
        from tandemlm.runtime.backends.hf_scoring import score

        with self._lock, self._torch_threads():
            self._load()
            return score(self, requests)

    # ---- training ------------------------------------------------------------------------------

    def train_lora(self, examples: list[tuple[GenRequest, str]], out_dir: str | Path,
                   **options: Any) -> Any:
        """Train a LoRA adapter on (request, completion) pairs into `out_dir`; the served model
        is untouched. See `hf_lora.train_lora` for the options; returns its `FitResult`."""
        from tandemlm.runtime.backends.hf_lora import train_lora

        with self._torch_threads():
            return train_lora(self, examples, out_dir, **options)

    # ---- identity and lifecycle ----------------------------------------------------------------

    def identity(self) -> str:
        """The weights' identity (see `weights_identity`; a GGUF file's sha256), without loading
        or converting the model."""
        if self.gguf is not None:
            return gguf_identity(self.gguf)
        path = Path(self.model_id).expanduser()
        if not path.is_dir():
            self._source()  # a missing local path raises ConfigError
            return self.model_id
        return weights_identity(path)
