"""`Rank`: a small model filters a list before the large model reads it (MindAct's candidate
ranking on Mind2Web: a cross-encoder keeps the top-k page elements out of hundreds).

Every item of every example is scored for its example's query in ONE model call — a
cross-encoder's positive probability (`classify`), or a generative model's P(Yes) to "is this
item relevant to the query?" (`logprobs`, the same logic as `Score`) — and each example keeps its
k best items in rank order. Equal scores keep the items' original order.

    rank = Rank(Model("hf-classifier", "out/ranker"), query="question", items="passages", k=3,
                into="top_passages")
    Pipeline([rank, LMNode("question, top_passages -> answer", model=large)])
"""

from __future__ import annotations

from typing import Any

from tandemlm.compose import Node, NodeTrace, RunContext
from tandemlm.compose.node import Fields
from tandemlm.compose.trace import account
from tandemlm.modules.score import field_label, score_rows, scoring_mode
from tandemlm.runtime import ConfigError, Model


def _singular(field: str) -> str:
    """'documents' -> 'document' (how one item is named in a generative scorer's question)."""
    return field[:-1] if field.endswith("s") and not field.endswith("ss") else field


class Rank(Node):
    """Keep the `k` items of a list field most relevant to a query field.

    Outputs `into` (the kept items, best first; the items themselves, whatever their type) and
    `scores_into` (their scores). `trace.info` holds every item's score and the full order. An
    item that cannot be scored fails its example (a silently dropped item could be the answer).

    Args:
        model: a cross-encoder (`classify`) or a generative model with `logprobs`, or the name
            of one bound by the pipeline.
        query: the field holding the query (the text the items are scored against).
        items: the field holding the list of items (sent to the model as `str(item)`).
        k: how many items to keep; a shorter list keeps all its items.
        into: output field of the kept items.
        name: node name.
        scores_into: output field of the kept items' scores.
        instructions, yes, no: the yes/no question of a generative scorer (see `Score`).
    """

    def __init__(self, model: Model | str, *, query: str = "question", items: str = "documents",
                 k: int = 3, into: str = "top_documents", name: str = "rank",
                 scores_into: str = "top_scores", instructions: str | None = None,
                 yes: str = "Yes", no: str = "No") -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"Rank '{name}': k must be a positive integer, got {k!r}")
        names = [query, items, into, scores_into]
        if len(set(names)) != len(names):
            raise ConfigError(f"Rank '{name}': query, items, into and scores_into must be four "
                              f"different fields, got {names}")
        if not yes or not no or yes == no:
            raise ConfigError(f"Rank '{name}': yes and no must be two different non-empty strings")
        if isinstance(model, Model):
            scoring_mode(model, name)  # fail at build time, not mid-run
        self.model, self.name, self.k = model, name, k
        self.query, self.items, self.into, self.scores_into = query, items, into, scores_into
        self.yes, self.no = yes, no
        self.item_label = _singular(items)
        self.instructions = instructions or (
            f"Judge whether the {field_label(self.item_label).lower()} is relevant to the "
            f"{field_label(query).lower()}. Reply {yes.strip()} if it is, {no.strip()} if it is not.")

    @property
    def input_fields(self) -> Fields:
        return {self.query: Any, self.items: list}

    @property
    def output_fields(self) -> Fields:
        return {self.into: list, self.scores_into: list[float]}

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        model = ctx.model(self.model)
        if model is None:
            raise ConfigError(f"node '{self.name}' has no model bound")
        traces = [NodeTrace(node=self.name, inputs=values, model=model.name) for values in inputs]
        rows, owners = [], []
        for i, values in enumerate(inputs):
            items = values[self.items]
            if not isinstance(items, (list, tuple)):
                traces[i].error = (f"field '{self.items}' must be a list of items to rank, got "
                                   f"{type(items).__name__}")
                continue
            for item in items:
                rows.append({self.query: values[self.query], self.item_label: item})
                owners.append(i)
        scored = score_rows(ctx, model, rows, node=self.name, instructions=self.instructions,
                            yes=self.yes, no=self.no)
        per_example: dict[int, list] = {}
        for i, (score, result) in zip(owners, scored, strict=True):
            account(traces[i], model, result)
            per_example.setdefault(i, []).append((score, result.error))
        for i, trace in enumerate(traces):
            if trace.error is None:
                self._keep(trace, list(inputs[i][self.items]), per_example.get(i, []))
        return traces

    def _keep(self, trace: NodeTrace, items: list, scored: list) -> None:
        """Set the trace's outputs to the top-k items, or its error if an item failed."""
        failed = [(j, error) for j, (score, error) in enumerate(scored) if score is None]
        if failed:
            j, error = failed[0]
            trace.error = (f"{len(failed)} of {len(items)} items could not be scored "
                           f"(item {j}: {error})")
            return
        scores = [score for score, _ in scored]
        order = sorted(range(len(items)), key=lambda j: -scores[j])  # stable: ties keep input order
        keep = order[:self.k]
        trace.outputs = {self.into: [items[j] for j in keep],
                         self.scores_into: [scores[j] for j in keep]}
        trace.info = {"scores": scores, "order": order}
