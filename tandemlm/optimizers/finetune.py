"""`Finetune`: LoRA supervised fine-tuning of small LM nodes on the calls that passed the metric
(DaSLaM's decomposer, a proxy-tuning expert, any helper on a local model).

    compile(pipe, train, metric, passes=[Finetune(teacher={"small": large}, epochs=3)], out_dir="out/")

Per trainable node, in four named steps:

1. **rows** — the node's calls on trainset examples that passed the metric; with a `teacher`,
   the calls of the teacher sitting in the node's seat (the pipeline run with those models).
   Every node learns from its own rows only: two nodes sharing a base model get two adapters.
2. **select** — all of them (`"passed"`), MiniPLM's teacher-vs-reference difference
   (`"miniplm"`), or Ensemble-Instruct's majority vote of teacher samples (`"consensus"`); see
   `finetune_data`.
3. **train** — a LoRA adapter on the node's base model, each row formatted exactly as the node
   prompts at run time (its chat messages through the model's chat template) and the loss on
   the completion only, through the backend's `train_lora` and the one training loop `fit()`;
   saved (safetensors) under `out/adapters/NN-<node>`.
4. **bind** — the node gets `Model(same backend, id and options, adapter=that directory)`, a new
   fingerprint, so the call cache never serves it the base model's answers. A node bound to a
   model by name is bound directly to the new `Model`; other nodes keep the name.

A node whose model already carries an adapter has that adapter trained further (its rank and
target modules are kept), so a second Finetune refines the first instead of discarding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandemlm.compose import LMNode, Pipeline
from tandemlm.optimizers.finetune_data import (Row, consensus_votes, miniplm_scores, node_rows,
                                               top_fraction, train_adapter)
from tandemlm.optimizers.passes import CompileContext, Pass, lm_nodes, select_nodes, teacher_traces
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError, Model, use_cache
from tandemlm.runtime.types import LoraOptions

SELECTIONS = ("passed", "miniplm", "consensus")


def trains_lora(model: Model | None) -> bool:
    """A local generative model whose backend trains LoRA adapters here (`hf`)."""
    return (model is not None and model.trainable
            and callable(getattr(model.backend, "train_lora", None)))


def _describe(path: str, model: Model | None) -> str:
    if model is None:
        return f"'{path}' (no model bound)"
    return f"'{path}' (model '{model.name}' on backend '{model.backend_name}')"


def trainable_nodes(pipeline: Pipeline, names: list[str] | None) -> dict[str, tuple[LMNode, Model]]:
    """LM nodes (composites' children too) whose model can be fine-tuned here, by path;
    `names` picks some, and naming one that cannot be trained is a `ConfigError`."""
    found = {path: (node, pipeline.resolve(node.model)) for path, node in lm_nodes(pipeline).items()}
    ok = {path: (node, model) for path, (node, model) in found.items() if trains_lora(model)}
    if names is None:
        if not ok:
            raise CompileError(
                f"finetune: no LM node of pipeline '{pipeline.name}' runs on a model that can be "
                f"fine-tuned here (LoRA needs a local 'hf' model); LM nodes: "
                f"{', '.join(_describe(p, m) for p, (_, m) in found.items()) or 'none'}; bind the "
                f"node to learn to Model('hf', path), or drop Finetune from the passes")
        return ok
    picked = select_nodes(pipeline, names, LMNode, "LM node")
    for path in picked:
        if path not in ok:
            raise ConfigError(f"Finetune(nodes=[...]) names {_describe(path, found[path][1])}, which "
                              f"cannot be fine-tuned here (LoRA needs a local 'hf' model); "
                              f"trainable LM nodes: {', '.join(ok) or 'none'}")
    return {path: ok[path] for path in picked}




@dataclass
class Finetune(Pass):
    """Fine-tune a LoRA adapter per trainable LM node on its passing calls; see the module
    docstring.

    Args:
        nodes: node paths or names to fine-tune (default: every LM node on a trainable model).
        teacher: whose calls to learn from: `{"small": large_model}` or `{"small": "large"}` (a
            name the pipeline binds) rebinds the model name "small"; a key naming an LM node
            (`{"decompose": large_model}`) seats the teacher in that node only. The teacher
            answers in the small node's seat and the small node learns its passing answers.
        lora: LoRA shape, `{"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}`
            by default (any subset).
        epochs, lr, batch_size, accumulate, clip: training (see `tandemlm.runtime.train.fit`).
        select: "passed" (every passing call), "miniplm" (the `keep` fraction with the largest
            teacher-minus-reference log-likelihood; needs a teacher with logprobs) or
            "consensus" (rows on which a majority of `samples` teacher samples at `temperature`
            agree; the node's own model samples when there is no teacher).
        max_examples: at most this many rows per node (a seeded sample, after selection).
    """

    nodes: list[str] | None = None
    teacher: dict[str, Model | str] | None = None
    lora: dict[str, Any] = field(default_factory=dict)
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 8
    select: str = "passed"
    keep: float = 0.5
    samples: int = 5
    temperature: float = 0.7
    max_examples: int | None = None
    accumulate: int = 1
    clip: float | None = 1.0

    name = "finetune"

    def __post_init__(self) -> None:
        if isinstance(self.nodes, str):
            self.nodes = [self.nodes]
        LoraOptions.from_dict(self.lora)  # a typo in a LoRA option fails here, not mid-compile
        if not self.lr > 0 or self.temperature < 0:
            raise ConfigError(f"Finetune(lr={self.lr!r}, temperature={self.temperature!r}): expected "
                              f"lr > 0 and temperature >= 0")
        if self.select not in SELECTIONS:
            raise ConfigError(f"Finetune(select={self.select!r}): expected one of "
                              f"{', '.join(SELECTIONS)}")
        if self.select == "miniplm" and not self.teacher:
            raise ConfigError("Finetune(select='miniplm') ranks rows by teacher-minus-reference "
                              "log-likelihood, so it needs teacher={...}")
        for option in ("epochs", "batch_size", "accumulate", "samples"):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Finetune({option}={value!r}): expected an integer >= 1")
        if not 0.0 < self.keep <= 1.0:
            raise ConfigError(f"Finetune(keep={self.keep!r}): expected a fraction in (0, 1]")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"Finetune(max_examples={self.max_examples!r}): expected >= 1 or None")

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        targets = trainable_nodes(pipeline, self.nodes)
        teacher, source = (teacher_traces(pipeline, self.teacher, ctx, "Finetune") if self.teacher
                           else (None, traces))
        new = ctx.copy(pipeline)
        seats = lm_nodes(new)
        for path, (node, model) in targets.items():
            rows = self._rows(path, node, source, ctx)
            rows = self._select(path, node, model, rows, teacher, ctx)
            tuned = self._train(path, node, model, rows, ctx)
            seats[path].set_state({"model": tuned})
        return new

    # -- steps -----------------------------------------------------------------------------
    def _rows(self, path: str, node: LMNode, source: Traces, ctx: CompileContext) -> list[Row]:
        rows = node_rows(node, source.calls(path, passed=True))
        if not rows:
            passed = sum(source.passed(r) for r in source.records)
            who = "the teacher" if self.teacher else "the pipeline"
            raise CompileError(f"finetune: node '{path}' has no call on an example that passed the "
                               f"metric ({passed} of {len(source.records)} trainset examples passed "
                               f"with {who}); nothing to learn from. Give a teacher that solves "
                               f"the task (teacher={{'small': large}}) or check the metric")
        return rows

    def _select(self, path: str, node: LMNode, model: Model, rows: list[Row],
                teacher: Pipeline | None, ctx: CompileContext) -> list[Row]:
        """Rows kept by `select`, then capped at `max_examples`. Model calls go through the
        compile's call cache, so a resumed compile does not pay for them again."""
        candidates = len(rows)
        sampler = teacher.resolve(lm_nodes(teacher)[path].model) if teacher is not None else model
        with use_cache(ctx.store.cache):
            if self.select == "miniplm":
                scores = miniplm_scores(rows, sampler, model)
                rows = top_fraction(rows, scores, self.keep)
            elif self.select == "consensus":
                seed = ctx.rng(f"consensus:{path}").getrandbits(31)
                votes = consensus_votes(node, sampler, rows, self.samples, self.temperature, seed)
                rows = [row for row, v in zip(rows, votes, strict=True) if 2 * v > self.samples]
        if not rows:
            raise CompileError(f"finetune: select='{self.select}' kept none of node '{path}''s "
                               f"{candidates} rows; use select='passed', or (consensus) a lower "
                               f"temperature or a steadier teacher")
        if self.max_examples is not None and len(rows) > self.max_examples:
            picked = ctx.rng(f"sample:{path}").sample(range(len(rows)), self.max_examples)
            rows = [rows[i] for i in sorted(picked)]
        ctx.details.setdefault("rows", {})[path] = {"candidates": candidates, "kept": len(rows)}
        return rows

    def _train(self, path: str, node: LMNode, model: Model, rows: list[Row],
               ctx: CompileContext) -> Model:
        """Train the node's adapter and return the model that serves it."""
        return train_adapter(path, model, rows, ctx, lora=self.lora, epochs=self.epochs, lr=self.lr,
                             batch_size=self.batch_size, accumulate=self.accumulate, clip=self.clip)
