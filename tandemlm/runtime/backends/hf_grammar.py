"""Constrained decoding on the `hf` backend: llguidance masks every token a grammar forbids.

Each constrained row of a `generate` batch gets its own llguidance matcher (rows of one batch may
carry different grammars, or none). Before each step the mask of allowed next tokens is computed
per row and every other logit set to -inf; the token the step then picks is fed back to the
matcher. Once a row's grammar is complete only end-of-sequence is allowed, so the row stops
exactly where its output ends. Masking comes before sampling, so greedy and seeded sampling both
draw from the allowed tokens only.

A constraint with a `close` text (ChatAdapter's `[[ ## completed ## ]]` marker) is closed in
time: when a row's remaining token budget is nearly down to that text and end-of-sequence, and
the grammar accepts the text where the row stands (inside the last free-text field), the text's
tokens are forced (a few steps early at most). A small model that rambles on in its last field thus ends with a cut but
well-formed answer instead of an unparseable one; in an earlier field the row runs out as before.

llguidance (the engine behind OpenAI's structured outputs and one of vLLM's and SGLang's grammar
backends) was chosen over xgrammar here: it is a 3 MB wheel with no dependencies, where
xgrammar's wheel requires triton (286 MB) on Linux; both build a SmolLM2 mask in well under a
millisecond, far below a decoding step on a CPU (see docs/constrained.md).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.types import Constraint

_INSTALL = "pip install llguidance (a dependency of tandemlm; reinstall the package)"


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.hf  # noqa: F401  (the tokenizer bridge)
    except ImportError as exc:
        raise ConfigError(f"constrained decoding on backend 'hf' needs llguidance ({exc}); "
                          f"{_INSTALL}, or pass constrained=False") from None
    return llguidance


@functools.lru_cache(maxsize=256)
def grammar_text(constraint: Constraint) -> str:
    """llguidance's serialized grammar for a constraint (checked: a bad grammar is a ConfigError
    naming it, raised before any decoding)."""
    llg = _llguidance()
    make = {"lark": llg.LLMatcher.grammar_from_lark, "regex": llg.LLMatcher.grammar_from_regex,
            "json_schema": llg.LLMatcher.grammar_from_json_schema}[constraint.kind]
    try:
        grammar = make(constraint.text)
    except Exception as exc:
        raise ConfigError(f"invalid {constraint.kind} constraint: {exc}\n{constraint.text}") from None
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ConfigError(f"invalid {constraint.kind} constraint: {messages[0]}\n{constraint.text}")
    return grammar


class GrammarTokenizer:
    """llguidance's view of one model's vocabulary (built once per backend: about a second)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> None:
        llg = _llguidance()
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("constrained decoding needs a fast (Rust) tokenizer; this model's "
                              "tokenizer is a slow one: pass constrained=False")
        self.hf, self.vocab_size = tokenizer, vocab_size
        self.eos_ids = sorted(eos_ids)
        self.ll = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=self.eos_ids)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one instance per backend, lives as long)
    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.hf(text, add_special_tokens=False)["input_ids"])

    def matcher(self, constraint: Constraint) -> Any:
        llg = _llguidance()
        matcher = llg.LLMatcher(self.ll, grammar_text(constraint))
        if matcher.is_error():
            raise ConfigError(f"constraint could not start: {matcher.get_error()}")
        return matcher


class GrammarMask(LogitsProcessor):
    """Per-row grammar masking for one `model.generate` call (make a new one per call).

    `constraints[i]` is row i's grammar, or None for a row decoded freely. `failed[i]` is set
    when row i left its grammar (a token the mask allowed was refused: an engine fault), after
    which the row decodes freely and its output will not parse."""

    def __init__(self, tokenizer: GrammarTokenizer, constraints: list[Constraint | None],
                 max_new_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.matchers = [tokenizer.matcher(c) if c is not None else None for c in constraints]
        self.closes = [tokenizer.encode(c.close) if c is not None and c.close else ()
                       for c in constraints]
        self.forced: list[list[int]] = [[] for _ in constraints]  # tokens a row must emit next
        self.failed = [False] * len(constraints)
        self.budget = max_new_tokens
        self._steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._steps:  # feed each row the token the previous step chose
            last = input_ids[:, -1].tolist()
            for row, matcher in enumerate(self.matchers):
                if matcher is not None and not matcher.is_stopped() and not self.failed[row]:
                    if not matcher.consume_token(last[row]):
                        self.failed[row] = True
        left = self.budget - self._steps  # tokens this step and later may still add
        self._steps += 1
        vocab = scores.shape[-1]
        for row, matcher in enumerate(self.matchers):
            if matcher is None or self.failed[row]:
                continue
            allowed = torch.zeros(vocab, dtype=torch.bool)
            if matcher.is_stopped():  # finished: only end-of-sequence (generate pads after it)
                allowed[[i for i in self.tokenizer.eos_ids if i < vocab]] = True
            elif self._closing(row, matcher, left):
                allowed[self.forced[row].pop(0)] = True
            else:
                allowed = _allowed(matcher.compute_bitmask(), vocab)
            scores[row] = scores[row].masked_fill(~allowed.to(scores.device), float("-inf"))
        return scores

    def _closing(self, row: int, matcher: Any, left: int) -> bool:
        """Whether row's next token is forced: it is closing, or must start to. A row starts
        once its budget is down to the close text, end-of-sequence and a few spare tokens, at the
        first step where the grammar takes the text (a row in an earlier field, or mid-way
        through a multi-byte character, does not)."""
        close = self.closes[row]
        if not self.forced[row] and close and left <= len(close) + 1 + _SPARE \
                and not matcher.is_accepting() and matcher.validate_tokens(list(close)) == len(close):
            self.forced[row] = list(close)
        return bool(self.forced[row])


# Steps before the last possible moment at which closing may start: chances to find a point
# where the close text is valid.
_SPARE = 6


def _allowed(bitmask: bytes, vocab: int) -> torch.Tensor:
    """A bool per token from llguidance's bitmask (little-endian 32-bit words, bit j of word w is
    token 32w + j)."""
    bits = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), bitorder="little")
    out = torch.zeros(vocab, dtype=torch.bool)
    n = min(vocab, bits.shape[0])
    out[:n] = torch.from_numpy(bits[:n].astype(bool))
    return out
