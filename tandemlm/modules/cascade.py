"""`Cascade` (FrugalGPT, AutoMix): try cheap solvers first, escalate only what their judge rejects.

Stages are (solver, judge, threshold). Every pending example goes to the stage's solver in one
batch; the judge scores the answers in one batch; an example whose score reaches the threshold
stops there, the rest move on; the last stage always answers. An example's trace records which
stage answered, each stage's score and what each stage cost (solver + judge calls).

With a `TextRouter` whose threshold is set, an example enters the chain at the stage the router
picks from its input (skipping cheaper ones) and goes on from there; a judge threshold of -inf
accepts every answer of that stage without calling the judge (with a router: pure routing).

    cascade = Cascade([
        Stage(Solve(model="small"), judge=Score(model="scorer"), threshold=0.7),
        Stage(Solve(model="large")),
    ])
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Any

from tandemlm.compose import Composite, Node, NodeTrace, RunContext
from tandemlm.compose.node import Fields, bad_state, is_number
from tandemlm.compose.trace import account, spent
from tandemlm.modules.judges import Judge, as_judge
from tandemlm.modules.router import TextRouter, entries
from tandemlm.runtime import ConfigError


def json_threshold(value: float) -> float | str:
    """A threshold as JSON can hold it: +inf ("never stop at this stage") as the string "inf",
    -inf ("always stop here, unjudged") as "-inf", which `_threshold` reads back."""
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _threshold(value: Any, where: str) -> float:
    """A saved threshold: a number, ±inf (as JSON holds it: "inf"/"-inf"), never NaN, which
    compares false with every score and so would make a stage answer unjudged."""
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if not (is_number(value) or (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                 and math.isinf(value))):
        raise bad_state(where, "thresholds", 'numbers, "inf" or "-inf" (never NaN)', value)
    return float(value)


@dataclass
class Stage:
    """One cascade stage. The last stage needs no judge: it always answers."""

    solver: Node
    judge: Node | Judge | None = None
    threshold: float = 0.5


class Cascade(Composite):
    """Ordered stages of (solver, judge, threshold); see the module docstring."""

    def __init__(self, stages: list[Stage], *, router: TextRouter | None = None,
                 name: str = "cascade") -> None:
        super().__init__(name)
        if len(stages) < 2:
            raise ConfigError(f"cascade '{name}' needs at least two stages, got {len(stages)}")
        outputs = [set(s.solver.output_fields) for s in stages]
        if any(o != outputs[0] for o in outputs):
            raise ConfigError(f"cascade '{name}': every stage's solver must produce the same fields; "
                              f"got {[sorted(o) for o in outputs]}")
        for i, stage in enumerate(stages[:-1]):
            if stage.judge is None:
                raise ConfigError(f"cascade '{name}': stage {i} needs a judge (only the last stage "
                                  f"answers unjudged)")
        self.solvers = [s.solver for s in stages]  # so named_predictors() finds the LM nodes
        self.judges = [as_judge(s.judge) for s in stages]
        self.judge_nodes = [j.node for j in self.judges if getattr(j, "node", None) is not None]
        self.thresholds = [float(s.threshold) for s in stages]
        #: which stages run, in which order (Calibrate may drop or reorder stages); the last one
        #: answers unjudged. Thresholds are indexed by stage, not by position.
        self.order = list(range(len(stages)))
        self.router = router
        #: the router's entry threshold (see `TextRouter`); None: every example enters first
        self.router_threshold: float | None = None
        if router is not None and not isinstance(router, TextRouter):
            raise ConfigError(f"cascade '{name}': router must be a TextRouter, got "
                              f"{type(router).__name__}")

    def state(self) -> dict[str, Any]:
        judges = {str(i): j.state() for i, j in enumerate(self.judges) if hasattr(j, "state")}
        routing = {"router": self.router.state(), "router_threshold": self.router_threshold} \
            if self.router is not None else {}
        return {"thresholds": [json_threshold(t) for t in self.thresholds], "order": list(self.order),
                **({"judges": judges} if judges else {}), **routing}

    def set_state(self, state: dict[str, Any]) -> None:
        n, where = len(self.solvers), f"cascade '{self.name}'"
        order = state.get("order", self.order)
        if not isinstance(order, list) or not all(isinstance(i, numbers.Integral)
                                                  and not isinstance(i, bool) for i in order):
            raise bad_state(where, "order", "a list of stage indices", order)
        order = [int(i) for i in order]
        thresholds = [_threshold(t, where) for t in state.get("thresholds", self.thresholds)] \
            if isinstance(state.get("thresholds", []), list) else None
        if thresholds is None:
            raise bad_state(where, "thresholds", "a list of numbers", state["thresholds"])
        if not order or len(set(order)) != len(order) or not all(0 <= i < n for i in order) \
                or len(thresholds) != n:
            raise ConfigError(f"cascade '{self.name}': invalid state (order {order}, "
                              f"{len(thresholds)} thresholds) for {n} stages")
        if any(self.judges[i] is None for i in order[:-1]):
            raise ConfigError(f"cascade '{self.name}': order {order} puts a stage without a judge "
                              f"before the last position")
        judges = state.get("judges", {})
        if not isinstance(judges, dict) or not all(isinstance(i, str) and i.isdigit()
                                                   and isinstance(s, dict)
                                                   for i, s in judges.items()):
            raise bad_state(where, "judges", "an object of judge states by stage index", judges)
        for i, judge_state in judges.items():
            judge = self.judges[int(i)] if int(i) < n else None
            if not hasattr(judge, "set_state"):
                raise ConfigError(f"cascade '{self.name}': state for judge {i}, which keeps none")
            judge.set_state(judge_state)
        self._set_routing(state)
        self.order, self.thresholds = order, thresholds

    def _set_routing(self, state: dict[str, Any]) -> None:
        threshold = state.get("router_threshold")
        if ("router" in state or threshold is not None) and self.router is None:
            raise ConfigError(f"cascade '{self.name}': the saved state routes examples, but this "
                              f"cascade has no router; build it with Cascade(..., router="
                              f"TextRouter(...))")
        if threshold is not None and not (isinstance(threshold, (int, float))
                                          and math.isfinite(threshold)):
            raise ConfigError(f"cascade '{self.name}': router_threshold must be a number or "
                              f"null, got {threshold!r}")
        if "router" in state:
            self.router.set_state(state["router"])  # type: ignore[union-attr]
        if threshold is not None and not self.router.fitted:  # type: ignore[union-attr]
            raise ConfigError(f"cascade '{self.name}': a router threshold without a fitted "
                              f"router; compile with TrainRouter first")
        self.router_threshold = None if threshold is None else float(threshold)

    def children(self) -> list[Node]:
        return [*self.solvers, *self.judge_nodes]

    def diagram(self) -> list[tuple[Node, Node, str]]:
        """Each stage's solver to its judge, and on to the next stage below its threshold."""
        edges = []
        for position, (i, j) in enumerate(itertools.pairwise(self.order)):
            judge = getattr(self.judges[i], "node", None)
            below = f"below {self.thresholds[i]:.3g}"
            if judge is not None:
                edges += [(self.solvers[i], judge, f"{position + 1}. answer"),
                          (judge, self.solvers[j], below)]
            else:
                edges.append((self.solvers[i], self.solvers[j],
                              f"{type(self.judges[i]).__name__} {below}"))
        return edges

    def routes(self):
        mine = set(self.input_fields)
        routes = [(ref, mine) for s in self.solvers for ref, _ in s.routes()]
        for solver, judge in zip(self.solvers, self.judges, strict=True):
            if judge is not None:
                routes += [(ref, mine | set(solver.output_fields)) for ref, _ in judge.routes(solver)]
        return routes

    @property
    def input_fields(self) -> Fields:
        fields: Fields = {self.router.field: Any} if self.router is not None else {}
        for solver, judge in zip(self.solvers, self.judges, strict=True):
            fields.update(solver.input_fields)
            if judge is not None:
                produced = set(solver.output_fields)
                fields.update({f: Any for f in judge.input_fields(solver) if f not in produced})
        return fields

    @property
    def output_fields(self) -> Fields:
        return dict(self.solvers[0].output_fields)

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        traces = [NodeTrace(node=self.name, inputs=x, info={"scores": [], "stage_costs": []})
                  for x in inputs]
        entry = self._entries(inputs, traces)
        pending: list[int] = []
        earlier: list[list[dict[str, Any]]] = [[] for _ in inputs]  # answers of stages passed
        last = self.order[-1]
        for position, s in enumerate(self.order):
            solver, judge = self.solvers[s], self.judges[s]
            pending = sorted(pending + [i for i in range(len(inputs)) if entry[i] == position])
            if not pending:
                continue
            rows = [{f: inputs[i][f] for f in solver.input_fields} for i in pending]
            answers = ctx.run(solver, rows)
            answered = [k for k, a in enumerate(answers) if a.ok]
            scores: list[float | None] = [None] * len(pending)
            judged: list[NodeTrace | None] = [None] * len(pending)
            if s != last and answered and self.thresholds[s] > -math.inf:
                got, judge_traces = judge.score(ctx, solver, [inputs[pending[k]] for k in answered],
                                                [answers[k] for k in answered],
                                                [earlier[pending[k]] for k in answered])
                for k, score, trace in zip(answered, got, judge_traces, strict=True):
                    scores[k], judged[k] = score, trace
            still = []
            for k, i in enumerate(pending):
                paid = [answers[k]] + ([judged[k]] if judged[k] is not None else [])
                trace = traces[i]
                trace.children.extend(paid)
                trace.info["scores"].append(scores[k])
                trace.info["stage_costs"].append(spent(paid))
                accepted = s == last or self.thresholds[s] == -math.inf or \
                    (scores[k] is not None and scores[k] >= self.thresholds[s])
                if answers[k].ok and accepted:
                    trace.outputs, trace.info["answered_by"] = dict(answers[k].outputs), s
                elif s == last:
                    trace.error = f"last stage failed: {answers[k].node}: {answers[k].error}"
                else:
                    still.append(i)  # rejected, unjudgeable or failed: escalate
                    if answers[k].ok:
                        earlier[i].append(dict(answers[k].outputs))
            pending = still
        return traces

    def _entries(self, inputs: list[dict[str, Any]], traces: list[NodeTrace]) -> list[int]:
        """Where each example enters the chain: 0 unless the router is on."""
        if self.router is None or self.router_threshold is None or not inputs:
            return [0] * len(inputs)
        chances = self.router.predict(inputs, len(self.solvers))
        out = entries(chances, self.order, self.router_threshold).tolist()
        for trace, position in zip(traces, out, strict=True):
            trace.info["entered_at"] = self.order[position]
        encoder = self.router.encoder
        for trace, call in zip(traces, self.router.calls(inputs), strict=False):
            routed = NodeTrace(node=f"{self.name}.router", inputs={}, model=encoder.name)
            account(routed, encoder, call)  # the router's own call, charged to its example
            trace.children.append(routed)
        return out
