"""Constrained decoding on the `hf` backend: llguidance masks every token a grammar forbids.

Each constrained row of a `generate` batch gets its own llguidance matcher (rows of one batch may
carry different grammars, or none). Before each step the mask of allowed next tokens is computed
per row and every other logit set to -inf; the token the step then picks is fed back to the
matcher. Once a row's grammar is complete only end-of-sequence is allowed, so the row stops
exactly where its output ends. Masking comes before sampling, so greedy and seeded sampling both
draw from the allowed tokens only.

Tokens the grammar forces cost no decoding step: the forced start of an output (ChatAdapter's first
marker) is put on the prompt, and once the rest of an output is forced (its final marker) the row
ends at once and the rest is appended. A constraint with a `close` text (ChatAdapter's
`[[ ## completed ## ]]` marker) is also closed in time: when a row's remaining token budget is
nearly down to that text and end-of-sequence, and the grammar accepts the text where the row
stands (inside the last free-text field), the row ends there with the text appended (a few steps
early at most). A small model that rambles on in its last field thus ends with a cut but
well-formed answer instead of an unparseable one; in an earlier field the row runs out as before.

llguidance (the engine behind OpenAI's structured outputs and one of vLLM's and SGLang's grammar
backends) was chosen over xgrammar here: it is a 3 MB wheel with no dependencies, where
xgrammar's wheel requires triton (286 MB) on Linux; both build a SmolLM2 mask in well under a
millisecond, far below a decoding step on a CPU (see docs/constrained.md).
"""

from __future__ import annotations

import functools
import os
from typing import Any

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
        self.hf = tokenizer
        self.eos_ids = sorted(eos_ids)
        self.ll = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=self.eos_ids)
        self.executor = llg.LLExecutor(num_threads=max(1, min(4, os.cpu_count() or 1)))

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

    `constraints[i]` is row i's grammar, or None for a row decoded freely. Tokens the grammar
    forces need no decoding step: `heads[i]`, the forced start of row i's output (ChatAdapter's
    first marker), goes onto its prompt before generation, and once the rest of a row's output is
    forced (the final marker) the row ends at once with `tails[i]` to append. `failed[i]` is set
    when row i left its grammar (a token the mask allowed was refused: an engine fault), after
    which the row decodes freely and its output will not parse."""

    def __init__(self, tokenizer: GrammarTokenizer, constraints: list[Constraint | None],
                 max_new_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.matchers = [tokenizer.matcher(c) if c is not None else None for c in constraints]
        self.closes = [tokenizer.encode(c.close) if c is not None and c.close else ()
                       for c in constraints]
        self.heads = [self._forced(m) if m is not None else [] for m in self.matchers]
        self.tails: list[list[int]] = [[] for _ in constraints]
        self.failed = [False] * len(constraints)
        self.budget = max_new_tokens - max(map(len, self.heads))  # the heads count as output
        self._steps = 0

    @staticmethod
    def _forced(matcher: Any) -> list[int]:
        forced = list(matcher.compute_ff_tokens())
        if forced and not matcher.consume_tokens(forced):
            return []  # cannot happen for tokens the matcher itself forced; decode them instead
        return forced

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
        words = (vocab + 31) // 32
        bitmask = torch.zeros((len(self.matchers), words), dtype=torch.int32)  # 0: all refused
        free, grammar = [], []
        for row, matcher in enumerate(self.matchers):
            if matcher is None or self.failed[row]:
                free.append(row)
            elif matcher.is_stopped() or self._ends(row, matcher, left):
                for token in self.tokenizer.eos_ids:  # finished (generate pads after it)
                    _allow(bitmask, row, token)
            else:
                grammar.append((matcher, row))
        if grammar:  # every grammar row's mask at once, on llguidance's threads
            self.tokenizer.executor.unsafe_compute_mask_ptr(
                grammar, bitmask.data_ptr(), words * 4, len(self.matchers))
        allowed = ((bitmask.unsqueeze(-1) >> _BITS) & 1).view(len(self.matchers), -1)[:, :vocab].bool()
        allowed[free] = True
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))

    def _ends(self, row: int, matcher: Any, left: int) -> bool:
        """Whether row ends now, its last tokens appended instead of decoded: because the rest of
        its output is forced, or because its budget is down to the close text, end-of-sequence
        and a few spare steps and the grammar takes the close text here (a row in an earlier
        field, or mid-way through a multi-byte character, does not)."""
        forced = list(matcher.compute_ff_tokens())
        close = list(self.closes[row])
        if not forced and close and left <= len(close) + 1 + _SPARE and not matcher.is_accepting():
            forced = close if matcher.validate_tokens(close) == len(close) else []
        if not forced or not matcher.consume_tokens(forced):
            return False
        if not matcher.is_stopped():  # forced, but more follows (a marker between fields)
            matcher.rollback(len(forced))
            return False
        self.tails[row] = forced
        return True


# Steps before the last possible moment at which closing may start: chances to find a point
# where the close text is valid.
_SPARE = 6


_BITS = torch.arange(32, dtype=torch.int32)


def _allow(bitmask: torch.Tensor, row: int, token: int) -> None:
    """Set token's bit in row of an llguidance-layout bitmask (bit j of word w: token 32w + j)."""
    word, bit = divmod(token, 32)
    if word < bitmask.shape[1]:
        bitmask[row, word] |= torch.tensor(1 << bit, dtype=torch.int64).to(torch.int32)
