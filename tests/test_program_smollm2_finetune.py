"""programs/smollm2_finetune.py: GPT-4's recorded answers, seated as the SmolLM2 node's teacher,
become LoRA rows; a few steps on the real SmolLM2-135M lower the loss, and the saved adapter
reloads and moves the model toward the teacher's answers. Only a handful of rows: the real model
is slow on a small CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tandemlm import ScoreRequest, load
from tandemlm.runtime import ConfigError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("smollm2_finetune", ROOT / "programs" / "smollm2_finetune.py")
program = importlib.util.module_from_spec(spec)
spec.loader.exec_module(program)


@pytest.fixture
def smollm2():
    """The real SmolLM2 model; skipped when its wheel is absent (the package cannot be imported
    to test for it: its __init__ needs `llm`, which is not installed)."""
    try:
        model = program.smollm2()
    except ConfigError as exc:
        pytest.skip(f"SmolLM2-135M-Instruct is not installed ({exc})")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spinning worker threads crawl when another process holds a core
    yield model
    torch.set_num_threads(threads)


def test_the_node_reads_the_last_sentence_and_parses_the_teachers_recorded_answer(tmp_path):
    row = program.split("train", 1)[0]
    cut = program.sentence(row["prompt"])
    assert cut in row["prompt"].rsplit("Context:", 1)[1]
    assert "Context:" not in cut and "Question:" not in cut
    teacher = program.teacher_model(tmp_path)
    node = program.smollm2_node()
    (reply,) = teacher.generate([node.request({"sentence": cut, "id": row["id"]})])
    assert reply.ok and reply.cost_usd > 0  # GPT-4's recorded answer and its real cost
    assert node.parse(reply.text) == {"answer": program.recorded_row(row["id"])["models"]["gpt-4"]["output"]}
    assert 0.9 < program.recorded_accuracy(program.split("train")) < 1.0  # GPT-4 is wrong sometimes


def _reply_logprob(model, node, row) -> float:
    """Mean token log-probability of the gold reply, prompted as the node prompts."""
    request = node.request({"sentence": program.sentence(row["prompt"]), "id": row["id"]})
    reply = node.adapter.format_assistant_message_content(node.signature, {"answer": row["gold"]}).rstrip()
    (result,) = model.logprobs([ScoreRequest(continuations=(reply,), messages=request.messages)])
    assert result.ok, result.error
    return result.logprobs[0] / len(result.token_logprobs[0])


def test_a_few_lora_steps_lower_the_loss_and_the_reloaded_adapter_moves_the_model(smollm2, tmp_path):
    train = [r for r in program.split("train", 6)
             if program.recorded_row(r["id"])["models"]["gpt-4"]["output"] == r["gold"]][:4]
    tuned = program.finetune(program.program(smollm2), train, None, tmp_path / "ft",
                             program.teacher_model(tmp_path), epochs=3, lr=3e-3, batch_size=1,
                             accumulate=2, layers=2)
    details = tuned.compile_report[0].details
    assert details["rows"]["smollm2"] == {"candidates": len(train), "kept": len(train)}
    training = details["training"]["smollm2"]
    assert training["steps"] == 3 * 2
    assert training["loss_last_epoch"] < training["loss_first_epoch"]

    reloaded = load(tmp_path / "ft", program=program.program(program.smollm2()))
    model = reloaded.resolve(reloaded.nodes["smollm2"].model)
    assert model.adapter is not None and (Path(model.adapter) / "adapter_model.safetensors").is_file()
    assert model.fingerprint != smollm2.fingerprint
    node = program.smollm2_node()
    row = train[0]
    assert _reply_logprob(model, node, row) > _reply_logprob(smollm2, node, row) + 0.01
