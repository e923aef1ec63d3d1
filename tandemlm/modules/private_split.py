"""`PrivateSplit` (CoGenesis, sketch variant): private fields never reach a remote model.

The large remote model writes a sketch from the public fields only; a local small model
completes it with the private ones. The fields are checked three times: here (the sketcher may
not read a private field), when the pipeline is built (no route carries a private field, or
anything derived from one, to a remote model), and at run time at the backend boundary (no
request to a remote model contains a private value, whatever field it travels in).

    split = PrivateSplit(
        sketcher=LMNode("request -> sketch", model="large_remote"),
        completer=LMNode("request, sketch, name, diagnosis -> letter", model="small_local"),
        private=["name", "diagnosis"])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tandemlm.compose import Composite, LMNode, Node, NodeTrace, RunContext
from tandemlm.compose.node import Fields
from tandemlm.runtime import ConfigError


class PrivateSplit(Composite):
    """A remote sketcher on public fields, then a local completer on public + private fields."""

    def __init__(self, sketcher: LMNode, completer: LMNode, private: Iterable[str], *,
                 name: str = "private_split") -> None:
        super().__init__(name)
        self.private_fields = frozenset(private)
        if not self.private_fields:
            raise ConfigError(f"PrivateSplit '{name}' needs at least one private field")
        leaked = sorted(self.private_fields & set(sketcher.input_fields))
        if leaked:
            raise ConfigError(f"PrivateSplit '{name}': the sketcher '{sketcher.name}' reads private "
                              f"field(s) {', '.join(leaked)}; the sketcher sees public fields only")
        unused = sorted(self.private_fields - set(completer.input_fields))
        if unused:
            raise ConfigError(f"PrivateSplit '{name}': private field(s) {', '.join(unused)} are not "
                              f"inputs of the completer '{completer.name}'")
        self.sketcher, self.completer = sketcher, completer

    def children(self) -> list[Node]:
        return [self.sketcher, self.completer]

    def routes(self):
        # Precise routes: the sketcher's model sees only the sketcher's (public) inputs.
        return [*self.sketcher.routes(), *self.completer.routes()]

    @property
    def input_fields(self) -> Fields:
        sketched = set(self.sketcher.output_fields)
        fields = dict(self.sketcher.input_fields)
        fields.update({k: v for k, v in self.completer.input_fields.items() if k not in sketched})
        return fields

    @property
    def output_fields(self) -> Fields:
        return {**self.sketcher.output_fields, **self.completer.output_fields}

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        traces = [NodeTrace(node=self.name, inputs=x) for x in inputs]
        sketches = ctx.run(self.sketcher, [{f: x[f] for f in self.sketcher.input_fields}
                                           for x in inputs])
        ready = []
        for i, sketch in enumerate(sketches):
            traces[i].children.append(sketch)
            if sketch.ok:
                ready.append(i)
            else:
                traces[i].error = f"{sketch.node}: {sketch.error}"
        rows = [{f: {**inputs[i], **sketches[i].outputs}[f] for f in self.completer.input_fields}
                for i in ready]
        for i, done in zip(ready, ctx.run(self.completer, rows), strict=True):
            traces[i].children.append(done)
            if done.ok:
                traces[i].outputs = {**sketches[i].outputs, **done.outputs}
            else:
                traces[i].error = f"{done.node}: {done.error}"
        return traces
