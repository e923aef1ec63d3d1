"""A node's fine-tuning data: its calls on passing examples, formatted exactly as the node prompts
at run time, and two ways to select among them.

    rows = node_rows(node, traces.calls("decompose", passed=True))
    rows[0].request       # the GenRequest the node sends for these inputs (demos, instructions)
    rows[0].completion    # the node's adapter formatting the outputs ("[[ ## answer ## ]]\\n...")

Selection (options of `Finetune`):

* MiniPLM (Gu et al., 2024, "difference sampling"): score each row by how much more likely the
  teacher finds its completion than a reference model (the small node's own model) does, and
  keep the rows with the largest difference: what the teacher knows and the small model has
  not learned yet, rather than what either finds trivial (both likely) or noise (both unlikely).
* Consensus (Ensemble-Instruct, Lee et al., 2023): sample the teacher `n` times and keep a
  row only when a majority of the samples agree with its output: an answer the teacher gives
  reliably, not one it happened to produce once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tandemlm.compose import LMNode
from tandemlm.optimizers.trace_store import NodeCall
from tandemlm.runtime import ConfigError, GenRequest, Model, ScoreRequest, TandemError


@dataclass(frozen=True)
class Row:
    """One training example of a node: its inputs and outputs, the request the node sends for
    those inputs, and the completion it should answer with."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    request: GenRequest
    completion: str


def completion_text(node: LMNode, outputs: dict[str, Any]) -> str:
    """What the node's model should reply with: the node's adapter formatting `outputs` (a
    raw-prompt node takes the whole completion as its one output, so the value itself). The
    trailing newline goes: the model ends its turn with EOS right after the completed marker."""
    if node.prompt_field is not None:
        return str(outputs[next(iter(node.output_fields))])
    return node.adapter.format_assistant_message_content(node.signature, outputs).rstrip()


def node_rows(node: LMNode, calls: Sequence[NodeCall]) -> list[Row]:
    """Training rows from a node's calls, in call order; a call whose prompt cannot be
    formatted any more is skipped."""
    requests = node.requests([dict(call.trace.inputs) for call in calls])
    rows = []
    for call, request in zip(calls, requests, strict=True):
        if isinstance(request, Exception):
            continue
        outputs = dict(call.trace.outputs)
        rows.append(Row(dict(call.trace.inputs), outputs, request, completion_text(node, outputs)))
    return rows


# -- MiniPLM ---------------------------------------------------------------------------------
def _mean_logprob(model: Model, rows: Sequence[Row]) -> list[float]:
    """Mean per-token log-probability of each row's completion after its prompt (mean, so long
    completions are not ranked low for their length); -inf where scoring failed."""
    requests = [ScoreRequest(continuations=(row.completion,), messages=row.request.messages,
                             prompt=row.request.prompt) for row in rows]
    out = []
    for result in model.logprobs(requests):
        if not result.ok or not result.logprobs:
            out.append(-math.inf)
        else:
            out.append(result.logprobs[0] / max(1, len(result.token_logprobs[0])))
    return out


def miniplm_scores(rows: Sequence[Row], teacher: Model, reference: Model) -> list[float]:
    """Teacher minus reference mean log-likelihood of each row's completion."""
    for role, model in (("teacher", teacher), ("reference", reference)):
        if not model.supports("logprobs"):
            raise ConfigError(f"select='miniplm' scores rows with the {role} model's "
                              f"log-probabilities, but '{model.name}' (backend "
                              f"'{model.backend_name}') has none; use a {role} on a backend with "
                              f"logprobs (e.g. 'hf'), or select='passed'")
    teacher_lp, reference_lp = _mean_logprob(teacher, rows), _mean_logprob(reference, rows)
    return [t - r if math.isfinite(t) and math.isfinite(r) else -math.inf
            for t, r in zip(teacher_lp, reference_lp, strict=True)]


def top_fraction(rows: Sequence[Row], scores: Sequence[float], keep: float) -> list[Row]:
    """The `keep` fraction of rows (at least one) with the highest scores, in their original
    order; ties go to the earlier row."""
    count = max(1, math.ceil(keep * len(rows)))
    best = sorted(range(len(rows)), key=lambda i: (-scores[i], i))[:count]
    return [rows[i] for i in sorted(best) if math.isfinite(scores[i])]


# -- consensus -------------------------------------------------------------------------------
def _same(node: LMNode, text: str, outputs: dict[str, Any]) -> bool:
    try:
        parsed = node.parse(text)
    except TandemError:
        return False
    return all(str(parsed.get(k)).strip() == str(v).strip() for k, v in outputs.items())


def consensus_votes(node: LMNode, model: Model, rows: Sequence[Row], samples: int,
                    temperature: float, seed: int) -> list[int]:
    """How many of `samples` seeded samples of `model`, prompted as `node` prompts, agree with
    each row's outputs (all of them sent as one batch)."""
    sampler = node.sampler(samples, temperature, seed)
    requests = sampler.requests([row.inputs for row in rows], strict=True)
    votes = []
    for row, result in zip(rows, model.generate(requests), strict=True):
        texts = result.texts if result.ok else []
        votes.append(sum(_same(node, text, row.outputs) for text in texts))
    return votes


# -- training ---------------------------------------------------------------------------------
def train_adapter(path: str, model: Model, rows: Sequence[Row], ctx: Any, *, lora: dict[str, Any],
                  epochs: int, lr: float, batch_size: int, accumulate: int = 1,
                  clip: float | None = 1.0) -> Model:
    """Train a LoRA adapter for the node at `path` on `rows` (its base `model`'s backend,
    `train_lora`, the one training loop), saved under the compile's `adapters/NN-<node>`; returns
    the Model that serves it (a model already carrying an adapter has it trained further). Reports
    progress and figures through the compile context `ctx`."""
    from tandemlm.runtime.train import count_steps
    from tandemlm.runtime.types import LoraOptions

    out = ctx.artifact_dir("adapters", path)
    steps = count_steps(math.ceil(len(rows) / batch_size), epochs, accumulate)
    with ctx.reporter.progress(f"finetune {path}", steps) as advance:
        result = model.backend.train_lora(
            [(row.request, row.completion) for row in rows], out, lora=LoraOptions.from_dict(lora),
            epochs=epochs, lr=lr, batch_size=batch_size, seed=ctx.rng(f"train:{path}").getrandbits(31),
            accumulate=accumulate, clip=clip, progress=advance)
    ctx.reporter.note(f"finetune {path}: {len(rows)} rows, {len(result.losses)} steps, train loss "
                      f"{result.first_loss:.3f} (first epoch) -> {result.final_loss:.3f} "
                      f"(last), {result.seconds:.1f}s"
                      + (f"; trained further from adapter '{model.adapter}'" if model.adapter else ""))
    ctx.details.setdefault("training", {})[path] = {
        "steps": len(result.losses), "loss_first_epoch": result.first_loss,
        "loss_last_epoch": result.final_loss, "seconds": round(result.seconds, 3),
        "adapter": out.relative_to(ctx.out).as_posix(), "base": model.name,
        "from_adapter": model.adapter is not None}
    tag = f"+lora:{path}"  # a distinct display name: reports count usage per model name
    name = model.name if model.name.endswith(tag) else model.name + tag
    return Model.from_dict({**model.to_dict(), "adapter": str(out), "name": name})
