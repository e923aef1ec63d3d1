"""`Verify`: a typed verdict on (question, evidence, answer), KALMV-style.

The verdict is one of a fixed set of options — by default `retrieval_error` (the evidence does
not hold what the question needs), `generation_error` (it does, but the answer is not what it
says) and `correct`. Each example gets a distribution over the options:

* on a backend with the `logprobs` capability, from the model's probabilities of the option
  strings: ONE batched `ctx.logprobs` call scores every option after the node's own formatted
  prompt, continuing where the verdict value starts (ChatAdapter: `[[ ## verdict ## ]]\\n`);
  the distribution is the softmax over the options' summed log-probabilities;
* otherwise from generated text: the parsed verdict gets probability 1.

With several instruction variants (`instructions=[...]`), every variant of every example goes
into that one batch, and the per-variant distributions are summed and normalised (an ensemble).

    verify = Verify(small, instructions=["Check the answer.", "Is the evidence relevant?"])
    # outputs: verdict ("correct"), verdict_probs ({"retrieval_error": 0.1, ...}), score (P(correct))

`Verify` is an `LMNode` (a `dspy.Predict`) rather than a composite: the ensemble is k prompts of
one call, not k child nodes, and passes that set demos or fine-tune a verifier find it like any
other LM node.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import dspy

from tandemlm.compose import LMNode, NodeTrace, RunContext
from tandemlm.compose.node import Fields
from tandemlm.compose.trace import account
from tandemlm.runtime import ConfigError, Model, ScoreRequest, TandemError

OPTIONS = ("retrieval_error", "generation_error", "correct")
INSTRUCTIONS = (
    "Judge an answer to a question given the retrieved evidence. Reply retrieval_error when the "
    "evidence does not contain the information the question asks for, generation_error when it "
    "does but the answer does not match it, and correct when the answer is supported by it.")
_SENTINEL = "\x00VERDICT\x00"


def _softmax(logprobs: Sequence[float]) -> list[float]:
    top = max(logprobs)
    weights = [math.exp(v - top) for v in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def _check_options(options: Sequence[str]) -> tuple[str, ...]:
    options = tuple(options)
    if len(options) < 2 or len(set(options)) != len(options) or not all(
            isinstance(o, str) and o.strip() for o in options):
        raise ConfigError(f"Verify options must be two or more distinct non-empty strings, got "
                          f"{options!r}")
    for a in options:
        for b in options:
            if a != b and b.startswith(a):
                # Scored as continuations, a prefix option's probability would be part of the
                # longer option's: the two would not be alternatives.
                raise ConfigError(f"Verify option {a!r} is a prefix of option {b!r}; option "
                                  f"probabilities need options that are not prefixes of each "
                                  f"other — rename one (e.g. {a + '_only'!r})")
    return options


class Verify(LMNode):
    """An LM node producing `verdict` (one of `options`), `verdict_probs` and `score`.

    Args:
        model: a `Model`, or the name of a model bound by the pipeline.
        options: the verdict values; `score` is the probability of "correct" (or, without such an
            option, of the last one) — the convention judges use.
        instructions: one instruction, or a list of variants for an ensemble (all in one batch).
        name: node name.
        inputs: the input fields the verdict is about.
        scoring: "auto" (option log-probabilities when the backend has `logprobs`, else parsed
            text), "logprobs" or "text".
        **lm_options: further `LMNode` options (demos, adapter, max_tokens, temperature, ...).
    """

    def __init__(self, model: Model | str, *, options: Sequence[str] = OPTIONS,
                 instructions: str | Sequence[str] | None = None, name: str = "verify",
                 inputs: Iterable[str] = ("question", "evidence", "answer"),
                 scoring: Literal["auto", "logprobs", "text"] = "auto", **lm_options: Any) -> None:
        self.options = _check_options(options)
        variants = [instructions] if isinstance(instructions, str) else list(instructions or [])
        if instructions is not None and not variants:
            raise ConfigError("Verify instructions is an empty list; pass None, a string, or a "
                              "non-empty list of instruction variants")
        if "prompt_field" in lm_options:
            raise ConfigError("Verify formats its own prompt from its input fields, so it takes no "
                              "prompt_field; use an LMNode for a raw-prompt call")
        if scoring not in ("auto", "logprobs", "text"):
            raise ConfigError(f"Verify scoring must be 'auto', 'logprobs' or 'text', got {scoring!r}")
        inputs = list(inputs)
        signature = dspy.Signature(f"{', '.join(inputs)} -> verdict", INSTRUCTIONS)
        signature = signature.with_updated_fields("verdict", type_=Literal[self.options])
        lm_options.setdefault("max_tokens", 24)
        super().__init__(signature, model=model, name=name,
                         instructions=variants[0] if variants else None, **lm_options)
        # One variant lives in the signature (where optimizers edit it); several are an ensemble.
        self.variants = variants if len(variants) > 1 else None
        self.scoring = scoring
        self.positive = "correct" if "correct" in self.options else self.options[-1]

    @property
    def output_fields(self) -> Fields:
        return {"verdict": Literal[self.options], "verdict_probs": dict[str, float], "score": float}

    def views(self) -> list[LMNode]:
        """One node per instruction variant, sharing this node's demos, adapter and options."""
        if self.variants is None:
            return [self]
        views = []
        for text in self.variants:
            view = copy.copy(self)
            view.signature = self.signature.with_instructions(text)
            views.append(view)
        return views

    def verdict_prefix(self) -> str:
        """The assistant text in front of the verdict value (ChatAdapter: `[[ ## verdict ## ]]\\n`)."""
        text = self.adapter.format_assistant_message_content(self.signature, {"verdict": _SENTINEL})
        if _SENTINEL not in text:
            raise ConfigError(f"node '{self.name}': adapter {type(self.adapter).__name__} does not "
                              f"write the verdict value verbatim, so option log-probabilities "
                              f"cannot be placed; use ChatAdapter or scoring='text'")
        return text[: text.index(_SENTINEL)]

    def uses_logprobs(self, model: Model) -> bool:
        """Whether this node scores options (True) or parses generated verdicts (False)."""
        if self.scoring == "text":
            return False
        if self.scoring == "logprobs":
            model.require("logprobs")
            return True
        return model.supports("logprobs")

    # -- execution -----------------------------------------------------------------------
    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        model = ctx.model(self.model)
        if model is None:
            raise ConfigError(f"node '{self.name}' has no model bound")
        traces = [NodeTrace(node=self.name, inputs=values, model=model.name) for values in inputs]
        logprobs = self.uses_logprobs(model)
        pending = []  # (example, variant, request) for every example whose prompts format
        for v, view in enumerate(self.views()):
            for i, request in enumerate(view.requests(inputs)):
                if isinstance(request, Exception):
                    traces[i].error = (f"could not format the prompt: {type(request).__name__}: "
                                       f"{request}")
                else:
                    pending.append((i, v, view, request))
        pending = [p for p in pending if traces[p[0]].error is None]
        variants: list[list[dict[str, float] | str]] = [[] for _ in inputs]
        if logprobs:
            self._score(ctx, model, pending, traces, variants)
        else:
            self._vote(ctx, model, pending, traces, variants)
        for trace, found in zip(traces, variants, strict=True):
            if trace.error is None:
                self._conclude(trace, found, "logprobs" if logprobs else "text")
        self._record_dspy_trace(traces)
        return traces

    def _score(self, ctx: RunContext, model: Model, pending: list, traces: list[NodeTrace],
               variants: list[list]) -> None:
        """One `logprobs` batch: every option after every (example, variant) prompt."""
        prefix = self.verdict_prefix()
        # The backend renders chat messages with an open assistant turn, so the verdict header
        # goes in front of each option. It is the same tokens in the same context for every
        # option, so it cancels in the softmax: the distribution is P(option | header).
        continuations = tuple(prefix + option for option in self.options)
        requests = [ScoreRequest(messages=req.messages, continuations=continuations)
                    for *_, req in pending]
        for (i, v, *_), result in zip(pending, ctx.logprobs(model, requests), strict=True):
            account(traces[i], model, result)
            if result.ok:
                variants[i].append(dict(zip(self.options, _softmax(result.logprobs), strict=True)))
            else:
                traces[i].info.setdefault("variant_errors", []).append(f"{v}: {result.error}")

    def _vote(self, ctx: RunContext, model: Model, pending: list, traces: list[NodeTrace],
              variants: list[list]) -> None:
        """Generate every (example, variant) verdict in one batch; an unparsable one is retried
        once (one more batch), then counted as that variant's error."""
        for attempt in range(2):
            if not pending:
                return
            results = ctx.generate(model, [req for *_, req in pending])
            retry = []
            for (i, v, view, req), result in zip(pending, results, strict=True):
                account(traces[i], model, result)
                try:
                    if not result.ok:
                        raise TandemError(f"backend error: {result.error}")
                    variants[i].append(view.parse(result.text)["verdict"])
                except TandemError as exc:
                    if attempt == 0 and result.ok:
                        retry.append((i, v, view, req))
                    else:
                        traces[i].info.setdefault("variant_errors", []).append(f"{v}: {exc}")
            pending = retry

    def _conclude(self, trace: NodeTrace, found: list[dict[str, float] | str], mode: str) -> None:
        """Sum the variants' distributions (a parsed verdict is probability 1), normalise, and
        set the outputs; an example none of whose variants succeeded fails."""
        trace.info["scoring"] = mode
        if not found:
            errors = "; ".join(trace.info.get("variant_errors", [])) or "no verdict"
            trace.error = f"no variant produced a verdict: {errors}"
            return
        totals = dict.fromkeys(self.options, 0.0)
        for item in found:
            for option, p in (item.items() if isinstance(item, dict) else [(item, 1.0)]):
                totals[option] += p
        probs = {option: p / len(found) for option, p in totals.items()}
        verdict = max(self.options, key=lambda o: probs[o])  # ties: the earlier option
        trace.info["variants"] = found
        trace.outputs = {"verdict": verdict, "verdict_probs": probs, "score": probs[self.positive]}
