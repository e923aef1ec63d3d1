"""Compiled artifacts are checked when they load, and an interrupted compile resumes.

Two small passes stand in for real ones: `SetDemo` changes node state, `Tune` writes a real
safetensors weight file under the artifact directory and binds a model with that adapter (as
Finetune does). A module-level counter records every `apply`, so a test can tell a resumed pass
from one that ran again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from safetensors.numpy import save_file

from tandemlm import LMNode, Model, Pipeline
from tandemlm.optimizers import Pass, compile, lm_nodes, load
from tandemlm.runtime import ArtifactError
from tandemlm.testing import chat_reply
from recorder import Recorder
from toy_passes import APPLIED, SetDemo

TRAIN = [{"question": w, "answer": w.upper()} for w in ["cat", "dog", "owl"]]
WEIGHTS = "adapter_model.safetensors"


@dataclass
class Tune(Pass):
    """Test pass standing in for Finetune: writes adapter weights, binds a model using them;
    `crash=True` simulates a compile killed inside this pass."""

    crash: bool = False
    name = "tune"

    def apply(self, pipeline, traces, ctx):
        APPLIED[self.name] += 1
        folder = ctx.artifact_dir("adapters", "solve")
        save_file({"lora_A": np.arange(8, dtype=np.float32).reshape(2, 4)}, str(folder / WEIGHTS))
        if self.crash:
            raise RuntimeError("simulated crash inside the pass")
        new = ctx.copy(pipeline)
        # As Finetune does: the base model's configuration plus the adapter the pass wrote.
        base = new.models["small"]
        new.models["small"] = Model.from_dict({**base.to_dict(), "adapter": str(folder),
                                               "name": "art-tuned"})
        return new


#: TEST DOUBLE for a model: JSON rules (not a callable), so its configuration is saved.
BASE = Model("scripted", "art-base", rules=[["question", chat_reply(answer="BASE")]])


def build() -> Pipeline:
    return Pipeline([LMNode("question -> answer", model="small", name="solve")],
                    models={"small": BASE}, name="art")


def tuned(pipeline: Pipeline, out) -> bool:
    """Whether `pipeline` serves the adapter the Tune pass wrote into `out`."""
    model = pipeline.models["small"]
    return model.adapter == str(out / "adapters" / "02-solve") and model.name == "art-tuned"


def exact(example, prediction, trace=None):
    return prediction.answer == example.answer


def run(out, passes, train=TRAIN, reporter=None):
    return compile(build(), train, exact, passes=passes, out_dir=out, progress=False,
                   reporter=reporter)


@pytest.fixture(autouse=True)
def _count():
    APPLIED.clear()


def test_compiled_program_loads_with_its_weights(tmp_path):
    compiled = run(tmp_path, [SetDemo(), Tune()])
    loaded = load(tmp_path, program=build)
    model = loaded.models["small"]
    assert tuned(loaded, tmp_path) and model.id == "art-base"
    assert model.fingerprint == compiled.models["small"].fingerprint != BASE.fingerprint
    assert lm_nodes(loaded)["solve"].demos == [{"question": "a", "answer": "A"}]
    assert loaded(question="x").answer == "BASE"
    program = json.loads((tmp_path / "program.json").read_text())
    assert set(program["files"]) == {f"adapters/02-solve/{WEIGHTS}"}


def test_a_tampered_state_names_program_json(tmp_path):
    run(tmp_path, [SetDemo()])
    path = tmp_path / "program.json"
    program = json.loads(path.read_text())
    program["state"]["nodes"]["solve"]["demos"][0]["answer"] = "injected"
    path.write_text(json.dumps(program))
    with pytest.raises(ArtifactError, match=r"program\.json' was modified after it was written"):
        load(tmp_path, program=build)


def test_a_truncated_program_json_fails(tmp_path):
    run(tmp_path, [SetDemo()])
    path = tmp_path / "program.json"
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    with pytest.raises(ArtifactError, match=r"program\.json' is not valid JSON \(truncated"):
        load(tmp_path, program=build)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-5]), "is truncated or was modified"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x01"), "is truncated or was modified"),
    (lambda p: p.unlink(), "is missing"),
])
def test_a_damaged_weight_file_is_named(tmp_path, damage, message):
    run(tmp_path, [SetDemo(), Tune()])
    damage(tmp_path / "adapters" / "02-solve" / WEIGHTS)
    with pytest.raises(ArtifactError, match=rf"02-solve/{WEIGHTS}' {message}"):
        load(tmp_path, program=build)


def test_a_crashed_compile_resumes_after_its_last_finished_pass(tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, [SetDemo(), Tune(crash=True)])
    assert not (tmp_path / "program.json").exists() and not (tmp_path / "report.json").exists()
    assert [p.name for p in (tmp_path / "passes").iterdir()] == ["01-set_demo.json"]
    compiled = run(tmp_path, [SetDemo(), Tune()])
    first, second = compiled.compile_report
    assert first.resumed and not second.resumed
    assert APPLIED == {"set_demo": 1, "tune": 2}
    assert lm_nodes(compiled)["solve"].demos == [{"question": "a", "answer": "A"}]
    assert tuned(load(tmp_path, program=build), tmp_path)
    # Everything finished: a third run resumes both passes and applies nothing.
    again = run(tmp_path, [SetDemo(), Tune()])
    assert [r.resumed for r in again.compile_report] == [True, True]
    assert APPLIED == {"set_demo": 1, "tune": 2}
    assert again.models["small"].fingerprint == compiled.models["small"].fingerprint


def test_changed_options_rerun_that_pass_and_the_ones_after(tmp_path):
    run(tmp_path, [SetDemo(), Tune()])
    compiled = run(tmp_path, [SetDemo(answer="B"), Tune()])
    assert [r.resumed for r in compiled.compile_report] == [False, False]
    assert APPLIED == {"set_demo": 2, "tune": 2}
    assert lm_nodes(compiled)["solve"].demos[0]["answer"] == "B"
    assert lm_nodes(load(tmp_path, program=build))["solve"].demos[0]["answer"] == "B"


def test_a_different_trainset_starts_over(tmp_path):
    run(tmp_path, [SetDemo()])
    notes = Recorder()
    compiled = run(tmp_path, [SetDemo()], train=TRAIN[:2], reporter=notes)
    assert not compiled.compile_report[0].resumed and APPLIED == {"set_demo": 2}
    assert any("other inputs; starting over" in n for n in notes.notes)


def test_a_damaged_pass_record_runs_the_pass_again(tmp_path):
    run(tmp_path, [SetDemo(), Tune()])
    (tmp_path / "adapters" / "02-solve" / WEIGHTS).unlink()
    notes = Recorder()
    compiled = run(tmp_path, [SetDemo(), Tune()], reporter=notes)
    assert [r.resumed for r in compiled.compile_report] == [True, False]
    assert APPLIED == {"set_demo": 1, "tune": 2}
    assert any(WEIGHTS in n and "running pass 'tune' again" in n for n in notes.notes)
    assert tuned(load(tmp_path, program=build), tmp_path)


def test_a_model_retrained_at_the_same_path_starts_over(tmp_path):
    """The resume key covers what the models are, not only where: a pipeline bound to an adapter
    folder whose weights changed since the interrupted compile is another input."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file({"lora_A": np.zeros((2, 4), dtype=np.float32)}, str(folder / WEIGHTS))
    adapted = Model.from_dict({**BASE.to_dict(), "adapter": str(folder)})

    def on_adapter():
        return build().with_models(small=adapted)

    out = tmp_path / "out"
    compile(on_adapter(), TRAIN, exact, passes=[SetDemo()], out_dir=out, progress=False)
    again = compile(on_adapter(), TRAIN, exact, passes=[SetDemo()], out_dir=out, progress=False)
    assert again.compile_report[0].resumed and APPLIED == {"set_demo": 1}
    save_file({"lora_A": np.ones((2, 4), dtype=np.float32)}, str(folder / WEIGHTS))  # retrained
    notes = Recorder()
    fresh = compile(on_adapter(), TRAIN, exact, passes=[SetDemo()], out_dir=out, progress=False,
                    reporter=notes)
    assert not fresh.compile_report[0].resumed and APPLIED == {"set_demo": 2}
    assert any("other inputs; starting over" in n for n in notes.notes)
