"""`LMNode`: a typed LM call — a DSPy signature bound to a model, with instructions and demos.

Prompts are formatted and parsed with a DSPy adapter (ChatAdapter by default); the backend
applies the model's chat template. A node with `prompt_field` sends that input's text to the
model unformatted (a raw prompt) and takes the whole completion as its single output — that
is how `recorded` models, which only know the exact prompts they saw, are replayed.

An `LMNode` is a `dspy.Predict`, so `Pipeline.named_predictors()` lists it and DSPy optimizers
can read and set its `demos` and `signature`.

    answer = LMNode("question -> answer", model="large", instructions="Answer briefly.")
"""

from __future__ import annotations

from typing import Any

import dspy
from dspy.adapters import Adapter, ChatAdapter, JSONAdapter
from dspy.adapters.types.base_type import CUSTOM_TYPE_START_IDENTIFIER

from tandemlm.compose.context import RunContext
from tandemlm.compose.grammar import output_constraint
from tandemlm.compose.node import Fields, Node, bad_state
from tandemlm.compose.trace import NodeTrace, account
from tandemlm.runtime import ConfigError, Constraint, GenRequest, GenResult, Model, ParseError, TandemError
from tandemlm.runtime.backends.dspy_bridge import as_model


def _demo_dict(demo: Any) -> dict[str, Any]:
    return dict(demo.toDict() if hasattr(demo, "toDict") else demo)


class LMNode(dspy.Predict, Node):
    """An LM call node.

    Args:
        signature: DSPy signature, "question -> answer" or a `dspy.Signature` class.
        model: a `Model`, the name of a model bound by the pipeline (`Pipeline(models=...)`), or
            a `dspy.LM` (e.g. `dspy.settings.lm`).
        name: node name (unique in its pipeline); defaults to the signature's outputs joined.
        instructions: replaces the signature's instructions.
        demos: demonstrations, dicts with the signature's fields.
        adapter: DSPy adapter used to format and parse (ChatAdapter by default).
        prompt_field: send this input's value as a raw prompt instead of formatting.
        key_field: send this input's value as the request key (a replay row id).
        max_tokens, temperature, top_p, n, seed, stop: generation options.
        constrained: decode under the grammar of the adapter's format and the output fields'
            types (`tandemlm.compose.grammar`), so every output parses. None (the default):
            wherever the model's backend can (`hf` unless created with constrained=False,
            `vllm`); True: required (an error on a model that cannot); False: never.
    """

    def __init__(self, signature: str | type[dspy.Signature], *, model: Model | str,
                 name: str | None = None, instructions: str | None = None,
                 demos: list[dict[str, Any]] | None = None, adapter: Adapter | None = None,
                 prompt_field: str | None = None, key_field: str | None = None,
                 max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                 seed: int | None = None, stop: tuple[str, ...] = (),
                 constrained: bool | None = None) -> None:
        try:
            super().__init__(signature, max_tokens=max_tokens, temperature=temperature,
                             top_p=top_p, n=n, seed=seed, stop=tuple(stop))
        except Exception as exc:
            raise ConfigError(f"invalid signature {signature!r}: {exc}") from None
        if instructions is not None:
            self.signature = self.signature.with_instructions(instructions)
        self.model = model if isinstance(model, Model | str) else as_model(model)
        self.name = name or "_".join(self.signature.output_fields)
        self.demos = list(demos or [])
        self.adapter = adapter or ChatAdapter()
        self.prompt_field, self.key_field = prompt_field, key_field
        if prompt_field is not None and prompt_field not in self.signature.input_fields:
            raise ConfigError(f"node '{self.name}': prompt_field '{prompt_field}' is not an input "
                              f"field of its signature ({', '.join(self.signature.input_fields)})")
        if constrained not in (None, True, False):
            raise ConfigError(f"node '{self.name}': constrained must be None, True or False, got "
                              f"{constrained!r}")
        self.constrained = constrained
        if constrained and (prompt_field is not None or output_constraint(
                self.adapter, self.signature) is None):
            what = ("a raw-prompt node (prompt_field) has no output format" if prompt_field
                    else f"{type(self.adapter).__name__} has no grammar here (ChatAdapter and its "
                         f"format-keeping subclasses and JSONAdapter do)")
            raise ConfigError(f"node '{self.name}': constrained=True, but {what}; use "
                              f"constrained=None or False")
        if prompt_field is not None and len(self.signature.output_fields) != 1:
            raise ConfigError(f"node '{self.name}': a raw-prompt node (prompt_field) takes the "
                              f"whole completion as its output, so it needs exactly one output field")

    @property
    def input_fields(self) -> Fields:
        # DSPy types an unannotated string-signature field as str; as an input it accepts anything.
        fields = {k: Any if (f.json_schema_extra or {}).get("IS_TYPE_UNDEFINED") else f.annotation
                  for k, f in self.signature.input_fields.items()}
        if self.key_field is not None:
            fields.setdefault(self.key_field, Any)
        return fields

    @property
    def output_fields(self) -> Fields:
        return {k: f.annotation for k, f in self.signature.output_fields.items()}

    @property
    def instructions(self) -> str:
        return self.signature.instructions

    # -- formatting and parsing -------------------------------------------------------------
    def request(self, values: dict[str, Any]) -> GenRequest:
        """The request this node sends for one example's inputs."""
        (request,) = self.requests([values], strict=True)
        return request

    def requests(self, batch: list[dict[str, Any]], strict: bool = False,
                 constraint: Constraint | None = None,
                 adapter: Adapter | None = None) -> list[GenRequest | Exception]:
        """The requests for many examples; an example whose prompt cannot be formatted gets its
        exception (raised instead when `strict`). `constraint` goes on every request (see
        `constraint_for`); `adapter` formats them instead of the node's own (a parse retry).

        The system message and demos are the same for every example, so with DSPy's ChatAdapter
        they are formatted once per batch and only each example's user message is formatted
        (checked on the first example against the adapter's own `format`).
        """
        c = self.config
        options = dict(max_new_tokens=c["max_tokens"], temperature=c["temperature"],
                       top_p=c["top_p"], n=c["n"], seed=c["seed"], stop=c["stop"],
                       constraint=constraint)
        prefix: list[dict[str, Any]] | None = None
        out: list[GenRequest | Exception] = []
        for values in batch:
            try:
                key = str(values[self.key_field]) if self.key_field is not None else None
                if self.prompt_field is not None:
                    out.append(GenRequest(prompt=str(values[self.prompt_field]), key=key, **options))
                    continue
                inputs = {k: values[k] for k in self.signature.input_fields}
                messages, prefix = self._messages(inputs, prefix, adapter or self.adapter)
                out.append(GenRequest(messages=tuple(messages), key=key, **options))
            except Exception as exc:
                if strict:
                    raise
                out.append(exc)
        return out

    def _messages(self, inputs: dict[str, Any], prefix: list[dict[str, Any]] | None,
                  adapter: Adapter) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Chat messages for one example, and the reusable prefix (None: no fast path)."""
        signature = self.signature
        fast = type(adapter) is ChatAdapter and adapter._get_history_field_name(signature) is None
        user = adapter.format_user_message_content(signature, inputs, main_request=True) if fast else None
        if prefix is not None and user and CUSTOM_TYPE_START_IDENTIFIER not in user:
            return [*prefix, {"role": "user", "content": user}], prefix
        messages = adapter.format(signature, demos=[_demo_dict(d) for d in self.demos], inputs=inputs)
        if fast and user and messages[-1] == {"role": "user", "content": user}:
            prefix = messages[:-1]
        return messages, prefix

    def constraint_for(self, model: Model) -> Constraint | None:
        """The grammar this node's requests to `model` carry: its output format, when
        constrained decoding is on for this node and `model`'s backend can enforce it."""
        if self.constrained is False or self.prompt_field is not None:
            return None
        if self.constrained is None and not model.supports("constrained"):
            return None
        if self.constrained:
            model.require("constrained")
        constraint = output_constraint(self.adapter, self.grammar_signature())
        kinds = model.backend.constraint_kinds
        if constraint is not None and constraint.kind not in kinds:
            if self.constrained:
                raise ConfigError(f"node '{self.name}': model '{model.name}' constrains only "
                                  f"{', '.join(kinds)} grammars and {type(self.adapter).__name__}'s "
                                  f"format is a {constraint.kind} grammar; use JSONAdapter on this "
                                  f"node, or constrained=None to run it unconstrained there")
            return None
        return constraint

    def grammar_signature(self) -> Any:
        """The signature whose output types the grammar follows: this node's own; a node may
        narrow a type the grammar should hold tighter than parsing does (e.g. a list's length)."""
        return self.signature

    def parse(self, text: str, adapter: Adapter | None = None) -> dict[str, Any]:
        """Parse one completion into this node's output fields (with `adapter`, default the
        node's); raises `ParseError`, whose message says what was expected and how the output
        began (the node's name is the caller's to add)."""
        if self.prompt_field is not None:
            return {next(iter(self.signature.output_fields)): text.strip()}
        adapter = adapter or self.adapter
        try:
            parsed = adapter.parse(self.signature, text)
        except Exception as exc:
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            began = " ".join(text.split())[:80]
            raise ParseError(f"could not parse the model output into fields "
                             f"{list(self.signature.output_fields)} with {type(adapter).__name__} "
                             f"({reason}); the output began {began!r}",
                             raw=text, expected=tuple(self.signature.output_fields)) from None
        return {k: parsed[k] for k in self.signature.output_fields}

    def fallback_adapter(self) -> Adapter:
        """The format a failed parse is retried in: JSON for chat-format nodes (as DSPy's
        ChatAdapter falls back to JSONAdapter), DSPy's chat format for JSON nodes."""
        return ChatAdapter() if isinstance(self.adapter, JSONAdapter) else JSONAdapter()

    # -- compiler state --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {**super().state(), "instructions": self.signature.instructions,
                "demos": [_demo_dict(d) for d in self.demos]}

    def set_state(self, state: dict[str, Any]) -> None:
        where = f"node '{self.name}'"
        instructions, demos = state.get("instructions"), state.get("demos", [])
        if "instructions" in state and not isinstance(instructions, str):
            raise bad_state(where, "instructions", "a string", instructions)
        if not isinstance(demos, list) or not all(
                isinstance(d, dict) and all(isinstance(k, str) for k in d) for d in demos):
            raise bad_state(where, "demos", "a list of objects (field -> value)", demos)
        super().set_state(state)
        if "instructions" in state:
            self.signature = self.signature.with_instructions(instructions)
        if "demos" in state:
            self.demos = [dict(d) for d in demos]

    # -- execution -------------------------------------------------------------------------
    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        model = ctx.model(self.model)
        if model is None:
            raise ConfigError(f"node '{self.name}' has no model bound")
        traces = [NodeTrace(node=self.name, inputs=values, model=model.name) for values in inputs]
        pending: list[tuple[int, GenRequest]] = []
        constraint = self.constraint_for(model)
        for i, request in enumerate(self.requests(inputs, constraint=constraint)):
            if isinstance(request, Exception):
                traces[i].error = f"could not format the prompt: {type(request).__name__}: {request}"
                traces[i].info["failure"] = "prompt"
            else:
                pending.append((i, request))
        # One batch; an output that fails to parse is asked for once more in another format
        # (`fallback_adapter`: the same request again would give a greedy model the same
        # output), then recorded. Under a grammar an output only fails to parse when max_tokens
        # cut it: no retry.
        if pending:
            results = ctx.generate(model, [req for _, req in pending])
            retry = []
            for (i, _), result in zip(pending, results, strict=True):
                account(traces[i], model, result)
                error = self._absorb(traces[i], result, constraint)
                if error is not None and result.ok and constraint is None:
                    retry.append(i)
            if retry:
                self._retry(traces, inputs, retry, model, ctx)
        self._record_dspy_trace(traces)
        return traces

    def _retry(self, traces: list[NodeTrace], inputs: list[dict[str, Any]], rows: list[int],
               model: Model, ctx: RunContext) -> None:
        """Ask again, in the fallback format, for the rows whose output did not parse."""
        adapter = self.fallback_adapter()
        requests = self.requests([inputs[i] for i in rows], adapter=adapter)
        asked = [(i, r) for i, r in zip(rows, requests, strict=True) if not isinstance(r, Exception)]
        if not asked:
            return
        results = ctx.generate(model, [r for _, r in asked])
        for (i, _), result in zip(asked, results, strict=True):
            account(traces[i], model, result)
            first = traces[i].error
            if self._absorb(traces[i], result, None, adapter) is None:
                traces[i].info["parsed_with"] = type(adapter).__name__
            else:
                traces[i].error = (f"{first}; asked again in {type(adapter).__name__}'s format: "
                                   f"{traces[i].error}. Try constrained decoding (a local model "
                                   f"decodes under the format's grammar: Model('hf', ...)), demos "
                                   f"(BootstrapDemos), a simpler adapter (CompactChatAdapter) or "
                                   f"a stronger model")

    def sampler(self, n: int, temperature: float, seed: int | None) -> LMNode:
        """A copy of this node that draws `n` seeded samples per example (its trace's `raw` holds
        them), for judges and selectors that compare samples (Agreement, BestOfN)."""
        copy = self.deepcopy()
        copy.config.update(n=n, temperature=temperature, seed=seed)
        return copy

    def _absorb(self, trace: NodeTrace, result: GenResult, constraint: Constraint | None = None,
                adapter: Adapter | None = None) -> str | None:
        """Set the trace's outputs (or error) from one result; returns the error, if any."""
        if not result.ok:
            trace.error, trace.info["failure"] = f"backend error: {result.error}", "backend"
            return trace.error
        if constraint is not None and result.finish_reason == "length" and self._cut_in_json(
                constraint, result.text):
            # Cut inside a JSON value the grammar could not close in time (a string in a list):
            # parsing would "repair" the fragment into a value the model never wrote.
            trace.error = (f"the output stopped at max_tokens="
                           f"{self.config['max_tokens']} before its format was complete: raise "
                           f"max_tokens")
            trace.info["failure"] = "parse"
            return trace.error
        try:
            outputs = self.parse(result.text, adapter)
        except TandemError as exc:
            trace.error, trace.info["failure"] = str(exc), "parse"
            if result.finish_reason == "length":
                trace.error += (f" (the output stopped at max_tokens={self.config['max_tokens']}"
                                f" before its format was complete: raise max_tokens)")
            return trace.error
        trace.outputs, trace.error = outputs, None
        trace.info.pop("failure", None)  # a retry that parsed
        return None

    def _cut_in_json(self, constraint: Constraint, text: str) -> bool:
        """Whether an output cut at max_tokens under `constraint` stopped inside JSON: a JSON
        grammar, or a chat-format one whose last field is not free text (a cut text field is still
        text, and the grammar's closing marker may have been forced in time)."""
        if constraint.close and text.rstrip().endswith(constraint.close.strip()):
            return False
        if constraint.kind != "lark":
            return True
        last = list(self.signature.output_fields.values())[-1].annotation
        return last is not str

    def _record_dspy_trace(self, traces: list[NodeTrace]) -> None:
        """Append (predictor, inputs, prediction) to DSPy's trace, as dspy.Predict does, so DSPy
        optimizers (BootstrapFewShot) see this node's calls."""
        trace, limit = dspy.settings.trace, dspy.settings.max_trace_size
        if trace is None or limit <= 0:
            return
        for t in traces:
            if t.ok:
                if len(trace) >= limit:
                    trace.pop(0)
                trace.append((self, dict(t.inputs), dspy.Prediction(**t.outputs)))

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        """Run this node alone on one example (its model must be a `Model`, not a name)."""
        if not isinstance(self.model, Model):
            raise ConfigError(f"node '{self.name}' is bound to model name {self.model!r}; run it "
                              f"inside a Pipeline that binds that name, or pass a Model")
        (trace,) = self.run_batch([kwargs], RunContext(resolve=lambda ref: ref))
        if trace.error is not None:
            raise TandemError(f"node '{self.name}': {trace.error}")
        return dspy.Prediction(**trace.outputs)
