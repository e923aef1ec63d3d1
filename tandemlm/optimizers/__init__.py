"""The compiler: `compile()`, its passes (one file each), the trace store and artifacts."""

from tandemlm.optimizers.artifacts import load, save_program
from tandemlm.optimizers.bootstrap_demos import BootstrapDemos
from tandemlm.optimizers.calibrate import Calibrate
from tandemlm.optimizers.compile import compile
from tandemlm.optimizers.escalate import Escalate
from tandemlm.optimizers.finetune import Finetune
from tandemlm.optimizers.fit_judges import FitJudges
from tandemlm.optimizers.passes import CompileContext, Pass, lm_nodes, select_nodes
from tandemlm.optimizers.report import PassReport, Reporter, RichReporter
from tandemlm.optimizers.trace_store import NodeCall, Traces, TraceStore
from tandemlm.optimizers.train_router import TrainRouter
from tandemlm.optimizers.train_scorer import TrainRanker, TrainScorer
from tandemlm.optimizers.train_verifier import TrainVerifier
from tandemlm.optimizers.tune_mix import TuneMix

__all__ = ["BootstrapDemos", "Calibrate", "CompileContext", "Escalate", "Finetune", "FitJudges", "NodeCall", "Pass",
           "PassReport", "Reporter", "RichReporter", "TraceStore", "Traces", "TrainRanker",
           "TrainRouter", "TrainScorer", "TrainVerifier", "TuneMix", "compile", "lm_nodes", "load",
           "save_program", "select_nodes"]
