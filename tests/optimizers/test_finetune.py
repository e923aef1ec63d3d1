"""Finetune on real tiny models: a small node that fails a task learns it from a teacher's passing
calls (LoRA through the real peft + transformers path), the training rows are exactly the
node's run-time prompts, each node learns from its own rows only, the artifact loads, and a
compile killed mid-Finetune resumes to the clean result.

The task, the small model and the teacher are in `finetune_task.py`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from finetune_task import (TEACHER, TRAINING, WORDS, base_model_path, build,
                           compile_resume_program, make_data, metric, rule_reply, small_model,
                           word_node)
from safetensors.torch import load_file

from tandemlm import LMNode, Model, Pipeline, evaluate
from tandemlm.optimizers import compile, load
from tandemlm.optimizers.finetune import Finetune
from tandemlm.runtime import CompileError, ConfigError, ScoreRequest
from tandemlm.runtime.backends.hf import HFBackend
from tandemlm.runtime.backends.hf_lora import encode_example
from tandemlm.testing import chat_reply, request_field
from recorder import Recorder

pytestmark = [pytest.mark.heavy,  # minutes of work on first use: scheduled first
              pytest.mark.usefixtures("one_torch_thread")]

pytest.importorskip("peft")

TRAIN, HELD = make_data()
SCRIPT = Path(__file__).with_name("finetune_task.py")


@pytest.fixture(scope="module")
def base() -> Path:
    return base_model_path()


@pytest.fixture(scope="module")
def run(base, tmp_path_factory):
    """One compile of the task: the small node learns from the rule teacher."""
    out = tmp_path_factory.mktemp("finetune") / "out"
    reporter = Recorder()
    pipe = build(base)
    started = time.perf_counter()
    compiled = compile(pipe, TRAIN, metric, passes=[Finetune(teacher={"small": TEACHER}, **TRAINING)],
                       valset=HELD, out_dir=out, seed=0, progress=False, reporter=reporter)
    return pipe, compiled, out, reporter, time.perf_counter() - started


@pytest.fixture
def spy_training(monkeypatch):
    """Records the examples every `train_lora` call receives (training still runs for real)."""
    calls = []
    real = HFBackend.train_lora

    def train_lora(self, examples, out_dir, **options):
        calls.append({"backend": self, "examples": list(examples), "out": Path(out_dir)})
        return real(self, examples, out_dir, **options)

    monkeypatch.setattr(HFBackend, "train_lora", train_lora)
    return calls


def test_the_small_node_learns_the_task_it_failed(run):
    """Done-when: before <= 0.2, after >= 0.6 on held-out codes (seeded, deterministic)."""
    pipe, compiled, _, _, seconds = run
    (step,) = compiled.compile_report
    training = step.details["training"]["word"]
    print(f"\nfinetune on held-out codes: {step.metric_before:.3f} -> {step.metric_after:.3f}; "
          f"{training['steps']} steps in {training['seconds']:.1f}s, train loss "
          f"{training['loss_first_epoch']:.3f} -> {training['loss_last_epoch']:.3f}; "
          f"whole compile {seconds:.1f}s")
    assert step.metric_before <= 0.2 and step.metric_after >= 0.6
    assert step.details["teacher_score"] == 1.0
    assert step.details["rows"] == {"word": {"candidates": len(TRAIN), "kept": len(TRAIN)}}
    # The report measured the held-out set; evaluating the programs directly agrees.
    assert evaluate(pipe, HELD, metric, progress=False).score == step.metric_before
    assert evaluate(compiled, HELD, metric, progress=False).score == step.metric_after


def test_adapter_is_safetensors_under_the_artifact_and_the_model_is_new(run):
    pipe, compiled, out, _, _ = run
    tuned, base_model = compiled.nodes["word"].model, pipe.models["small"]
    assert isinstance(tuned, Model) and tuned.adapter is not None
    adapter = Path(tuned.adapter)
    assert adapter.parent == out / "adapters" and adapter.name == "01-word"
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in weights) and any("lm_head" in k for k in weights)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    assert (tuned.backend_name, tuned.id, tuned.options) == (base_model.backend_name, base_model.id,
                                                             base_model.options)
    assert tuned.fingerprint != base_model.fingerprint
    assert compiled.models["small"] is base_model  # the name still binds the base model
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))


def test_reporting_progress_and_notes(run):
    _, compiled, _, reporter, _ = run
    steps = TRAINING["epochs"] * -(-len(TRAIN) // TRAINING["batch_size"])
    assert reporter.bars == [["finetune word", steps, steps]]
    assert any(f"finetune word: {len(TRAIN)} rows, {steps} steps" in n for n in reporter.notes)
    training = compiled.compile_report[0].details["training"]["word"]
    assert training["loss_last_epoch"] < training["loss_first_epoch"] / 10


def test_save_load_evaluate_gives_the_same_results(run, base):
    _, compiled, out, _, _ = run
    loaded = load(out, program=lambda: build(base))
    assert loaded.nodes["word"].model.fingerprint == compiled.nodes["word"].model.fingerprint
    a = evaluate(compiled, HELD, metric, progress=False)
    b = evaluate(loaded, HELD, metric, progress=False)
    assert [r.result.outputs for r in a.records] == [r.result.outputs for r in b.records]
    assert a.score == b.score


def test_training_rows_are_the_prompts_the_backend_sends(base):
    """Prompt ids = the hf backend's own ids for the node's request; loss only on the reply."""
    node, backend = word_node(small_model(base)), HFBackend(str(base), device="cpu")
    request = node.request({"code": "f7"})
    reply = node.adapter.format_assistant_message_content(node.signature, {"word": "bread"})
    _, tokenizer = backend._load()
    ids, labels = encode_example(tokenizer, request, reply.rstrip())
    prompt = backend._prompt_ids([request])[0]  # what generate() feeds the model
    assert ids[:len(prompt)] == prompt
    assert labels[:len(prompt)] == [-100] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tokenizer.eos_token_id
    whole = tokenizer.apply_chat_template([*request.messages, {"role": "assistant",
                                                               "content": reply.rstrip()}],
                                          tokenize=False)
    assert tokenizer.decode(ids) == whole.rstrip("\n")
    assert tokenizer.decode(ids[len(prompt):], skip_special_tokens=True) == reply.rstrip()


def letter_reply(request) -> str:
    """TEST DOUBLE teacher for a second node: the code's letter, upper-cased."""
    return chat_reply(letter=request_field(request, "code").strip()[0].upper())


def two_node_pipeline(base: Path) -> Pipeline:
    letter = LMNode("code -> letter", model="other", name="letter", max_tokens=8)
    return Pipeline([word_node(), letter], name="two", models={
        "small": small_model(base), "other": small_model(base, batch_size=16)})


def both(example, prediction, trace=None) -> bool:
    return metric(example, prediction) and prediction.letter == example["code"][0].upper()


def test_each_node_learns_only_from_its_own_rows(base, tmp_path, spy_training):
    pipe = two_node_pipeline(base)
    train = TRAIN[:6] + [{"code": "a0", "word": "none"}]  # the last fails: a row of neither
    teachers = {"small": TEACHER, "other": Model("scripted", "letters", reply=letter_reply)}
    compiled = compile(pipe, train, both, passes=[Finetune(teacher=teachers, epochs=1, batch_size=4)],
                       out_dir=tmp_path / "out", progress=False)
    by_out = {call["out"].name: call for call in spy_training}
    assert sorted(by_out) == ["01-letter", "01-word"]
    for name, field, answers in (("word", "code", [WORDS[e["code"][0]] for e in TRAIN[:6]]),
                                 ("letter", "code", [e["code"][0].upper() for e in TRAIN[:6]])):
        examples = by_out[f"01-{name}"]["examples"]
        assert [request_field(req, field) for req, _ in examples] == [e["code"] for e in TRAIN[:6]]
        assert [c for _, c in examples] == [chat_reply(**{name: a}).rstrip() for a in answers]
    # each adapter trained on its node's own model (the two differ in batch_size)
    assert by_out["01-word"]["backend"] is pipe.models["small"].backend
    assert by_out["01-letter"]["backend"] is pipe.models["other"].backend
    word, letter = compiled.nodes["word"].model, compiled.nodes["letter"].model
    assert Path(word.adapter).name == "01-word" and Path(letter.adapter).name == "01-letter"
    assert (word.options, letter.options) == (pipe.models["small"].options,
                                              pipe.models["other"].options)


def _codes(examples) -> list[str]:
    return [request_field(request, "code") for request, _ in examples]


STEADY = "abcdef"  # letters whose rows the selection tests expect kept


def steady_logprob(request, continuation) -> float:
    """TEST DOUBLE teacher log-probability: sure of rows with a steady letter, not of others."""
    return 5.0 if request_field(request, "code")[0] in STEADY else -5.0


@pytest.mark.parametrize("teacher_logprob", ["by_letter", "constant"])
def test_miniplm_keeps_rows_the_teacher_finds_likelier_than_the_reference(
        base, tmp_path, spy_training, teacher_logprob):
    """Score = teacher minus reference mean log-likelihood; the top half is kept. A teacher
    sure of some rows keeps those; a teacher equally sure of all keeps the rows the small
    (reference) model finds least likely — hard for it, known to the teacher."""
    train = [e for e in TRAIN if e["code"][0] in STEADY][:4] + [
        e for e in TRAIN if e["code"][0] not in STEADY][:4]
    fn = steady_logprob if teacher_logprob == "by_letter" else (lambda request, continuation: 0.0)
    teacher = Model("scripted", "sure-teacher", reply=rule_reply, logprob=fn)
    compiled = compile(build(base), train, metric, out_dir=tmp_path / "out", progress=False,
                       passes=[Finetune(teacher={"small": teacher}, select="miniplm", keep=0.5,
                                        epochs=1)])
    (call,) = spy_training
    if teacher_logprob == "by_letter":
        expected = [e["code"] for e in train[:4]]
    else:  # the 4 rows the base model finds least likely, scored here on their own
        node, small = word_node(), build(base).models["small"]
        requests = [ScoreRequest(continuations=(chat_reply(word=e["word"]).rstrip(),),
                                 messages=node.request(e).messages) for e in train]
        means = [r.logprobs[0] / len(r.token_logprobs[0]) for r in small.logprobs(requests)]
        expected = [train[i]["code"] for i in sorted(sorted(range(8), key=means.__getitem__)[:4])]
    assert _codes(call["examples"]) == expected
    assert compiled.compile_report[0].details["rows"]["word"] == {"candidates": 8, "kept": 4}


def unsteady_reply(request) -> str:
    """TEST DOUBLE teacher: always right when greedy; when sampled, right only on steady letters."""
    code = request_field(request, "code").strip()
    if request.temperature > 0 and code[0] not in STEADY:
        return chat_reply(word="tiger" if WORDS[code[0]] != "tiger" else "house")
    return rule_reply(request)


def test_consensus_keeps_rows_most_teacher_samples_agree_with(base, tmp_path, spy_training):
    teacher = Model("scripted", "unsteady-teacher", reply=unsteady_reply)
    train = TRAIN[:12]
    compile(build(base), train, metric, out_dir=tmp_path / "out", progress=False,
            passes=[Finetune(teacher={"small": teacher}, select="consensus", samples=3,
                             temperature=0.8, epochs=1, max_examples=3)])
    (call,) = spy_training
    steady = [e["code"] for e in train if e["code"][0] in STEADY]
    assert len(steady) > 3 and len(steady) < len(train)
    kept = _codes(call["examples"])  # max_examples=3: a seeded sample of the steady rows
    assert len(kept) == 3 and set(kept) <= set(steady) and kept == [c for c in steady if c in kept]
    sampled = [r for r in teacher.backend.history if r.temperature > 0]
    assert len(sampled) == len(train) and {(r.n, r.temperature) for r in sampled} == {(3, 0.8)}
    assert len({r.seed for r in sampled}) == 1 and sampled[0].seed is not None


def test_no_trainable_node_is_a_compile_error(tmp_path):
    pipe = Pipeline([word_node()], models={"small": TEACHER}, name="scripted_only")
    with pytest.raises(CompileError, match=r"no LM node .* can be fine-tuned.*'word' \(model "
                                           r"'rule-teacher' on backend 'scripted'\)"):
        compile(pipe, TRAIN[:2], metric, passes=[Finetune()], out_dir=tmp_path, progress=False)


def test_unknown_or_untrainable_node_names_are_config_errors(base, tmp_path):
    checker = Model("scripted", "checker", reply=chat_reply(check="ok"))
    pipe = Pipeline([word_node(), LMNode("word -> check", model=checker, name="check")],
                    models={"small": small_model(base)}, name="named")
    with pytest.raises(ConfigError, match="no LM node named 'nope'.*word, check"):
        compile(pipe, TRAIN[:2], metric, passes=[Finetune(nodes=["nope"])], out_dir=tmp_path / "a",
                progress=False)
    with pytest.raises(ConfigError, match="'check'.*cannot be fine-tuned.*trainable LM nodes: word"):
        compile(pipe, TRAIN[:2], metric, passes=[Finetune(nodes=["check"])], out_dir=tmp_path / "b",
                progress=False)


@pytest.mark.parametrize("options, message", [
    ({"lora": {"rank": 8}}, "unknown LoRA option.*rank"),
    ({"select": "best"}, "select='best'.*passed, miniplm, consensus"),
    ({"select": "miniplm"}, "needs teacher"),
    ({"epochs": 0}, "epochs=0"),
    ({"keep": 1.5}, "keep=1.5"),
    ({"lr": 0.0}, "lr=0.0"),
])
def test_options_are_checked_when_the_pass_is_built(options, message):
    with pytest.raises(ConfigError, match=message):
        Finetune(**options)


def _kill_in_pass_two(out: Path) -> str | None:
    """Run the resume program in a subprocess and SIGKILL it once pass 2 has taken a training
    step; returns the subprocess's stderr when it ended without getting there (a failure)."""
    flag, log = out.parent / "blocked", out.parent / "stderr.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as stderr:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--block-in-pass", "2"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        while not flag.exists():
            if proc.poll() is not None:
                return log.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return None


def test_a_compile_killed_mid_finetune_resumes_to_the_clean_result(base, tmp_path):
    out = tmp_path / "killed" / "out"
    out.parent.mkdir()
    unfinished = _kill_in_pass_two(out)
    assert unfinished is None, f"the compile never reached pass 2: {unfinished[-2000:]}"
    assert (out / "passes" / "01-finetune.json").exists()
    assert not (out / "passes" / "02-finetune.json").exists()
    assert not (out / "program.json").exists() and (out / "adapters" / "02-word").is_dir()

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    again = subprocess.run([sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True,
                           text=True, check=True)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == [
        {"name": "finetune", "resumed": True}, {"name": "finetune", "resumed": False}]

    clean_out = tmp_path / "clean" / "out"
    clean = compile_resume_program(clean_out)
    resumed, fresh = (json.loads((d / "program.json").read_text()) for d in (out, clean_out))
    # Paths inside the artifact are stored relative: equal states and file hashes mean equal
    # adapters, bit for bit, and the same models bound to the node.
    assert resumed["state"] == fresh["state"] and resumed["files"] == fresh["files"]
    second = fresh["state"]["nodes"]["word"]["model"]["$model"]
    assert second["adapter"] == "adapters/02-word"
    assert clean.compile_report[1].details["training"]["word"]["from_adapter"] is True
    loaded = load(out, program=lambda: build(base))
    a = evaluate(loaded, HELD, metric, progress=False)
    b = evaluate(clean, HELD, metric, progress=False)
    assert [r.result.outputs for r in a.records] == [r.result.outputs for r in b.records]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_on_cuda_the_node_learns_and_its_adapter_serves_on_the_cpu(base, tmp_path, dtype):
    """On a GPU the base model trains where it is served (bfloat16: a bfloat16 base under a
    float32 adapter); the adapter then loads onto the CPU model and answers there too."""
    gpu = Model("hf", str(base), name="tiny-small", device="cuda", dtype=dtype)
    pipe = Pipeline([word_node()], models={"small": gpu}, name="codes")
    compiled = compile(pipe, TRAIN, metric, passes=[Finetune(teacher={"small": TEACHER}, **TRAINING)],
                       valset=HELD, out_dir=tmp_path / "out", seed=0, progress=False)
    (step,) = compiled.compile_report
    print(f"\ncuda {dtype}: {step.metric_before:.3f} -> {step.metric_after:.3f}, training "
          f"{step.details['training']['word']['seconds']:.1f}s")
    assert step.metric_before <= 0.2 and step.metric_after >= 0.6
    on_cpu = small_model(base, adapter=compiled.nodes["word"].model.adapter)
    cpu_score = evaluate(build(base).with_models(small=on_cpu), HELD, metric, progress=False).score
    print(f"the {dtype} adapter on the CPU: {cpu_score:.3f}")
    assert cpu_score >= 0.6
