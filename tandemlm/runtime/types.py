"""Requests and results that cross the backend boundary, one batch at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tandemlm.runtime.errors import ConfigError


def _check_prompt(request: GenRequest | ScoreRequest) -> None:
    """Exactly one of messages / prompt; messages are stored as a tuple (requests are frozen)."""
    if (request.messages is None) == (request.prompt is None):
        raise ValueError(f"{type(request).__name__} needs exactly one of `messages` or `prompt`")
    if request.messages is not None and not isinstance(request.messages, tuple):
        object.__setattr__(request, "messages", tuple(request.messages))


#: grammar formats a `Constraint` may carry (llguidance reads all three; see `Constraint`)
CONSTRAINT_KINDS = ("lark", "json_schema", "regex")


@dataclass(frozen=True)
class Constraint:
    """A grammar the generated text must match, for engines that constrain decoding.

    `kind` is "regex" (Rust regex syntax, the whole output), "json_schema" (a JSON schema, as
    text) or "lark" (llguidance's Lark dialect: terminals are `/regex/` or "text", rules may embed
    `%json {schema}`). LM nodes build one from their adapter's format and their fields' types
    (`tandemlm.compose.grammar`), so a `Literal["yes", "no"]` field can only be yes or no.

        Constraint("regex", r"(yes|no)")

    `close`, when set, is text that ends the output from inside its last free value (ChatAdapter:
    the `[[ ## completed ## ]]` marker): an engine that sees the token budget run out forces it,
    where the grammar allows it, so a long last answer is cut but its format still completes.
    """

    kind: str
    text: str
    close: str = ""

    def value(self) -> Any:
        """The grammar as engines take it: a json_schema parsed into a dict, other kinds as text;
        a json_schema that is not JSON is a `ConfigError`."""
        if self.kind != "json_schema":
            return self.text
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"json_schema constraint is not JSON ({exc}): {self.text[:200]}") from None

    def __post_init__(self) -> None:
        if self.kind not in CONSTRAINT_KINDS:
            raise ValueError(f"Constraint kind must be one of {', '.join(CONSTRAINT_KINDS)}, got "
                             f"{self.kind!r}")


@dataclass(frozen=True)
class GenRequest:
    """One generation request.

    Exactly one of `messages` (chat messages, formatted by the backend with the model's chat
    template) or `prompt` (a raw string sent unformatted) is set. `key` is an optional replay key
    (a recorded row id) that `recorded` backends prefer over the prompt text. `constraint`, when
    set, is a grammar the output must match; only backends that declare `supports_constrained`
    accept one.
    """

    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    key: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        _check_prompt(self)
        if not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise ValueError(f"GenRequest.n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def sampling_key(self) -> tuple[Any, ...]:
        """Requests with equal sampling keys can share one backend batch (the seed is per
        request: backends draw each seeded sequence from its own generator)."""
        return (self.max_new_tokens, self.temperature, self.top_p, self.n, self.stop)


@dataclass
class GenResult:
    """What a backend returns for one `GenRequest`; `error` set means this request failed alone."""

    texts: list[str] = field(default_factory=list)
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_s: float = 0.0
    finish_reason: str = "stop"
    cost_usd: float | None = None
    error: str | None = None
    #: the engine's own confidence in its answer, where it reports one (recorded data: the
    #: source's raw signal, e.g. an answer-token log-probability or a self-verification score)
    confidence: float | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, error: str, latency_s: float = 0.0) -> GenResult:
        return cls(texts=[], error=error, latency_s=latency_s, finish_reason="error")


@dataclass(frozen=True)
class ScoreRequest:
    """Log-probabilities of given continuations after one prompt (e.g. options "Yes"/"No")."""

    continuations: tuple[str, ...]
    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        _check_prompt(self)
        if not isinstance(self.continuations, tuple):
            object.__setattr__(self, "continuations", tuple(self.continuations))
        if not self.continuations:
            raise ValueError("ScoreRequest needs at least one continuation")


@dataclass
class ScoreResult:
    """Sum of token log-probabilities per continuation, and the per-token values."""

    logprobs: list[float] = field(default_factory=list)
    token_logprobs: list[list[float]] = field(default_factory=list)
    tokens_in: int | None = None
    latency_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ClassifyRequest:
    """Score one text (or a text pair, e.g. query + candidate) with a classification head."""

    text: str
    text_pair: str | None = None


@dataclass
class ClassifyResult:
    """Label probabilities (a single sigmoid probability for a one-output head) and raw logits."""

    probs: list[float] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)
    tokens_in: int | None = None
    latency_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def positive(self) -> float:
        """Probability of the positive (last) label: the score of a binary or regression head."""
        return self.probs[-1]


def request_texts(request: GenRequest | ScoreRequest | ClassifyRequest) -> list[str]:
    """Every piece of text a request would send to a model."""
    if isinstance(request, ClassifyRequest):
        return [request.text] + ([request.text_pair] if request.text_pair is not None else [])
    texts = [request.prompt] if request.prompt is not None else []
    texts += [str(m.get("content", "")) for m in request.messages or ()]
    if isinstance(request, ScoreRequest):
        texts += list(request.continuations)
    return texts


@dataclass(frozen=True)
class LoraOptions:
    """The shape of a LoRA adapter: rank `r`, scale `alpha` (updates are scaled by alpha / r),
    `dropout` on the adapter's input, and the modules it wraps ("all-linear": every linear
    layer but the output head, which suits small models; or a list of module names)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> LoraOptions:
        """Options from user input; an unknown key or a bad value is a `ConfigError`."""
        options = dict(options or {})
        known = ("r", "alpha", "dropout", "target_modules")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"unknown LoRA option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        modules = options.get("target_modules", cls.target_modules)
        if isinstance(modules, (list, tuple)):
            modules = tuple(str(m) for m in modules)
            options["target_modules"] = "all-linear" if modules == ("all-linear",) else modules
        spec = cls(**options)
        if not isinstance(spec.r, int) or isinstance(spec.r, bool) or spec.r < 1:
            raise ConfigError(f"LoRA rank r must be an integer >= 1, got {spec.r!r}")
        if not float(spec.alpha) > 0 or not 0.0 <= float(spec.dropout) < 1.0:
            raise ConfigError(f"LoRA alpha must be > 0 and dropout in [0, 1), got alpha="
                              f"{spec.alpha!r}, dropout={spec.dropout!r}")
        if not spec.target_modules:
            raise ConfigError("LoRA target_modules is empty; use 'all-linear' or module names")
        return spec
