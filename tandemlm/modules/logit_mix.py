"""`LogitMix`: several models decode one text together, token by token (proxy-tuning, EFT
up-scaling).

At each step every model scores the same prefix (its own KV cache, batched across examples); the
next-token scores are combined as Σ weightᵢ · sᵢ / temperatureᵢ, where sᵢ is a model's logits
(`space="logits"`) or log-probabilities (`space="logprobs"`). Both give the same distribution:
log-softmax subtracts one constant per row from a model's logits, so the two mixes differ by a
constant per row, which the softmax removes. One token is taken greedily (or sampled with a seed)
and appended for every model.
Proxy-tuning is `large + α·(small_tuned − small_base)`:

    LogitMix.proxy_tune(base=large, expert=small_tuned, anti_expert=small_base, alpha=1.0)

Each term may render the prompt with its model's chat template (`chat=True`; proxy-tuning
templates the tuned expert only) or see it raw. Every model must share one vocabulary (checked:
a clear error otherwise) and support `next_token_logits` (the hf backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tandemlm.compose import Node, NodeTrace, RunContext
from tandemlm.compose.node import Fields, bad_state, is_number
from tandemlm.compose.trace import account
from tandemlm.runtime import ConfigError, GenRequest, GenResult, Model

if TYPE_CHECKING:  # torch loads where a mix runs, not when tandemlm is imported
    import torch


@dataclass
class Term:
    """One model in the mix: its weight, its temperature, whether it sees the chat template."""

    model: Model
    weight: float = 1.0
    temperature: float = 1.0
    chat: bool = False


class LogitMix(Node):
    """See the module docstring.

    Args:
        terms: the models and their weights.
        prompt_field: the input field holding the prompt text; output: the output field.
        max_tokens, stop: when decoding ends (the first term's end-of-sequence tokens also end it).
        temperature: 0 takes the best token; above 0 samples the mixed distribution (seeded).
        space: "logprobs" or "logits".
    """

    def __init__(self, terms: list[Term], *, prompt_field: str = "prompt", output: str = "answer",
                 name: str = "logit_mix", max_tokens: int = 64, stop: tuple[str, ...] = (),
                 temperature: float = 0.0, seed: int = 0, space: str = "logprobs") -> None:
        if not terms:
            raise ConfigError(f"LogitMix '{name}' needs at least one term")
        if space not in ("logprobs", "logits"):
            raise ConfigError(f"LogitMix '{name}': space must be 'logprobs' or 'logits', got {space!r}")
        for term in terms:
            term.model.require("next_token_logits")
        self.terms, self.name, self.model = list(terms), name, terms[0].model
        self.prompt_field, self.output, self.space = prompt_field, output, space
        self.max_tokens, self.stop = max_tokens, tuple(stop)
        self.temperature, self.seed = temperature, seed

    @classmethod
    def proxy_tune(cls, base: Model, expert: Model, anti_expert: Model, alpha: float = 1.0,
                   **options: Any) -> LogitMix:
        """base + α·(expert − anti_expert); the expert sees the chat template, the others not."""
        return cls([Term(base), Term(expert, alpha, chat=True), Term(anti_expert, -alpha)], **options)

    @property
    def input_fields(self) -> Fields:
        return {self.prompt_field: str}

    @property
    def output_fields(self) -> Fields:
        return {self.output: str}

    def routes(self) -> list[tuple[Model | str, set[str]]]:
        return [(t.model, {self.prompt_field}) for t in self.terms]

    def state(self) -> dict[str, Any]:
        return {"weights": [t.weight for t in self.terms], "models": [t.model for t in self.terms]}

    def set_state(self, state: dict[str, Any]) -> None:
        where = f"LogitMix '{self.name}'"
        models, weights = state.get("models") or [], state.get("weights")
        if not isinstance(models, list) or not all(m is None or isinstance(m, Model) for m in models):
            raise bad_state(where, "models", "a list of models (or null)", models)
        if weights is not None and (not isinstance(weights, list)
                                    or not all(is_number(w) for w in weights)):
            raise bad_state(where, "weights", "a list of finite numbers", weights)
        if weights is not None and len(weights) != len(self.terms):
            raise ConfigError(f"LogitMix '{self.name}': {len(weights)} weights for "
                              f"{len(self.terms)} terms")
        for term, model in zip(self.terms, models, strict=False):
            if model is not None:  # a fine-tuned expert replaces its base
                term.model = model
        for term, weight in zip(self.terms, weights or [], strict=False):
            term.weight = float(weight)

    # -- decoding --------------------------------------------------------------------------------
    def _check_vocabulary(self) -> None:
        first = self.terms[0].model.backend.vocabulary()
        for term in self.terms[1:]:
            if term.model.backend.vocabulary() != first:
                raise ConfigError(f"LogitMix '{self.name}': models '{self.terms[0].model.name}' and "
                                  f"'{term.model.name}' have different vocabularies; token-level "
                                  f"mixing needs one shared tokenizer")

    def combine(self, scores: list[torch.Tensor]) -> torch.Tensor:
        """Σ weightᵢ · sᵢ / temperatureᵢ over the terms' next-token scores."""
        import torch

        total = torch.zeros_like(scores[0])
        for term, raw in zip(self.terms, scores, strict=True):
            s = raw.log_softmax(-1) if self.space == "logprobs" else raw
            total += term.weight * s / term.temperature
        return total

    def run_batch(self, inputs: list[dict[str, Any]], ctx: RunContext) -> list[NodeTrace]:
        import torch

        self._check_vocabulary()
        texts = [str(x[self.prompt_field]) for x in inputs]
        sessions = [t.model.backend.next_token_logits(
            [GenRequest(messages=({"role": "user", "content": p},)) if t.chat else GenRequest(prompt=p)
             for p in texts]) for t in self.terms]
        lead = self.terms[0].model.backend
        eos = lead.eos_ids()
        rows = len(texts)
        new: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.max_tokens):
            mixed = self.combine([s.next_logits() for s in sessions])
            if self.temperature > 0:
                probs = (mixed / self.temperature).softmax(-1).cpu()
                tokens = torch.multinomial(probs, 1, generator=generator).view(-1)
            else:
                tokens = mixed.argmax(-1).cpu()
            for r in range(rows):
                if not done[r]:
                    token = int(tokens[r])
                    done[r] = token in eos
                    if not done[r]:
                        new[r].append(token)
                        text = lead.decode(sessions[0].prompts[r], new[r])
                        done[r] = any(s in text for s in self.stop)
            if all(done):
                break
            for session in sessions:
                session.append(tokens)
        traces = []
        for r, values in enumerate(inputs):
            text = lead.decode(sessions[0].prompts[r], new[r])
            cuts = [text.index(s) for s in self.stop if s in text]
            trace = NodeTrace(node=self.name, inputs=values, model=self.terms[0].model.name,
                              outputs={self.output: text[: min(cuts)] if cuts else text})
            for term, session in zip(self.terms, sessions, strict=True):
                account(trace, term.model, GenResult(texts=[], tokens_in=len(session.prompts[r]),
                                                     tokens_out=len(new[r])))
            traces.append(trace)
        return traces
