"""`TrainScorer` and `TrainRanker`: fit small cross-encoders on labels built from traces and the metric.

FrugalGPT's and Cappy's recipe: a scorer learns (input, output) -> "is this output correct?".

* A `Score` node judging a cascade stage learns from that stage's answers on *every* training
  example (see `stage_runs`), labelled by the metric. Judges that share one scorer model train
  one scorer on all their stages' answers: more data, one set of weights.
* A standalone `Score` node learns from its own calls, labelled by whether the example passed.
* `TrainRanker` fits a `Rank` node's cross-encoder on (query, item) pairs labelled by the
  example's gold items (`positives=` names the example field holding them).

The scorer is a cross-encoder (its head, or with `train_encoder` the whole encoder, is trained)
or a small generative model asked the node's yes/no question (a LoRA adapter learns to answer
`yes` for right outputs and `no` for wrong ones); see `scorer_training`.

A seeded slice of the examples (`holdout`) is kept out of training; the held-out AUC and accuracy
of the trained scorer, and of the scorer before training, are reported in the pass details.

With `folds=k` the scorer is cross-fitted instead: k copies each learn from all examples but one
fold (an example's fold is a hash of the question the scorer reads: `stage_runs.fold_of`), then
one learns from them all and serves the program. The copies are kept in the node's state
(`Score.folds`), and the passes that follow on the same examples (`FitJudges`, `Calibrate`) score
each example with the copy that did not learn from it — honest scores on the whole split, so a
compile needs no separate calibration split. The reported AUC is then the copies' out-of-fold AUC over every
example (`holdout` is not used). It costs k + 1 trainings, each copy on (k − 1)/k of the rows.

    compile(pipe, train, metric, passes=[TrainScorer(train_encoder=True, epochs=3)])
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tandemlm.compose import Node, Pipeline
from tandemlm.compose.state import node_paths
from tandemlm.modules.rank import Rank
from tandemlm.modules.score import Score
from tandemlm.optimizers import scorer_training
from tandemlm.optimizers.passes import CompileContext, Pass, select_nodes
from tandemlm.optimizers.stage_runs import (cascade_inputs, cascades, fold_key, fold_of,
                                             run_every_stage)
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError, Model, use_cache
from tandemlm.runtime.train import count_steps

#: (example index, field -> value, label, fold key: what the example's fold is hashed from)
Example = tuple[int, dict[str, Any], float, dict[str, Any]]


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




@dataclass
class TrainScorer(Pass):
    """Train the cross-encoder of `Score` nodes (cascade judges included); see the module docstring.

    Args:
        nodes: Score nodes to train (paths or names); default: every Score node whose model is
            a trainable cross-encoder.
        epochs, lr, batch_size: training options (lr default: 5e-2 for a head alone, 3e-5 with
            the encoder, 2e-4 for a generative scorer's LoRA adapter).
        train_encoder: fine-tune a cross-encoder's encoder too (better, slower) than its head alone.
        lora: LoRA shape for a generative scorer (as `Finetune`'s).
        holdout: fraction of examples kept out of training to measure the scorer.
        folds: cross-fit the scorer in this many folds (0: off); see the module docstring.
    """

    nodes: list[str] | None = None
    epochs: int = 3
    lr: float | None = None
    batch_size: int = 16
    train_encoder: bool = False
    holdout: float = 0.2
    lora: dict[str, Any] = field(default_factory=dict)
    folds: int = 0

    name = "train_scorer"
    kind: ClassVar[type[Node]] = Score

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"{type(self).__name__}(folds={self.folds}): use 0 (no cross-fit) "
                              f"or 2 or more folds")
        if self.folds and self.kind is not Score:
            raise ConfigError(f"{type(self).__name__}(folds={self.folds}): only cascade judges' "
                              f"scorers are cross-fitted (their out-of-fold scores calibrate the "
                              f"cascade); a {self.kind.__name__} node has no use for folds")

    def targets(self, pipeline: Pipeline) -> dict[str, Node]:
        found = select_nodes(pipeline, self.nodes, self.kind, self.kind.__name__)
        usable = {p: n for p, n in found.items()
                  if scorer_training.kind_of(pipeline.resolve(n.model)) is not None}
        if self.nodes is not None and len(usable) < len(found):
            bad = sorted(set(found) - set(usable))
            raise ConfigError(f"{self.name}: node(s) {', '.join(bad)} do not score with a trainable "
                              f"model (a cross-encoder on 'hf-classifier' or a generative 'hf' "
                              f"model); only those can be trained")
        if not usable:
            raise CompileError(f"{self.name}: pipeline '{pipeline.name}' has no {self.kind.__name__} "
                               f"node bound to a trainable scorer (a cross-encoder on backend "
                               f"'hf-classifier' or a generative model on backend 'hf')")
        return usable

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        new = ctx.copy(pipeline)
        groups: dict[str, list[str]] = {}
        for path, node in self.targets(new).items():
            groups.setdefault(new.resolve(node.model).fingerprint, []).append(path)
        paths = node_paths(new)
        for members in groups.values():
            rows = [row for path in members for row in self.rows(new, path, traces, ctx)]
            trained, folds = self._train(new.resolve(paths[members[0]].model), paths[members[0]],
                                         rows, members, ctx)
            for path in members:
                paths[path].set_state({"model": trained, **({"folds": folds} if folds else {})})
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
        return [(index[id(c.record)], {f: c.trace.inputs[f] for f in node.fields}, float(c.passed),
                 {node.fields[0]: c.trace.inputs[node.fields[0]]}) for c in traces.calls(path)]

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
                    rows.append((index[id(example)], {f: merged[f] for f in node.fields}, float(ok),
                                 fold_key(node, values)))
        return rows

    # -- training ------------------------------------------------------------------------------
    def _train(self, model: Model, node: Node, rows: list[Example], members: list[str],
               ctx: CompileContext) -> tuple[Model, list[Model]]:
        """The trained scorer, and with `folds` its cross-fitted copies."""
        if not rows or len({r[2] for r in rows}) < 2:
            raise CompileError(f"{self.name}: the traces give {len(rows)} labelled pairs for "
                               f"{', '.join(members)}, {'all with one label' if rows else ''}; a "
                               f"scorer needs correct and incorrect examples to learn from")
        rows = _unique(rows)
        kind = scorer_training.kind_of(model)
        out = ctx.artifact_dir("scorers", members[0])
        what = f"{self.name}: {', '.join(members)}: training a {kind.replace('_', ' ')} scorer"
        if self.folds:
            return self._cross_fit(model, node, rows, members, kind, out, what, ctx)
        examples = sorted({r[0] for r in rows})
        held = set(ctx.rng("holdout").sample(examples, int(len(examples) * self.holdout)))
        train = [r for r in rows if r[0] not in held]
        test = [r for r in rows if r[0] in held]
        ctx.reporter.note(f"{what} on {len(train)} pairs ({sum(r[2] for r in train):.0f} positive), "
                          f"{len(test)} held out")
        trained = self._fit_rows(model, node, train, members, kind, out, ctx)
        before, after = (_held_out(m, node, test, ctx) for m in (model, trained))
        ctx.details[members[0]] = {"kind": kind, "pairs": len(train), "held_out": len(test),
                                   "auc_before": before[0], "auc_after": after[0],
                                   "accuracy_after": after[1]}
        ctx.reporter.note(f"{self.name}: held-out AUC {_fmt(before[0])} -> {_fmt(after[0])}, "
                          f"accuracy {_fmt(after[1])}")
        return trained, []

    def _cross_fit(self, model: Model, node: Node, rows: list[Example], members: list[str],
                   kind: str, out: Path, what: str, ctx: CompileContext) -> tuple[Model, list[Model]]:
        """k copies, each without one fold, scored on that fold; then one on every row."""
        fold = [fold_of(r[3], self.folds) for r in rows]
        ctx.reporter.note(f"{what}, cross-fitted in {self.folds} folds, on {len(rows)} pairs "
                          f"({sum(r[2] for r in rows):.0f} positive)")
        copies: list[Model] = []
        held_out: list[float | None] = [None] * len(rows)
        for f in range(self.folds):
            train = [r for r, g in zip(rows, fold, strict=True) if g != f]
            if len({r[2] for r in train}) < 2:
                raise CompileError(f"{self.name}: without fold {f} the pairs of {members[0]} all "
                                   f"have one label; too few examples to cross-fit in "
                                   f"{self.folds} folds (use fewer, or folds=0)")
            copy = self._fit_rows(model, node, train, members, kind, out / f"fold-{f}", ctx,
                                  f" (fold {f + 1} of {self.folds})")
            mine = [i for i, g in enumerate(fold) if g == f]
            with use_cache(ctx.store.cache):
                got = scorer_training.scores(copy, node, [rows[i][1] for i in mine])
            for i, score in zip(mine, got, strict=True):
                held_out[i] = score
            copies.append(copy)
        trained = self._fit_rows(model, node, rows, members, kind, out / "all", ctx, " (all rows)")
        before = _held_out(model, node, rows, ctx)[0]
        after, accuracy = _auc_accuracy(held_out, rows)
        ctx.details[members[0]] = {"kind": kind, "pairs": len(rows), "folds": self.folds,
                                   "auc_before": before, "auc_after": after,
                                   "accuracy_after": accuracy}
        ctx.reporter.note(f"{self.name}: out-of-fold AUC {_fmt(before)} (untrained) -> {_fmt(after)}")
        return trained, copies

    def _fit_rows(self, model: Model, node: Node, rows: list[Example], members: list[str],
                  kind: str, out: Path, ctx: CompileContext, label: str = "") -> Model:
        out.mkdir(parents=True, exist_ok=True)
        total = count_steps(math.ceil(len(rows) / self.batch_size), self.epochs)
        with ctx.reporter.progress(f"{self.name} {', '.join(members)}{label}", total) as advance:
            return scorer_training.train(
                kind, model, node, [r[1] for r in rows], [r[2] for r in rows], out,
                epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                train_encoder=self.train_encoder, lora=self.lora, seed=ctx.seed, progress=advance)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _unique(rows: list[Example]) -> list[Example]:
    """One row per (example, pair): stages that gave the same answer to the same question make the
    same pair with the same label, and training on it twice only costs time (for yes/no answers
    most stages agree)."""
    seen: dict[tuple, Example] = {}
    for row in rows:
        seen.setdefault((row[0], json.dumps(row[1], sort_keys=True, default=str)), row)
    return list(seen.values())


def _held_out(model: Model, node: Node, rows: list[Example],
              ctx: CompileContext) -> tuple[float | None, float | None]:
    """(AUC, accuracy at 0.5) of `model`'s scores on the held-out rows."""
    with use_cache(ctx.store.cache):
        return _auc_accuracy(scorer_training.scores(model, node, [r[1] for r in rows]), rows)


def _auc_accuracy(got: list[float | None], rows: list[Example]) -> tuple[float | None, float | None]:
    """(AUC, accuracy at 0.5) of scores against the rows' labels; unscored rows are left out."""
    scored = [(s, r[2]) for s, r in zip(got, rows, strict=True) if s is not None]
    if not scored:
        return None, None
    accuracy = sum((s >= 0.5) == (y >= 0.5) for s, y in scored) / len(scored)
    return auc([s for s, _ in scored], [y for _, y in scored]), accuracy


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
                    row = {node.query: call.trace.inputs[node.query], node.item_label: item}
                    rows.append((i, row, float(str(item) in gold), {node.query: row[node.query]}))
        return rows
