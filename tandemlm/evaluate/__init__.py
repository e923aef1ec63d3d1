"""Datasets, metrics and `evaluate()`."""

from tandemlm.evaluate.data import load_data
from tandemlm.evaluate.evaluate import EvaluationInterrupted, evaluate
from tandemlm.evaluate.loading import load_metric, load_object, load_program, packaged_data
from tandemlm.evaluate.metrics import check_metric, exact_match, normalize
from tandemlm.evaluate.results import EvalResult, Record
from tandemlm.evaluate.stats import bootstrap_stderr

__all__ = ["EvalResult", "EvaluationInterrupted", "Record", "bootstrap_stderr", "check_metric",
           "evaluate", "exact_match", "load_data", "load_metric", "load_object", "load_program",
           "normalize", "packaged_data"]
