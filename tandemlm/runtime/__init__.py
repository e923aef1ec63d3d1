"""Models, backends, batching and accounting. Imports nothing else of tandemlm."""

from tandemlm.runtime.accounting import Cost, Ledger, ModelUsage, call_cost
from tandemlm.runtime.backend import Backend, register_backend, registered_backends, require, supports
from tandemlm.runtime.cache import CallCache, use_cache
from tandemlm.runtime.errors import (ArtifactError, BackendError, CapabilityError, CompileError,
                                     ConfigError,
                                     EvaluationAborted, EvaluationWarning, GraphError, OutputError,
                                     ParseError, PrivacyError, RateLimited, ReplayMiss, TandemError,
                                     Unavailable)
from tandemlm.runtime.model import Model
from tandemlm.runtime.types import (ClassifyRequest, ClassifyResult, Constraint, GenRequest,
                                    GenResult, ScoreRequest, ScoreResult, request_texts)

__all__ = [
    "ArtifactError", "Backend", "BackendError", "CallCache", "CapabilityError", "ClassifyRequest",
    "ClassifyResult", "CompileError", "ConfigError", "Constraint", "Cost", "EvaluationAborted",
    "EvaluationWarning", "GenRequest",
    "GenResult", "GraphError", "Ledger", "Model", "ModelUsage", "OutputError", "ParseError", "PrivacyError",
    "RateLimited", "ReplayMiss", "ScoreRequest", "ScoreResult", "TandemError", "Unavailable",
    "call_cost", "register_backend", "registered_backends", "request_texts", "require", "supports",
    "use_cache",
]
