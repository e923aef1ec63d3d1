"""`TrainScorer` and `TrainRanker`: fit small cross-encoders on labels built from traces and the metric.

FrugalGPT's and Cappy's recipe: a scorer learns (input, output) -> "is this output correct?".

* A `Score` node judging a cascade stage learns from that stage's answers on *every* training
  example (see `stage_runs`), labelled by the metric. Judges that share one scorer model train
  one scorer on all their stages' answers: more data, one set of weights.
* A standalone `Score` node learns from its own calls, labelled by whether the example passed.
* `TrainRanker` fits a `Rank` node's cross-encoder on (query, item) pairs labelled by the
  example's gold items (`positives=` names the example field holding them).

A seeded slice of the examples (`holdout`) is kept out of training; the held-out AUC and accuracy
of the trained scorer, and of the scorer before training, are reported in the pass details.

    compile(pipe, train, metric, passes=[TrainScorer(train_encoder=True, epochs=3)])
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

from tandemlm.compose import Node, Pipeline
from tandemlm.compose.state import node_paths
from tandemlm.modules.rank import Rank
from tandemlm.modules.score import Score, classify_request
from tandemlm.optimizers.passes import CompileContext, Pass, select_nodes
from tandemlm.optimizers.stage_runs import cascade_inputs, cascades, run_every_stage
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import ClassifyRequest, CompileError, ConfigError, Model, use_cache

Example = tuple[int, ClassifyRequest, float]  # (example index, pair, label)


def auc(scores: list[float], labels: list[float]) -> float | None:
    """Area under the ROC curve (probability a positive outscores a negative; ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y >= 0.5]
    neg = [s for s, y in zip(scores, labels, strict=True) if y < 0.5]
    if not pos or not neg:
        return None
    ranked = sorted((s, i) for i, s in enumerate(pos + neg))
    ranks = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):  # average ranks over ties
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(ranks[: len(pos)])
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path)


@dataclass
class TrainScorer(Pass):
    """Train the cross-encoder of `Score` nodes (cascade judges included); see the module docstring.

    Args:
        nodes: Score nodes to train (paths or names); default: every Score node whose model is
            a trainable cross-encoder.
        epochs, lr, batch_size: training options (lr default: 5e-2 head only, 3e-5 with encoder).
        train_encoder: fine-tune the encoder too (better, slower) instead of only the head.
        holdout: fraction of examples kept out of training to measure the scorer.
    """

    nodes: list[str] | None = None
    epochs: int = 3
    lr: float | None = None
    batch_size: int = 16
    train_encoder: bool = False
    holdout: float = 0.2

    name = "train_scorer"
    kind: ClassVar[type[Node]] = Score

    def targets(self, pipeline: Pipeline) -> dict[str, Node]:
        found = select_nodes(pipeline, self.nodes, self.kind, self.kind.__name__)
        usable = {p: n for p, n in found.items() if _trainable_encoder(pipeline.resolve(n.model))}
        if self.nodes is not None and len(usable) < len(found):
            bad = sorted(set(found) - set(usable))
            raise ConfigError(f"{self.name}: node(s) {', '.join(bad)} do not score with a trainable "
                              f"cross-encoder (backend 'hf-classifier'); only those can be trained")
        if not usable:
            raise CompileError(f"{self.name}: pipeline '{pipeline.name}' has no {self.kind.__name__} "
                               f"node bound to a trainable cross-encoder (backend 'hf-classifier')")
        return usable

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        new = ctx.copy(pipeline)
        groups: dict[str, list[str]] = {}
        for path, node in self.targets(new).items():
            groups.setdefault(new.resolve(node.model).fingerprint, []).append(path)
        paths = node_paths(new)
        for members in groups.values():
            rows = [row for path in members for row in self.rows(new, path, traces, ctx)]
            trained = self._train(new.resolve(paths[members[0]].model), rows, members, ctx)
            for path in members:
                paths[path].set_state({"model": trained})
        return new

    # -- data ----------------------------------------------------------------------------------
    def rows(self, pipeline: Pipeline, path: str, traces: Traces, ctx: CompileContext) -> list[Example]:
        """Labelled pairs for the node at `path`: judged cascade answers, else its own calls."""
        node = node_paths(pipeline)[path]
        for cascade_path, cascade in cascades(pipeline).items():
            stages = [s for s, j in enumerate(cascade.judges) if getattr(j, "node", None) is node]
            if stages:
                return self._cascade_rows(pipeline, cascade_path, stages, node, traces, ctx)
        index = {id(r): i for i, r in enumerate(traces.records)}
        return [(index[id(c.record)], classify_request({f: c.trace.inputs[f] for f in node.fields}),
                 float(c.passed)) for c in traces.calls(path)]

    def _cascade_rows(self, pipeline, path, stages, node, traces, ctx) -> list[Example]:
        reached = cascade_inputs(traces, path)
        index = {id(r.example): i for i, r in enumerate(traces.records)}
        runs = run_every_stage(pipeline, path, reached, ctx, judge=False)
        rows = []
        for s in stages:
            for (example, values), answer, ok in zip(reached, runs[s].answers, runs[s].correct,
                                                     strict=True):
                if answer.ok:
                    merged = {**values, **answer.outputs}
                    rows.append((index[id(example)],
                                 classify_request({f: merged[f] for f in node.fields}), float(ok)))
        return rows

    # -- training ------------------------------------------------------------------------------
    def _train(self, model: Model, rows: list[Example], members: list[str], ctx: CompileContext) -> Model:
        if not rows or len({y for _, _, y in rows}) < 2:
            raise CompileError(f"{self.name}: the traces give {len(rows)} labelled pairs for "
                               f"{', '.join(members)}, {'all with one label' if rows else ''}; a "
                               f"scorer needs correct and incorrect examples to learn from")
        rows = _unique(rows)
        examples = sorted({i for i, _, _ in rows})
        held = set(ctx.rng("holdout").sample(examples, int(len(examples) * self.holdout)))
        train = [r for r in rows if r[0] not in held]
        test = [r for r in rows if r[0] in held]
        out = ctx.artifact_dir("scorers", _slug(members[0]))
        ctx.reporter.note(f"{self.name}: {', '.join(members)}: training on {len(train)} pairs "
                          f"({sum(y for *_, y in train):.0f} positive), {len(test)} held out")
        steps = self.epochs * math.ceil(len(train) / self.batch_size)
        with ctx.reporter.progress(f"{self.name} {', '.join(members)}", steps) as advance:
            model.backend.train_head([(r.text, r.text_pair) for _, r, _ in train],
                                     [y for *_, y in train], out, epochs=self.epochs, lr=self.lr,
                                     batch_size=self.batch_size, train_encoder=self.train_encoder,
                                     seed=ctx.seed, progress=advance)
        options = {k: v for k, v in model.options.items() if k != "num_labels"}
        trained = Model(model.backend_name, str(out), name=model.name, params=model.params,
                        remote=model.remote, **options)
        ctx.details[members[0]] = {"pairs": len(train), "held_out": len(test),
                                   "auc_before": _auc_on(model, test, ctx),
                                   "auc_after": _auc_on(trained, test, ctx),
                                   "accuracy_after": _accuracy_on(trained, test, ctx)}
        ctx.reporter.note(f"{self.name}: held-out AUC {ctx.details[members[0]]['auc_before']} -> "
                          f"{ctx.details[members[0]]['auc_after']}")
        return trained


def _unique(rows: list[Example]) -> list[Example]:
    """One row per (example, pair): stages that gave the same answer to the same question make the
    same pair with the same label, and training on it twice only costs time (for yes/no answers
    most stages agree)."""
    seen: dict[tuple, Example] = {}
    for row in rows:
        seen.setdefault((row[0], row[1].text, row[1].text_pair), row)
    return list(seen.values())


def _trainable_encoder(model: Model | None) -> bool:
    return model is not None and model.supports("classify") and model.trainable


def _scores(model: Model, rows: list[Example], ctx: CompileContext) -> list[float | None]:
    with use_cache(ctx.store.cache):
        results = model.classify([r for _, r, _ in rows])
    return [r.positive if r.ok else None for r in results]


def _auc_on(model: Model, rows: list[Example], ctx: CompileContext) -> float | None:
    scored = [(s, y) for s, (*_, y) in zip(_scores(model, rows, ctx), rows, strict=True) if s is not None]
    return auc([s for s, _ in scored], [y for _, y in scored]) if scored else None


def _accuracy_on(model: Model, rows: list[Example], ctx: CompileContext) -> float | None:
    scored = [(s, y) for s, (*_, y) in zip(_scores(model, rows, ctx), rows, strict=True) if s is not None]
    return sum((s >= 0.5) == (y >= 0.5) for s, y in scored) / len(scored) if scored else None


@dataclass
class TrainRanker(TrainScorer):
    """Train a `Rank` node's cross-encoder on (query, item) pairs; an item is positive when it is
    among the example's `positives` field (e.g. the gold passages' ids or texts).

    Args:
        positives: the example field listing the relevant items (compared as `str`).
    """

    positives: str = "positives"

    name = "train_ranker"
    kind: ClassVar[type[Node]] = Rank

    def rows(self, pipeline: Pipeline, path: str, traces: Traces, ctx: CompileContext) -> list[Example]:
        node = node_paths(pipeline)[path]
        rows = []
        for i, record in enumerate(traces.records):
            if self.positives not in record.example:
                raise ConfigError(f"{self.name}: example {i} has no field '{self.positives}' listing "
                                  f"its relevant items; set TrainRanker(positives=...) to the field "
                                  f"that does")
            gold = {str(x) for x in record.example[self.positives]}
            for call in (c for c in traces.calls(path, ok=False) if c.record is record):
                for item in call.trace.inputs.get(node.items, []):
                    pair = classify_request({node.query: call.trace.inputs[node.query], "item": item})
                    rows.append((i, pair, float(str(item) in gold)))
        return rows
