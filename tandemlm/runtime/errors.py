"""The error tree: every error tandemlm raises on purpose is a `TandemError`.

Messages say what happened, what was expected, and how to fix it.
"""

from __future__ import annotations


class TandemError(Exception):
    """Root of all tandemlm errors."""


class ConfigError(TandemError):
    """A user-supplied option, program or file is invalid."""


class GraphError(TandemError):
    """A pipeline graph is invalid (cycle, missing input, two producers, ...)."""


class BackendError(TandemError):
    """A backend failed to serve a request or lacks a capability."""


class CapabilityError(BackendError):
    """A backend was asked for a capability it does not declare."""


class RateLimited(BackendError):
    """The backend refused for now; retrying later may work."""


class Unavailable(BackendError):
    """The backend cannot be reached or loaded."""


class ReplayMiss(BackendError):
    """A `recorded` model has no recorded answer for a request."""


class PrivacyError(TandemError):
    """A private value would reach a remote model."""


class ParseError(TandemError):
    """A model's output could not be parsed into the expected fields."""

    def __init__(self, message: str, raw: str = "", expected: tuple[str, ...] = ()):
        super().__init__(message)
        self.raw = raw
        self.expected = expected


class ArtifactError(TandemError):
    """A saved artifact is missing, truncated or tampered with."""


class EvaluationAborted(TandemError):
    """An evaluation stopped because too many examples failed."""


class OutputError(TandemError):
    """Writing results failed (a full disk, no permission); the message says what was kept."""


class EvaluationWarning(UserWarning):
    """An evaluation finished, but most of its examples failed: its score measures failures."""


class CompileError(TandemError):
    """A compiler pass cannot run on this pipeline or data (no trainable node, no passing trace)."""
