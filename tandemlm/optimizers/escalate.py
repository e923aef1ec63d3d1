"""`Escalate`: a cascade's small first stage learns from what it escalated (RouteNLP's loop, in
a compiler): rounds of certify → learn → certify again, while the certified cost falls.

Each round:

1. **certify** — `Calibrate(epsilon=...)` chooses the cascade's configuration and its promise
   (the reference: the best single stage on the labelled rows);
2. **collect** — the calibrated cascade runs on the inputs set aside for learning; those its
   first trainable stage did not answer (its judge passed them up, or the router sent them on)
   are the escalated ones;
3. **learn** — the reference stage answers them (through the call cache: paid once) and the first
   stage gets a LoRA adapter trained on those answers, each in the stage's own prompt and reply
   format (an answer that does not fit the stage's output types is left out);
4. **certify again** — the new round is kept when its certified cost is lower; otherwise the
   previous round's program is, and the loop stops.

Which rows do what: the unlabeled inputs are split (seeded, by content) into a share the stage
learns from (`learn`) and the rest, which certify with the labelled rows. The stage never
learns from a row it is certified on, so every round's promise stays valid.

    compile(pipe, labelled, metric, unlabeled=inputs,
            passes=[Escalate(Calibrate(epsilon=0.02), rounds=3, epochs=2)])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from tandemlm.compose import LMNode, Pipeline
from tandemlm.modules.cascade import Cascade
from tandemlm.optimizers.calibrate import Calibrate
from tandemlm.optimizers.finetune import trains_lora
from tandemlm.optimizers.finetune_data import Row, completion_text, train_adapter
from tandemlm.optimizers.passes import CompileContext, Pass, unscored
from tandemlm.optimizers.stage_runs import cascades
from tandemlm.optimizers.trace_store import Traces
from tandemlm.runtime import CompileError, ConfigError, TandemError, use_cache


@dataclass
class Escalate(Pass):
    """Rounds of certify, learn from the escalated inputs, certify again; see the module doc.

    Args:
        calibrate: the certification each round (its `epsilon`, `delta`, search options); a
            dict of `Calibrate` options works too (`Escalate(calibrate={"epsilon": 0.02})`).
        rounds: learning rounds at most (each one fine-tunes the first stage once).
        learn: the share of the unlabeled inputs the stage learns from; the rest certify.
        nodes: the cascade (path or name); default: the pipeline's only cascade.
        lora, epochs, lr, batch_size, accumulate, clip: the LoRA training (as `Finetune`'s).
        max_examples: at most this many escalated inputs learnt from per round (a seeded sample).
        min_saving: a round is kept only when it lowers the certified cost by at least this
            fraction of round 0's reference's cost.
    """

    calibrate: Calibrate = field(default_factory=Calibrate)
    rounds: int = 3
    learn: float = 0.5
    nodes: list[str] | None = None
    lora: dict[str, Any] = field(default_factory=dict)
    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 8
    accumulate: int = 1
    clip: float | None = 1.0
    max_examples: int | None = None
    min_saving: float = 0.005

    name = "escalate"

    def __post_init__(self) -> None:
        if isinstance(self.calibrate, dict):  # from a pass spec: Escalate(calibrate={...})
            self.calibrate = Calibrate(**self.calibrate)
        if not isinstance(self.calibrate, Calibrate) or self.calibrate.epsilon is None:
            raise ConfigError("Escalate(calibrate=...): a Calibrate with an epsilon target (the "
                              "loop keeps a round when the certified cost falls)")
        if self.rounds < 1 or not 0 < self.learn < 1 or self.min_saving < 0:
            raise ConfigError(f"Escalate: rounds >= 1, learn in (0, 1) and min_saving >= 0 (got "
                              f"{self.rounds}, {self.learn}, {self.min_saving})")
        if isinstance(self.nodes, str):
            self.nodes = [self.nodes]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "calibrate": self.calibrate.config()}

    def apply(self, pipeline: Pipeline, traces: Traces, ctx: CompileContext) -> Pipeline:
        if not ctx.unlabeled:
            raise CompileError("escalate: the stage learns from the reference's answers to "
                               "unlabeled inputs; give some (compile(..., unlabeled=ROWS) or "
                               "tandem compile --unlabeled FILE)")
        path, stage = self._stage(pipeline)
        learning, certifying = _split(ctx.unlabeled, self.learn, ctx.seed)
        if not learning or not certifying:
            raise CompileError(f"escalate: {len(ctx.unlabeled)} unlabeled inputs leave none to "
                               f"{'learn from' if not learning else 'certify on'} at learn="
                               f"{self.learn}; give more")
        sub = dataclasses.replace(ctx, unlabeled=certifying)
        started = time.perf_counter()
        kept = self.calibrate.apply(pipeline, traces, sub)
        name = cascades(pipeline)[path].solvers[stage].name
        # costs are compared with round 0's reference: a stage that learnt well may become the
        # reference itself (the best single stage on the labelled rows, the cheaper on a tie)
        base = sub.details[path]["reference_cost_all_rows"] or 1.0
        rounds = [_figures(0, sub.details[path], name, base, time.perf_counter() - started,
                           kept=True)]
        self._note(ctx, path, rounds[-1])
        # later rounds keep the promise about round 0's reference, whose answers the stage learns
        calibrate = dataclasses.replace(self.calibrate, reference=rounds[0]["reference"])
        for r in range(1, self.rounds + 1):
            started = time.perf_counter()
            rows = self._escalated(kept, path, stage, learning, ctx, r)
            if not rows:
                ctx.reporter.note(f"escalate {path}: round {r}: nothing escalated to learn from")
                break
            tuned = self._learn(kept, path, stage, rows, ctx, r)
            candidate = calibrate.apply(tuned, traces, sub)
            figures = _figures(r, sub.details[path], name, base, time.perf_counter() - started,
                               kept=False, learnt=len(rows))
            figures["kept"] = figures["cost_fraction"] <= _best(rounds) - self.min_saving
            rounds.append(figures)
            self._note(ctx, path, figures)
            if not figures["kept"]:
                break
            kept = candidate
        if not rounds[-1]["kept"]:  # the curve and figures on disk are the kept round's again
            kept = calibrate.apply(kept, traces, sub)
        ctx.details["rounds"] = rounds  # (sub shares ctx's details: Calibrate's figures are there)
        ctx.details["rows"] = {"learn": len(learning), "certify": len(certifying)}
        return kept

    # -- steps ----------------------------------------------------------------------------------
    def _stage(self, pipeline: Pipeline) -> tuple[str, int]:
        found = cascades(pipeline, self.nodes)
        if len(found) != 1:
            raise CompileError(f"escalate: pipeline '{pipeline.name}' has {len(found)} cascades"
                               + ("" if self.nodes else "; name one with nodes=[...]") + " (one needed)")
        path, cascade = next(iter(found.items()))
        for s, solver in enumerate(cascade.solvers):
            model = pipeline.resolve(solver.model) if isinstance(solver, LMNode) else None
            if trains_lora(model):
                return path, s
        raise CompileError(f"escalate: no stage of cascade '{path}' runs on a model that can be "
                           f"fine-tuned here (LoRA needs a local 'hf' model); its stages: "
                           f"{', '.join(s.name for s in cascade.solvers)}")

    def _escalated(self, pipeline: Pipeline, path: str, stage: int, learning: list[dict[str, Any]],
                   ctx: CompileContext, round_: int) -> list[Row]:
        """Training rows: the learning inputs the calibrated cascade did not answer at `stage`,
        with the reference stage's answers in the stage's reply format."""
        cascade: Cascade = cascades(pipeline)[path]
        reference = ctx.details[path]["promise"]["reference"]
        ref = next(s for s, solver in enumerate(cascade.solvers) if solver.name == reference)
        if ref == stage:
            return []
        run = ctx.store.run(pipeline, learning, metric=unscored)
        passed_up = [dict(call.trace.inputs) for call in run.calls(path, ok=False)
                     if call.trace.info.get("answered_by") != stage]
        if self.max_examples is not None and len(passed_up) > self.max_examples:
            picked = ctx.rng(f"escalate:{round_}").sample(range(len(passed_up)), self.max_examples)
            passed_up = [passed_up[i] for i in sorted(picked)]
        solver, teacher = cascade.solvers[stage], cascade.solvers[ref]
        context = pipeline.run_context(passed_up)
        with use_cache(ctx.store.cache):
            answers = context.run(teacher, [{f: x[f] for f in teacher.input_fields} for x in passed_up])
        inputs = [{f: x[f] for f in solver.input_fields} for x in passed_up]
        requests = solver.requests(inputs)
        rows = []
        for values, answer, request in zip(inputs, answers, requests, strict=True):
            if not answer.ok or isinstance(request, Exception):
                continue
            outputs = {f: answer.outputs[f] for f in solver.output_fields if f in answer.outputs}
            try:
                text = completion_text(solver, outputs)
                solver.parse(text)  # an answer outside the stage's output types is no lesson
            except (TandemError, KeyError, ValueError):
                continue
            rows.append(Row(values, outputs, request, text))
        ctx.reporter.note(f"escalate {path}: round {round_}: {len(passed_up)} of {len(learning)} "
                          f"learning inputs escalated past {solver.name}; {len(rows)} reference "
                          f"answers to learn")
        return rows

    def _learn(self, pipeline: Pipeline, path: str, stage: int, rows: list[Row],
               ctx: CompileContext, round_: int) -> Pipeline:
        new = ctx.copy(pipeline)
        solver = cascades(new)[path].solvers[stage]
        model = new.resolve(solver.model)
        # an adapter directory per round: a round not kept leaves the kept one's weights intact
        tuned = train_adapter(f"{path}/{solver.name}/round-{round_}", model, rows, ctx, lora=self.lora,
                              epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                              accumulate=self.accumulate, clip=self.clip)
        solver.set_state({"model": tuned})
        return new

    def _note(self, ctx: CompileContext, path: str, figures: dict[str, Any]) -> None:
        verdict = "" if figures["round"] == 0 else ("; kept" if figures["kept"] else
                                                    "; not kept: the certified cost did not fall")
        ctx.reporter.note(f"escalate {path}: round {figures['round']}: certified cost "
                          f"{figures['cost_fraction']:.3f} of round 0's reference, first stage "
                          f"{figures['first_stage_accuracy']:.3f} accurate on the labelled rows"
                          f"{verdict}")


def _best(rounds: list[dict[str, Any]]) -> float:
    """The lowest certified cost fraction of the kept rounds."""
    return min(r["cost_fraction"] for r in rounds if r["kept"])


def _figures(round_: int, details: dict[str, Any], stage: str, base: float, seconds: float, *,
             kept: bool, learnt: int = 0) -> dict[str, Any]:
    """One round as the report keeps it, from Calibrate's details (`stage`: the learner;
    `base`: round 0's reference cost per row)."""
    promise = details["promise"]
    first = next((p for p in details["singles"] if p["stages"] == [stage]), {})
    return {"round": round_, "learnt": learnt, "certified": promise["certified"],
            "reference": promise["reference"], "chosen": details["chosen"]["stages"],
            "bound": promise["bound"], "cost": details["cost_all_rows"],
            "cost_fraction": details["cost_all_rows"] / base,
            "accuracy": details["chosen"]["quality"],
            "first_stage_accuracy": first.get("quality", 0.0), "seconds": round(seconds, 1),
            "kept": kept}


def _split(rows: list[dict[str, Any]], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(learning, certifying): each input by a hash of its content and the seed, so the same
    input lands on the same side in every round and on every resume."""
    def side(row: dict[str, Any]) -> float:
        digest = hashlib.sha256(f"{seed}:{json.dumps(row, sort_keys=True, default=str)}".encode())
        return int.from_bytes(digest.digest()[:8], "big") / 2 ** 64
    learning = [r for r in rows if side(r) < share]
    return learning, [r for r in rows if side(r) >= share]
