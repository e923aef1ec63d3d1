"""`DSPyModule`: a DSPy module, as its author wrote it, as a node of a pipeline.

    pipe = Pipeline([dspy.ChainOfThought("question -> answer")], models={"small": small})
    pipe.batch([{"question": "..."}, ...])     # every example's LM calls batched

The module runs unchanged: DSPy formats its prompts and parses its outputs (ChatAdapter with its
JSON fallback), its predictors keep their demos and instructions, and DSPy optimizers still see
them (`Pipeline.named_predictors()`). What changes is where its LM calls go: each example runs in
a thread of its own under `dspy.context(lm=...)`, and the calls the threads make are gathered by a
`Barrier` into one backend batch (a 64-example batch of a one-call module is one `generate`), so
a local model batches and every call's tokens and cost land in the example's trace.

Fields: a `dspy.Predict` reads and writes its signature's fields; another module reads the
parameters of its `forward` (or its first predictor's inputs when `forward` takes **kwargs) and
writes its last predictor's outputs (a ChainOfThought: `reasoning` and the answer fields). Give
`inputs=`/`outputs=` when that guess is wrong.

The model: `model=` (a tandem `Model`, a name bound by the pipeline, or a `dspy.LM`); when
omitted, the pipeline's only bound model, else `dspy.settings.lm` at run time. A predictor with
an `lm` of its own keeps calling it, one call at a time and outside the trace's accounting.
"""

from __future__ import annotations

import contextvars
import inspect
import re
import threading
import time
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from tandemlm.compose.context import RunContext
from tandemlm.compose.node import Fields, Node, as_fields, bad_state
from tandemlm.compose.trace import NodeTrace, account
from tandemlm.runtime import ConfigError, GenResult, Model, progress
from tandemlm.runtime.backends.dspy_bridge import as_model, gen_request, lm_response
from tandemlm.runtime.barrier import Barrier

#: the example (index into the batch) the calling thread runs
_EXAMPLE: contextvars.ContextVar[int | None] = contextvars.ContextVar("tandem_dspy_example",
                                                                      default=None)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _guess_inputs(module: dspy.Module, predictors: list[Any]) -> list[str]:
    # the class's function, not the bound method: DSPy warns on reading `module.forward`
    forward = getattr(type(module), "forward", None)
    if forward is not None and not isinstance(module, dspy.Predict):
        params = list(inspect.signature(forward).parameters.values())[1:]  # without self
        named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if named and not any(p.kind is p.VAR_KEYWORD for p in params):
            return named
    return list(predictors[0].signature.input_fields) if predictors else []


class _BatchEngine:
    """DSPy's custom-engine protocol, answering through the node's `Barrier`."""

    def __init__(self, barrier: Barrier, model: Model, traces: list[NodeTrace]) -> None:
        self.barrier, self.model, self.traces = barrier, model, traces
        self._lock = threading.Lock()

    def complete(self, request: Any) -> Any:
        result: GenResult = self.barrier.submit(gen_request(request))
        index = _EXAMPLE.get()
        if index is not None:
            with self._lock:
                account(self.traces[index], self.model, result)
        return lm_response(request, result, self.model.name)

    def close(self) -> None:
        pass


class DSPyModule(dspy.Module, Node):
    """A DSPy module as a node; see the module docstring.

    Args:
        module: a `dspy.Module` (`dspy.Predict`, `dspy.ChainOfThought`, a user's module).
        model: what its LM calls go to (a `Model`, a bound name, a `dspy.LM`); see above.
        name: node name; default: the module's class in snake case (`chain_of_thought`).
        inputs, outputs: its fields, when the guess (module docstring) is wrong.
        max_threads: most examples running at once (one thread each).
        window_s: how long waiting calls wait for an example busy outside its LM calls.
    """

    #: what `Pipeline.to_mermaid` shows as the model of a module bound to none
    unbound_model = "dspy.settings.lm"

    def __init__(self, module: dspy.Module, *, model: Model | str | Any = None,
                 name: str | None = None, inputs: Any = None, outputs: Any = None,
                 max_threads: int = 64, window_s: float = 0.05) -> None:
        super().__init__()
        if not isinstance(module, dspy.Module) or isinstance(module, Node):
            raise ConfigError(f"DSPyModule wraps a dspy.Module, got {type(module).__name__}")
        self.module = module
        self.name = name or getattr(module, "name", None) or _snake(type(module).__name__)
        if not isinstance(self.name, str):
            raise ConfigError(f"DSPyModule: name must be a string, got {self.name!r}")
        self.model = model if model is None or isinstance(model, Model | str) else as_model(model)
        predictors = [p for _, p in module.named_predictors()]
        self._inputs = as_fields(inputs) if inputs is not None else \
            as_fields(_guess_inputs(module, predictors))
        if outputs is not None:
            self._outputs = as_fields(outputs)
        elif predictors:
            self._outputs = {k: f.annotation for k, f in predictors[-1].signature.output_fields.items()}
        else:
            self._outputs = {}
        if not self._inputs or not self._outputs:
            raise ConfigError(f"node '{self.name}': cannot tell the fields of "
                              f"{type(module).__name__} (it has no predictors to read them from); "
                              f"give DSPyModule(module, inputs='question', outputs='answer')")
        self.max_threads, self.window_s = int(max_threads), float(window_s)

    @property
    def input_fields(self) -> Fields:
        return dict(self._inputs)

    @property
    def output_fields(self) -> Fields:
        return dict(self._outputs)

    # -- compiler state: the module's own (demos, instructions), never an LM -------------------
    def state(self) -> dict[str, Any]:
        return {**super().state(), "dspy": _dump_without_lms(self.module)}

    def set_state(self, state: dict[str, Any]) -> None:
        if "dspy" in state and not isinstance(state["dspy"], dict):
            raise bad_state(f"node '{self.name}'", "dspy", "an object (the DSPy module's state)",
                            state["dspy"])
        super().set_state(state)
        if "dspy" in state:
            if _names_an_lm(state["dspy"]):
                # DSPy would rebuild it, importing the engine class the state names: loading an
                # artifact never runs code it names
                raise ConfigError(f"node '{self.name}': its saved DSPy state names an LM; a "
                                  f"saved state holds demos and instructions only (compile again, "
                                  f"or set the LM in code)")
            try:
                self.module.load_state(state["dspy"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise bad_state(f"node '{self.name}'", "dspy", "the state DSPy's dump_state "
                                f"writes for this module ({type(exc).__name__}: {exc})",
                                state["dspy"]) from None

    # -- execution -------------------------------------------------------------------------
    def _model(self, ctx: RunContext) -> Model:
        if self.model is not None:
            model = ctx.model(self.model)
            if model is not None:
                return model
        if dspy.settings.lm is not None:
            return as_model(dspy.settings.lm)
        raise ConfigError(f"node '{self.name}' has no model: give DSPyModule(module, model=...), "
                          f"bind one model in Pipeline(models=...), or dspy.configure(lm=...)")

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        model = self._model(ctx)
        traces = [NodeTrace(node=self.name, inputs=values, model=model.name) for values in inputs]
        barrier = Barrier(lambda requests: ctx.generate(model, requests), self.window_s)
        lm = dspy.LM(f"tandem/{model.name}@{model.fingerprint[:16]}", cache=False, num_retries=0,
                     engine=_BatchEngine(barrier, model, traces))

        finished, throttle = [0], progress.Throttle()

        def one(index: int) -> None:
            _EXAMPLE.set(index)
            start = time.perf_counter()
            try:
                with dspy.context(lm=lm):
                    prediction = self.module(**inputs[index])
                traces[index].outputs = self._outputs_of(prediction)
            except Exception as exc:  # a failing example fails alone
                traces[index].error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
                if isinstance(exc, AdapterParseError):
                    traces[index].info["failure"] = "parse"
            traces[index].latency_s = time.perf_counter() - start
            with lock:
                finished[0] += 1
                throttle(lambda: f"{self.name}: {finished[0]}/{len(inputs)} examples done")

        todo = iter(range(len(inputs)))
        lock = threading.Lock()
        caller = contextvars.copy_context()  # a new thread starts with an empty context

        def worker() -> None:
            # a worker stays inside the barrier while examples remain, so calls wait for it
            try:
                while True:
                    with lock:
                        index = next(todo, None)
                    if index is None:
                        return
                    # each example in a copy of the caller's context: dspy.context overrides (a
                    # trace a DSPy optimizer collects) reach it
                    caller.copy().run(one, index)
            finally:
                barrier.leave()

        workers = max(1, min(self.max_threads, len(inputs)))
        for _ in range(workers):
            barrier.enter()
        threads = [threading.Thread(target=worker, name=f"dspy-{self.name}-{i}", daemon=True)
                   for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return traces

    def _outputs_of(self, prediction: Any) -> dict[str, Any]:
        try:
            return {k: prediction[k] for k in self._outputs}
        except (KeyError, TypeError):
            got = list(prediction.keys()) if hasattr(prediction, "keys") else type(prediction).__name__
            raise ConfigError(f"{type(self.module).__name__} returned {got}, not the fields "
                              f"{list(self._outputs)} this node declares; give "
                              f"DSPyModule(module, outputs=...)") from None

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        """Run this node alone on one example (through the same batched path)."""
        (trace,) = self.run_batch([kwargs], RunContext(resolve=lambda ref: ref))
        if trace.error is not None:
            raise ConfigError(f"node '{self.name}': {trace.error}")
        return dspy.Prediction(**trace.outputs)


def _names_an_lm(state: Any) -> bool:
    """Whether a dumped DSPy state carries an `lm` anywhere (what `_dump_without_lms` leaves out)."""
    if isinstance(state, dict):
        return any((k == "lm" and v is not None) or _names_an_lm(v) for k, v in state.items())
    if isinstance(state, list):
        return any(_names_an_lm(v) for v in state)
    return False


def _dump_without_lms(module: dspy.Module) -> dict[str, Any]:
    """A module's DSPy state with no predictor's `lm`: an artifact holds data, and an LM's state
    may name code (a custom engine) to import or hold what is not JSON."""
    predictors = [p for _, p in module.named_predictors()]
    lms = [p.lm for p in predictors]
    try:
        for predictor in predictors:
            predictor.lm = None
        return module.dump_state(json_mode=True)
    finally:
        for predictor, lm in zip(predictors, lms, strict=True):
            predictor.lm = lm


def as_node(obj: Any) -> Node:
    """`obj` as a pipeline node: a node as it is, a DSPy module wrapped in `DSPyModule`."""
    if isinstance(obj, Node):
        return obj
    if isinstance(obj, dspy.Module):
        return DSPyModule(obj)
    raise ConfigError(f"a pipeline node must be a tandem Node or a dspy.Module, got "
                      f"{type(obj).__name__}")
