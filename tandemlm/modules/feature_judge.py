"""`FeatureJudge`: a cascade judge that reads more than the candidate answer.

FrugalGPT's judge scores (question, answer) with a small model. A stage's answer can say more:

* `text` — a `Score` node's probability for (input, answer) (e.g. a MiniLM cross-encoder, which
  `TrainScorer` trains as it trains any cascade judge);
* `confidence` — the stage model's own confidence in its answer where the engine reports one
  (recorded data: the source's raw signal, such as an answer-token log-probability);
* `agreement` — the fraction of the earlier stages (those this example already paid for) whose
  answer agrees with this one (`answer_key`), free at run time.

A logistic model combines the features it uses: score = sigmoid(bias + Σ wᵢ·(xᵢ − μᵢ)/σᵢ), with a
weight for each missing value (no confidence reported, no earlier stage). `FitJudges` fits it and
picks the features that predict correctness best on held-out examples; until then the judge scores
with the mean of its `text` and `agreement` values.

    judge = FeatureJudge(Score(minilm, fields=("question", "answer")))
    Cascade([Stage(cheap, judge=judge), Stage(large)])

Each example's trace records its feature values (`info["features"]`), so a calibration can
re-score a stage for any chain of earlier stages without calling a model again (`rescore`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

from tandemlm.compose import Node, NodeTrace, RunContext
from tandemlm.compose.node import bad_state, is_number
from tandemlm.modules.judges import Judge, NodeJudge, answer_key
from tandemlm.runtime import ConfigError

FEATURES = ("text", "confidence", "agreement")
Features = dict[str, float | None]


def agreement(answer: Any, earlier: Sequence[Any]) -> float | None:
    """The fraction of `earlier` answers that agree with `answer` (None when there are none)."""
    if not earlier:
        return None
    key = answer_key(answer)
    return sum(answer_key(e) == key for e in earlier) / len(earlier)


class FeatureJudge(Judge):
    """Scores a stage's answer from its features; see the module docstring.

    Args:
        text: a node with a `score` output (e.g. `Score`) reading the stage's inputs and answer;
            None to judge without one.
        confidence: use the stage model's reported confidence.
        agreement: use agreement with earlier stages' answers.
        field: the answer field compared for agreement.
    """

    name = "features"

    def __init__(self, text: Node | None = None, *, confidence: bool = True, agreement: bool = True,
                 field: str = "answer") -> None:
        self.text = NodeJudge(text) if text is not None else None
        self.node = text  # what TrainScorer trains and the cascade lists among its children
        self.available = [f for f, on in zip(FEATURES, (text is not None, confidence, agreement),
                                             strict=True) if on]
        if not self.available:
            raise ConfigError("FeatureJudge needs at least one feature: a text scorer, "
                              "confidence=True or agreement=True")
        self.field = field
        self.features: list[str] = [f for f in self.available if f != "confidence"]
        self.weights: dict[str, float] = {}  # empty: the untrained mean of the features used
        self.scale: dict[str, list[float]] = {}
        #: the fit's out-of-fold models (see `FitJudges`): {"examples": digest of the examples
        #: fitted on, "folds": [state, ...]}
        self.cross_fit: dict[str, Any] | None = None

    # -- state (saved with the cascade) ----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        out = {"features": list(self.features), "weights": dict(self.weights),
               "scale": {k: list(v) for k, v in self.scale.items()}}
        if self.cross_fit is not None:
            out["cross_fit"] = self.cross_fit
        return out

    def set_state(self, state: dict[str, Any]) -> None:
        features, weights, scale = self._checked(state)
        cross_fit = state.get("cross_fit")
        if cross_fit is not None and not (isinstance(cross_fit, dict)
                                          and isinstance(cross_fit.get("examples"), str)
                                          and isinstance(cross_fit.get("folds"), list)
                                          and all(isinstance(f, dict) for f in cross_fit["folds"])):
            raise ConfigError("FeatureJudge: cross_fit must be {'examples': DIGEST, 'folds': "
                              "[state, ...]}; compile again to rebuild it")
        for fold in cross_fit["folds"] if cross_fit is not None else []:
            self._checked({"features": features, **fold})  # each copy is restored on use
        self.features, self.weights, self.scale = features, weights, scale
        self.cross_fit = cross_fit

    def _checked(self, state: dict[str, Any]) -> tuple[list[str], dict[str, float],
                                                       dict[str, list[float]]]:
        """(features, weights, scale) of a saved state, their types checked."""
        features = state.get("features", self.features)
        weights, scale = state.get("weights", {}), state.get("scale", {})
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise bad_state("FeatureJudge", "features", "a list of feature names", features)
        unknown = [f for f in features if f not in self.available]
        if unknown or not features:
            raise ConfigError(f"FeatureJudge: cannot use feature(s) {unknown or features}; this "
                              f"judge has {', '.join(self.available)}")
        if not isinstance(weights, dict) or not all(is_number(v) for v in weights.values()):
            raise bad_state("FeatureJudge", "weights", "an object of finite numbers", weights)
        if not isinstance(scale, dict) or not all(
                isinstance(v, list) and all(is_number(x) for x in v) for v in scale.values()):
            raise bad_state("FeatureJudge", "scale", "an object of lists of finite numbers", scale)
        return (list(features), {k: float(v) for k, v in weights.items()},
                {k: [float(x) for x in v] for k, v in scale.items()})

    def fold_judges(self, examples: str) -> list[FeatureJudge] | None:
        """The out-of-fold copies of this judge (example i is scored by copy i mod k) for the
        examples with this digest (`examples_digest`), or None when it was fitted on others."""
        if not self.cross_fit or self.cross_fit["examples"] != examples:
            return None
        out = []
        for fold in self.cross_fit["folds"]:
            judge = copy.copy(self)
            judge.cross_fit = None
            judge.set_state({"features": self.features, **fold})
            out.append(judge)
        return out

    # -- scoring -------------------------------------------------------------------------------
    def input_fields(self, solver: Node) -> set[str]:
        return self.text.input_fields(solver) if self.text is not None else set()

    def routes(self, solver: Node) -> list[tuple[Any, set[str]]]:
        return self.text.routes(solver) if self.text is not None else []

    def score(self, ctx: RunContext, solver: Node, inputs: list[dict[str, Any]],
              answers: list[NodeTrace], earlier: list[list[dict[str, Any]]] | None = None,
              ) -> tuple[list[float | None], list[NodeTrace]]:
        if self.text is not None:
            text_scores, traces = self.text.score(ctx, solver, inputs, answers)
        else:
            text_scores = [None] * len(answers)
            traces = [NodeTrace(node=f"{solver.name}.features", inputs={}) for _ in answers]
        scores: list[float | None] = []
        for i, (answer, text, trace) in enumerate(zip(answers, text_scores, traces, strict=True)):
            mine = (answer.outputs or {}).get(self.field)
            before = [e.get(self.field) for e in (earlier[i] if earlier else [])]
            values = {"text": text, "confidence": answer.info.get("confidence"),
                      "agreement": agreement(mine, before)}
            trace.info["features"] = values
            failed = self.text is not None and text is None
            scores.append(None if failed else self.combine(values))
        return scores, traces

    def rescore(self, features: list[Features | None], answers: list[Any],
                earlier: list[list[Any]]) -> list[float | None]:
        """Scores as if `earlier[i]` (answers of earlier stages) had run before: what a
        calibration needs to try this stage after any chain, from recorded feature values."""
        out: list[float | None] = []
        for values, answer, before in zip(features, answers, earlier, strict=True):
            if values is None:
                out.append(None)
                continue
            out.append(self.combine({**values, "agreement": agreement(answer, before)}))
        return out

    def vector(self, values: Features, features: Sequence[str]) -> list[float]:
        """The logistic model's inputs for `features`: each value (0 when missing) and, for
        `confidence` and `agreement`, whether it is missing."""
        out = []
        for f in features:
            value = values.get(f)
            out.append(0.0 if value is None or not math.isfinite(value) else float(value))
            if f != "text":
                out.append(1.0 if value is None or not math.isfinite(value) else 0.0)
        return out

    @staticmethod
    def columns(features: Sequence[str]) -> list[str]:
        return [c for f in features for c in ([f] if f == "text" else [f, f"{f}_missing"])]

    def combine(self, values: Features) -> float:
        if not self.weights:  # untrained: the mean of the [0, 1] features present
            present = [values[f] for f in self.features if f != "confidence" and values.get(f) is not None]
            return sum(present) / len(present) if present else 0.5
        z = self.weights.get("bias", 0.0)
        for name, x in zip(self.columns(self.features), self.vector(values, self.features), strict=True):
            mean, std = self.scale.get(name, (0.0, 1.0))
            z += self.weights.get(name, 0.0) * (x - mean) / std
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))
