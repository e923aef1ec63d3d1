"""`Retrieve`: a small, deterministic BM25 retriever over an in-memory corpus of passages.

It is a plain-Python node (no model): `question -> passages`, the top-k passages ranked by
Okapi BM25, best first. `Rectify` walks this ranked list when its verifier reports a retrieval
error, so the order must be reproducible: equal scores keep corpus order.

    retrieve = Retrieve(["Zorvik's capital is Maltor.", "Kesh was founded by Ilo."], k=2)
    retrieve.search("What is the capital of Zorvik?")   # [(0, 2.079...), (1, 0.0)]
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from tandemlm.compose import Node, NodeTrace
from tandemlm.compose.node import Fields
from tandemlm.runtime import ConfigError

if TYPE_CHECKING:
    from tandemlm.compose import RunContext

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore); punctuation separates words."""
    return _WORD.findall(str(text).lower())


class Retrieve(Node):
    """Rank `corpus` passages for a query with BM25 (Robertson idf, Lucene's non-negative form).

    Args:
        corpus: the passages, in a fixed order (ties keep it).
        k: how many passages to return per query (fewer when the corpus is smaller).
        name: node name.
        input: the query field (default "question").
        output: the field holding the ranked passages (default "passages").
        k1, b: BM25 term-frequency saturation and length normalisation.
        stopwords: words ignored in queries and passages.
    """

    def __init__(self, corpus: Iterable[str], *, k: int = 5, name: str = "retrieve",
                 input: str = "question", output: str = "passages", k1: float = 1.5,
                 b: float = 0.75, stopwords: Iterable[str] = ()) -> None:
        self.corpus = [str(p) for p in corpus]
        if not self.corpus:
            raise ConfigError("Retrieve needs a non-empty corpus (a list of passage strings)")
        if k < 1:
            raise ConfigError(f"Retrieve k must be >= 1, got {k}")
        self.name, self.k, self.k1, self.b = name, k, k1, b
        self.input, self.output = input, output
        self.stopwords = frozenset(w.lower() for w in stopwords)
        self._index()

    def _terms(self, text: str) -> list[str]:
        return [t for t in tokenize(text) if t not in self.stopwords]

    def _index(self) -> None:
        """Per term: the passages containing it and its count in each (an inverted index)."""
        docs = [Counter(self._terms(p)) for p in self.corpus]
        lengths = np.array([sum(d.values()) for d in docs], dtype=np.float64)
        self._norm = self.k1 * (1 - self.b + self.b * lengths / max(lengths.mean(), 1e-9))
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, doc in enumerate(docs):
            for term, count in doc.items():
                ids, counts = postings.setdefault(term, ([], []))
                ids.append(i)
                counts.append(count)
        n = len(docs)
        self._postings = {t: (np.array(ids), np.array(tf, dtype=np.float64),
                              math.log(1 + (n - len(ids) + 0.5) / (len(ids) + 0.5)))
                          for t, (ids, tf) in postings.items()}

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for `query` (a query term counts once per occurrence)."""
        scores = np.zeros(len(self.corpus))
        for term in self._terms(query):
            if term in self._postings:
                ids, tf, idf = self._postings[term]
                scores[ids] += idf * tf * (self.k1 + 1) / (tf + self._norm[ids])
        return scores

    def search(self, query: str, k: int | None = None) -> list[tuple[int, float]]:
        """The top-k (passage index, score) pairs, best first; equal scores keep corpus order."""
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[: k or self.k]
        return [(int(i), float(scores[i])) for i in order]

    # -- node interface ------------------------------------------------------------------
    @property
    def input_fields(self) -> Fields:
        return {self.input: Any}

    @property
    def output_fields(self) -> Fields:
        return {self.output: list[str]}

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        """Rank passages for every example; the trace's `info` keeps the indices and scores."""
        traces = []
        for values in inputs:
            start = time.perf_counter()
            hits = self.search(str(values[self.input]))
            trace = NodeTrace(node=self.name, inputs=values,
                              outputs={self.output: [self.corpus[i] for i, _ in hits]},
                              info={"ids": [i for i, _ in hits], "scores": [s for _, s in hits]})
            trace.latency_s = time.perf_counter() - start
            traces.append(trace)
        return traces
