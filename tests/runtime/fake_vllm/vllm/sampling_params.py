"""FAKE `vllm.sampling_params` (test double): `SamplingParams` and `StructuredOutputsParams` with
the fields and checks of vLLM >= 0.12 (`vllm/sampling_params.py`): a request's structured outputs
are one `StructuredOutputsParams` (exactly one of json / regex / choice / grammar / json_object /
structural_tag set) in `SamplingParams(structured_outputs=...)`. The `guided_decoding=` field of
vLLM < 0.12 is refused, as the real 0.12 refuses it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def _check(name: str, value: Any, kind: Any) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"fake vllm: {name} must be {kind}, got {type(value).__name__}")


@dataclass
class StructuredOutputsParams:
    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        for name, kind in (("json", (str, dict)), ("regex", str), ("choice", list), ("grammar", str),
                           ("json_object", bool), ("whitespace_pattern", str),
                           ("structural_tag", str)):
            _check(name, getattr(self, name), kind)
        count = sum(getattr(self, name) is not None for name in CONSTRAINTS)
        if count != 1:  # the real message (a VLLMValidationError, a ValueError)
            raise ValueError("You can only use one kind of structured outputs constraint but "
                             f"{count} are specified: {self.__dict__}")

    def kind(self) -> tuple[str, Any]:
        """(field name, value) of the one constraint set."""
        return next((name, getattr(self, name)) for name in CONSTRAINTS
                    if getattr(self, name) is not None)


_STRUCTURED = StructuredOutputsParams  # kept when a test removes the name (a vLLM < 0.12)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = 16
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        for name, kind in (("n", int), ("temperature", (int, float)), ("top_p", (int, float)),
                           ("seed", int), ("stop", (str, list)), ("max_tokens", int),
                           ("logprobs", int), ("prompt_logprobs", int),
                           ("structured_outputs", _STRUCTURED)):
            _check(name, getattr(self, name), kind)
