"""Reusable nodes for small-helps-large collaboration (one file each)."""

from tandemlm.modules.best_of_n import BestOfN
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.decompose import Decompose
from tandemlm.modules.feature_judge import FeatureJudge
from tandemlm.modules.judges import Agreement, AnswerLogprob, Judge, NodeJudge
from tandemlm.modules.logit_mix import LogitMix, Term
from tandemlm.modules.map import Map
from tandemlm.modules.private_split import PrivateSplit
from tandemlm.modules.rank import Rank
from tandemlm.modules.rectify import Rectify
from tandemlm.modules.retrieve import Retrieve
from tandemlm.modules.router import TextRouter
from tandemlm.modules.score import Score
from tandemlm.modules.solve import Solve
from tandemlm.modules.verify import Verify

__all__ = ["Agreement", "AnswerLogprob", "BestOfN", "Cascade", "Decompose", "FeatureJudge", "Judge",
           "LogitMix", "Map", "NodeJudge", "PrivateSplit", "Rank", "Rectify", "Retrieve", "Score", "Solve",
           "Stage", "Term", "TextRouter", "Verify"]
