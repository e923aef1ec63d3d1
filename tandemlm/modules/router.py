"""`TextRouter`: send each example to a cascade stage before any model runs (RouteLLM).

A cascade always pays its cheap stages: an example the cheap model gets wrong costs the cheap
call, its judge and then the dear call. A router reads only the input — the last `tail` characters
of one text field (a few-shot prompt keeps its question at the end), as hashed word unigrams and
bigrams plus its length — and predicts, per stage, the chance that stage answers right: a logistic
model per stage. With `encoder` (an `hf-classifier` model such as all-MiniLM-L6-v2) the features
also hold the text's sentence embedding, which carries more than word counts on a few hundred
labels; the router's own calls are charged to each example it routes at its encoder's price (FLOPs
when unpriced), at run time and in `Calibrate`'s search alike. With `threshold` τ set, an example enters the
cascade's chain at the first stage whose predicted chance reaches τ (the last stage when none
does) and goes on from there as usual; with every judge threshold at −inf the first stage it
enters answers: pure routing. Without τ (the default) the router is off.

    router = TextRouter(field="prompt", encoder=Model("hf-classifier", str(minilm_path())))
    Cascade([Stage(cheap, judge=judge), Stage(large)], router=router)

`TrainRouter` fits it from every stage's answers on the train split (each model's correctness is
a label) and keeps out-of-fold copies, as `FitJudges` does, so `Calibrate` chooses τ on honest
predictions; `Calibrate` then searches cascades, routers and hybrids together.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import zlib
from typing import Any

import numpy as np

from tandemlm.compose.node import bad_state, is_number
from tandemlm.runtime import ClassifyResult, ConfigError

_WORD = re.compile(r"\w+")


class TextRouter:
    """Predicts each stage's chance of answering right from an input text; see the module doc.

    Args:
        field: the input field read.
        encoder: a `Model` with an `embed` method on its backend (`hf-classifier`), whose
            sentence embedding joins the features; None: word n-grams only.
        buckets: width of the hashed word n-gram vector.
        tail: characters read from the end of the text.
    """

    def __init__(self, field: str = "prompt", *, encoder: Any = None, buckets: int = 512,
                 tail: int = 1500) -> None:
        if buckets < 8 or tail < 1:
            raise ConfigError(f"TextRouter: buckets must be >= 8 and tail >= 1 (got {buckets}, "
                              f"{tail})")
        if encoder is not None and not callable(getattr(encoder.backend, "embed", None)):
            raise ConfigError(f"TextRouter: encoder {encoder!r} cannot embed text; use an "
                              f"'hf-classifier' model such as all-MiniLM-L6-v2")
        self.field, self.buckets, self.tail, self.encoder = field, int(buckets), int(tail), encoder
        #: per stage index (as a string): {"weights": [...], "bias": b}; empty: not fitted
        self.stages: dict[str, dict[str, Any]] = {}
        #: out-of-fold copies: {"examples": digest, "folds": [stages, ...]} (example i: copy i mod k)
        self.cross_fit: dict[str, Any] | None = None

    @property
    def fitted(self) -> bool:
        return bool(self.stages)

    # -- features ----------------------------------------------------------------------------
    def features(self, texts: list[Any]) -> np.ndarray:
        """One row per text: L2-normalised log counts of hashed word unigrams and bigrams,
        log(1 + characters) / 10, and the encoder's embedding of the text's tail if it has one."""
        out = np.zeros((len(texts), self.buckets + 1))
        for row, text in enumerate(texts):
            raw = str(text or "")
            words = _WORD.findall(raw[-self.tail:].lower())
            grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
            for gram in grams:
                out[row, zlib.crc32(gram.encode()) % self.buckets] += 1.0
            counts = np.log1p(out[row, :self.buckets])
            norm = float(np.linalg.norm(counts))
            out[row, :self.buckets] = counts / norm if norm else counts
            out[row, self.buckets] = math.log1p(len(raw)) / 10.0
        if self.encoder is not None and len(texts):
            embedded = self.encoder.backend.embed([str(t or "")[-self.tail:] for t in texts])
            out = np.hstack([out, np.asarray(embedded, dtype=float)])
        return out

    def calls(self, inputs: list[dict[str, Any]]) -> list[ClassifyResult]:
        """One encoder call per input as the router makes it (its token count, for pricing by
        `encoder.cost`); none without an encoder (hashing words costs nothing worth counting)."""
        if self.encoder is None:
            return []
        texts = [str(x.get(self.field) or "")[-self.tail:] for x in inputs]
        counts = self.encoder.backend.token_counts(texts) \
            if callable(getattr(self.encoder.backend, "token_counts", None)) else [None] * len(texts)
        return [ClassifyResult(tokens_in=k) for k in counts]

    def costs(self, inputs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        """Per input, what routing it costs: (USD, FLOPs), 0 where unknown."""
        calls = self.calls(inputs)
        if not calls:
            return [0.0] * len(inputs), [0.0] * len(inputs)
        priced = [self.encoder.cost(c) for c in calls]  # type: ignore[union-attr]
        return [c.usd or 0.0 for c in priced], [c.flops or 0.0 for c in priced]

    # -- prediction ----------------------------------------------------------------------------
    def predict(self, inputs: list[dict[str, Any]], n_stages: int) -> np.ndarray:
        """(stages × examples) predicted chance each stage answers each example right; NaN for a
        stage without a model."""
        return self._predict(self.stages, self.features([x.get(self.field) for x in inputs]),
                             n_stages)

    def _predict(self, stages: dict[str, dict[str, Any]], x: np.ndarray, n_stages: int) -> np.ndarray:
        out = np.full((n_stages, len(x)), np.nan)
        widths = {len(m["weights"]) for m in stages.values()}
        if widths and widths != {x.shape[1]}:
            raise ConfigError(f"TextRouter: its models read {sorted(widths)} features, the "
                              f"input gives {x.shape[1]} (another encoder or bucket count than "
                              f"it was fitted with); compile again")
        for key, model in stages.items():
            s = int(key)
            if s < n_stages:
                out[s] = chance(model, x)
        return out

    def fold_routers(self, examples: str) -> list[TextRouter] | None:
        """The out-of-fold copies for the examples with this digest, or None when the router
        was fitted on other examples."""
        if not self.cross_fit or self.cross_fit["examples"] != examples:
            return None
        out = []
        for stages in self.cross_fit["folds"]:
            router = copy.copy(self)
            router.cross_fit, router.stages = None, stages
            out.append(router)
        return out

    def out_of_fold(self, inputs: list[dict[str, Any]], n_stages: int, examples: str) -> np.ndarray:
        """`predict`, each example by the copy that did not learn from it where the router was
        cross-fitted on these examples (digest `examples`)."""
        folds = self.fold_routers(examples)
        if folds is None:
            return self.predict(inputs, n_stages)
        x = self.features([v.get(self.field) for v in inputs])
        out = np.full((n_stages, len(inputs)), np.nan)
        for f, router in enumerate(folds):
            rows = np.arange(f, len(inputs), len(folds))
            out[:, rows] = self._predict(router.stages, x[rows], n_stages)
        return out

    # -- state -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "buckets": self.buckets, "tail": self.tail,
                               "stages": self.stages}
        if self.cross_fit is not None:
            out["cross_fit"] = self.cross_fit
        return out

    def set_state(self, state: dict[str, Any]) -> None:
        buckets, tail = state.get("buckets", self.buckets), state.get("tail", self.tail)
        field = state.get("field", self.field)
        for name, value, ok, expected in [
                ("buckets", buckets, _count(buckets) and buckets >= 1, "an integer >= 1"),
                ("tail", tail, _count(tail), "an integer >= 0"),
                ("field", field, isinstance(field, str) and field, "a field name")]:
            if not ok:
                raise bad_state("TextRouter", name, expected, value)
        stages = state.get("stages", {})
        cross_fit = state.get("cross_fit")
        checked = [stages] + (list(cross_fit.get("folds", [])) if isinstance(cross_fit, dict) else [])
        if cross_fit is not None and not (isinstance(cross_fit, dict)
                                          and isinstance(cross_fit.get("examples"), str)
                                          and isinstance(cross_fit.get("folds"), list)):
            raise ConfigError("TextRouter: cross_fit must be {'examples': DIGEST, 'folds': "
                              "[stages, ...]}; compile again to rebuild it")
        any_model = any(isinstance(m, dict) and m for m in checked)
        width = buckets + 1 + (self._embedding_width() if self.encoder is not None and any_model
                               else 0)
        for models in checked:
            if not isinstance(models, dict) or not all(_valid(k, m, width)
                                                       for k, m in models.items()):
                raise ConfigError(f"TextRouter: each stage's model must be {{'weights': "
                                  f"[{width} numbers], 'bias': number}} under a stage index; "
                                  f"compile again to rebuild it")
        self.field = field
        self.buckets, self.tail = buckets, tail
        self.stages = {k: {"weights": [float(w) for w in m["weights"]], "bias": float(m["bias"])}
                       for k, m in stages.items()}
        self.cross_fit = cross_fit


    def _embedding_width(self) -> int:
        return len(self.encoder.backend.embed(["width"])[0])  # type: ignore[union-attr]


def chance(model: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """One stage's model ({"weights", "bias"}) on feature rows `x`: the predicted chance of
    answering right."""
    z = x @ np.asarray(model["weights"]) + float(model["bias"])
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _valid(key: Any, model: Any, width: int) -> bool:
    return (isinstance(key, str) and key.isdigit() and isinstance(model, dict)
            and set(model) == {"weights", "bias"}
            and isinstance(model.get("weights"), list) and len(model["weights"]) == width
            and all(is_number(w) for w in model["weights"]) and is_number(model.get("bias")))


def entries(chances: np.ndarray, chain: list[int] | tuple[int, ...], threshold: float | None) -> np.ndarray:
    """Per example, the position in `chain` it enters at: the first stage whose predicted chance
    (`chances[stage, example]`) reaches `threshold`, else the last; all 0 without a threshold."""
    n = chances.shape[1]
    if threshold is None:
        return np.zeros(n, dtype=int)
    out = np.full(n, len(chain) - 1)
    for position in range(len(chain) - 2, -1, -1):
        row = np.nan_to_num(chances[chain[position]], nan=-np.inf)
        out[row >= threshold] = position
    return out
