"""`TuneMix`: fit a `LogitMix`'s expert and pick its weight (proxy-tuning's α) on the valset.

The expert term (`expert`, default the second) gets a LoRA adapter trained on the trainset's
(prompt, gold output) pairs, rendered as that term renders its prompt (`chat=True`: the model's
chat template), starting from its current weights; its anti-expert — every other term with a
negative weight — keeps the untuned model. Then each α in `alphas` is tried (the expert's weight
α, each anti-expert's −α) and the best by the metric on the valset (the trainset without one) is
kept; the report lists every α's score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.compose.state import node_paths
from tandemlm.modules.logit_mix import LogitMix
from tandemlm.optimizers.passes import CompileContext, Pass
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError, GenRequest, Model
from tandemlm.runtime.types import LoraOptions


@dataclass
class TuneMix(Pass):
    """See the module docstring.

    Args:
        alphas: expert weights tried.
        expert: index of the expert term.
        train_expert: fine-tune the expert first (False: only pick α).
        epochs, lr, batch_size, lora: LoRA training options (as `Finetune`'s).
        nodes: LogitMix nodes to tune (paths or names); default: all.
    """

    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    expert: int = 1
    train_expert: bool = True
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 8
    lora: dict[str, Any] = field(default_factory=dict)
    nodes: list[str] | None = None

    name = "tune_mix"

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ConfigError("TuneMix needs at least one alpha")

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        new = ctx.copy(pipeline)
        mixes = {p: n for p, n in node_paths(new).items() if isinstance(n, LogitMix)
                 and (self.nodes is None or p in self.nodes or n.name in self.nodes)}
        if not mixes:
            raise CompileError(f"{self.name}: pipeline '{new.name}' has no LogitMix node")
        for path, node in mixes.items():
            if not 0 <= self.expert < len(node.terms):
                raise ConfigError(f"{self.name}: LogitMix '{path}' has no term {self.expert}")
            if self.train_expert:
                self._train(path, node, ctx)
            self._pick(path, node, new, ctx)
        return new

    def _train(self, path: str, node: LogitMix, ctx: CompileContext) -> None:
        term = node.terms[self.expert]
        rows = [(GenRequest(messages=({"role": "user", "content": str(x[node.prompt_field])},))
                 if term.chat else GenRequest(prompt=str(x[node.prompt_field])), str(x[node.output]))
                for x in ctx.trainset if x.get(node.output) is not None]
        if not rows:
            raise CompileError(f"{self.name}: no trainset example gives '{node.output}' to train the "
                               f"expert of '{path}' on")
        out = ctx.artifact_dir("adapters", path)
        term.model.require("train")
        term.model.backend.train_lora(rows, out, lora=LoraOptions.from_dict(self.lora), epochs=self.epochs,
                                      lr=self.lr, batch_size=self.batch_size, seed=ctx.seed)
        base = term.model
        term.model = Model(base.backend_name, base.id, adapter=str(out), name=f"{base.name}-expert",
                           price=base.price, params=base.params, **base.options)
        ctx.reporter.note(f"{self.name} {path}: trained the expert on {len(rows)} examples")

    def _pick(self, path: str, node: LogitMix, pipeline: Pipeline, ctx: CompileContext) -> None:
        anti = [i for i, t in enumerate(node.terms) if t.weight < 0 and i != self.expert]
        scores = {}
        for alpha in self.alphas:
            self._set(node, alpha, anti)
            scores[alpha] = ctx.traces(pipeline, "val" if ctx.valset else "train").score
        best = max(self.alphas, key=lambda a: (scores[a], -abs(a)))
        self._set(node, best, anti)
        ctx.details[path] = {"alpha": best, "scores": {str(a): s for a, s in scores.items()}}
        ctx.reporter.note(f"{self.name} {path}: alpha {best} ("
                          + ", ".join(f"{a}: {s:.3f}" for a, s in scores.items()) + ")")

    def _set(self, node: LogitMix, alpha: float, anti: list[int]) -> None:
        node.terms[self.expert].weight = alpha
        for i in anti:
            node.terms[i].weight = -alpha
