"""Datasets, metrics and `evaluate()`."""

from tandemlm.evaluate.data import load_data
from tandemlm.evaluate.evaluate import evaluate
from tandemlm.evaluate.loading import load_object, load_program, packaged_data
from tandemlm.evaluate.metrics import exact_match, normalize
from tandemlm.evaluate.results import EvalResult, Record
from tandemlm.evaluate.stats import bootstrap_stderr

__all__ = ["EvalResult", "Record", "bootstrap_stderr", "evaluate", "exact_match", "load_data",
           "load_object", "load_program", "normalize", "packaged_data"]
