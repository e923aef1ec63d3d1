"""The pass contract: `apply(pipeline, traces, ctx) -> pipeline`.

A pass is a dataclass of its options (so its configuration is data: recorded in the artifact and
compared when a compile resumes). It reads the traces of the pipeline on the trainset, returns a
changed copy of the pipeline, writes any files it produces under `ctx.artifact_dir(...)`, and keeps
no per-run state on `self`. It reports through `ctx.reporter`, never `print`.

    @dataclass
    class DropDemos(Pass):
        name = "drop_demos"
        def apply(self, pipeline, traces, ctx):
            new = ctx.copy(pipeline)
            for node in lm_nodes(new).values():
                node.demos = []
            return new
"""

from __future__ import annotations

import copy
import dataclasses
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandemlm.compose import LMNode, Node, Pipeline
from tandemlm.compose.state import node_paths
from tandemlm.evaluate.metrics import Metric
from tandemlm.optimizers.report import Reporter
from tandemlm.optimizers.trace_store import Traces, TraceStore
from tandemlm.runtime.verified_files import release


@dataclass(frozen=True)
class CompileContext:
    """What a pass runs with.

    Attributes:
        trainset, valset: examples (dicts); `valset` is empty when none was given.
        metric: the user's metric.
        store: the trace store (shared call cache) for running pipelines.
        out: the artifact directory of the compile.
        index: this pass's position in the compile (artifact names carry it).
        seed: the compile's seed; passes derive their randomness from it.
        reporter: progress and messages.
        details: figures the pass reports.
        unlabeled: inputs without labels (`compile(..., unlabeled=...)`): passes may run the
            program on them (`unlabeled_traces`) but never ask the metric about them.
    """

    trainset: list[dict[str, Any]]
    valset: list[dict[str, Any]]
    metric: Metric
    store: TraceStore
    out: Path
    index: int = 0
    seed: int = 0
    reporter: Reporter = dataclasses.field(default_factory=Reporter)
    #: figures a pass reports (held-out AUC, chosen thresholds, ...); saved in report.json
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    unlabeled: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def traces(self, pipeline: Pipeline, split: str = "train") -> Traces:
        """Run `pipeline` on the trainset (or "val") through the shared call cache."""
        return self.store.run(pipeline, self.trainset if split == "train" else self.valset)

    def unlabeled_traces(self, pipeline: Pipeline) -> Traces | None:
        """Run `pipeline` on the unlabeled inputs (through the shared call cache), with no metric;
        None when the compile has none."""
        if not self.unlabeled:
            return None
        return self.store.run(pipeline, self.unlabeled, metric=unscored)

    def calibration_traces(self, pipeline: Pipeline, traces: Traces) -> Traces:
        """The traces a pass fits judges, routers or thresholds on: `pipeline` run on the valset
        when the compile has one, else `traces` (the train split's)."""
        return self.traces(pipeline, "val") if self.valset else traces

    def artifact_dir(self, kind: str, name: str) -> Path:
        """A fresh directory `out/<kind>/<index>-<name>` for files this pass writes (adapters,
        scorers, curves); `name` may be a node path ("cascade/judge_0" -> "cascade_judge_0").
        A pass that crashed left it half-written; re-running clears it."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "node"
        path = self.out / kind / f"{self.index:02d}-{slug}"
        release([path])  # digests a resumed record pinned describe the files removed here
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def rng(self, salt: str = "") -> random.Random:
        return random.Random(f"{self.seed}:{self.index}:{salt}")

    @staticmethod
    def copy(pipeline: Pipeline) -> Pipeline:
        """A copy whose node state a pass may change (models are shared handles, never copied)."""
        return copy.deepcopy(pipeline)


def unscored(example: Any, prediction: Any, trace: Any = None) -> float:
    """The metric of unlabeled inputs: there is nothing to compare with."""
    return 0.0


class Pass:
    """Base of compiler passes (subclasses are dataclasses); see the module docstring."""

    name = "pass"

    def config(self) -> dict[str, Any]:
        """The options as JSON values (artifacts record them; resume compares them)."""
        if dataclasses.is_dataclass(self):
            return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {}

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        raise NotImplementedError


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())  # a Model's options may hold a test double's callables
    return getattr(value, "__name__", None) or repr(value)


def lm_nodes(pipeline: Pipeline) -> dict[str, LMNode]:
    """Every LM node, composites' children included, by path."""
    return {path: node for path, node in node_paths(pipeline).items() if isinstance(node, LMNode)}


def select_nodes(pipeline: Pipeline, names: list[str] | None, kind: type[Node] = Node,
                 what: str = "node") -> dict[str, Node]:
    """Nodes of `kind` by path; `names` (paths or plain node names) picks some, and a name that
    matches none is a `ConfigError` listing what exists."""
    from tandemlm.runtime import ConfigError

    found = {p: n for p, n in node_paths(pipeline).items() if isinstance(n, kind)}
    if names is None:
        return found
    picked = {}
    for name in names:
        hits = {p: n for p, n in found.items() if p == name or n.name == name}
        if not hits:
            raise ConfigError(f"no {what} named '{name}' in pipeline '{pipeline.name}'; "
                              f"{what}s: {', '.join(found) or 'none'}")
        picked.update(hits)
    return picked


def seat_teacher(pipeline: Pipeline, teacher: dict[str, Any], owner: str) -> Pipeline:
    """A copy of `pipeline` with teacher models in some seats, for collecting traces.

    A key naming a model the pipeline binds rebinds that name; a key naming an LM node seats the
    teacher in that node alone (a node an earlier Finetune bound directly to its tuned model is
    reached by no name). A value is a `Model` or the name of a model the pipeline binds.
    `owner` ("Finetune", "BootstrapDemos") names the pass in error messages.
    """
    from tandemlm.runtime import ConfigError, Model

    bound = ", ".join(sorted(pipeline.models)) or "none"
    by_name, by_node = {}, {}
    for seat, model in teacher.items():
        if not isinstance(model, (Model, str)):
            raise ConfigError(f"{owner}(teacher={{'{seat}': ...}}): expected a Model or a model "
                              f"name the pipeline binds, got {type(model).__name__}")
        if isinstance(model, str):
            if model not in pipeline.models:
                raise ConfigError(f"{owner}(teacher={{'{seat}': '{model}'}}): the pipeline binds no "
                                  f"model named '{model}' (it binds {bound})")
            model = pipeline.models[model]
        (by_name if seat in pipeline.models else by_node)[seat] = model
    seated = pipeline.with_models(**by_name)
    for seat, model in by_node.items():
        try:
            nodes = select_nodes(seated, [seat], LMNode, "LM node")
        except ConfigError:
            raise ConfigError(f"{owner}(teacher={{'{seat}': ...}}): '{seat}' is neither a model name "
                              f"the pipeline binds ({bound}) nor an LM node "
                              f"({', '.join(lm_nodes(seated))})") from None
        for node in nodes.values():
            node.model = model
    return seated


def teacher_traces(pipeline: Pipeline, teacher: dict[str, Any], ctx: CompileContext,
                   owner: str) -> tuple[Pipeline, Traces]:
    """The pipeline with the teacher seated (see `seat_teacher`) and its traces on the trainset;
    the teacher's score goes into the pass details."""
    seated = seat_teacher(pipeline, teacher, owner)
    ctx.reporter.note(f"{owner}: running the trainset with the teacher ("
                      + ", ".join(f"{seat}={m if isinstance(m, str) else m.name}"
                                  for seat, m in teacher.items()) + ")")
    found = ctx.traces(seated, "train")
    ctx.details["teacher_score"] = found.score
    return seated, found
