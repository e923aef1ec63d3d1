"""What an artifact restores is checked on the bytes used, before it is parsed or trusted.

- program.json is checked (HMAC on the raw bytes) before it is parsed, and parsed strictly:
  no NaN/Infinity, no repeated key, bounded nesting; every node checks its state's types;
- pass records are checked like program.json before a resumed compile uses them, so the final
  signature never covers a record nobody checked;
- weights load from the bytes whose sha256 was checked, not from whatever the path holds later.

The programs are real: scripted models (test doubles) for control flow, and a tiny Llama
created in the test with a real PEFT LoRA adapter for the weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tandemlm import LMNode, Model, Pipeline
from tandemlm.modules import Cascade, FeatureJudge, Stage
from tandemlm.optimizers import compile, lm_nodes, load, save_program
from tandemlm.optimizers.artifacts import _state_hash
from tandemlm.runtime import ArtifactError, ConfigError, ScoreRequest
from tandemlm.testing import chat_reply
from recorder import Recorder
from toy_passes import APPLIED, SetDemo

TRAIN = [{"question": w, "answer": w.upper()} for w in ["cat", "dog", "owl"]]
#: TEST DOUBLES: scripted models with JSON rules, so their configurations are saved
SMALL = Model("scripted", "int-small", rules=[["question", chat_reply(answer="small")]])
BIG = Model("scripted", "int-big", rules=[["question", chat_reply(answer="big")]])


def build() -> Pipeline:
    return Pipeline([LMNode("question -> answer", model="small", name="solve")],
                    models={"small": SMALL}, name="int")


def cascade() -> Pipeline:
    return Pipeline([Cascade([Stage(LMNode("question -> answer", model="small", name="cheap"),
                                    judge=FeatureJudge(confidence=False)),
                              Stage(LMNode("question -> answer", model="big", name="strong"))])],
                    models={"small": SMALL, "big": BIG}, name="casc")


def exact(example, prediction, trace=None):
    return prediction.answer == example.answer


def run(out, passes=None, reporter=None):
    return compile(build(), TRAIN, exact, passes=passes or [SetDemo(), SetDemo(answer="B")],
                   out_dir=out, progress=False, reporter=reporter)


def reseal_record(path: Path, edit) -> None:
    """Edit a pass record's state and recompute its checksum, as someone without the key would."""
    record = json.loads(path.read_text())
    record.pop("hmac", None)
    edit(record["snapshot"]["state"])
    record["snapshot"]["state_sha256"] = _state_hash(record["snapshot"]["state"])
    path.write_text(json.dumps(record, indent=1))


def demo_answers(pipeline) -> list[str]:
    return [d["answer"] for d in lm_nodes(pipeline)["solve"].demos]


@pytest.fixture(autouse=True)
def _count():
    APPLIED.clear()


# -- resume: a pass record is checked before it is used (and before the key signs it) -----------

def test_a_signed_compile_reruns_a_pass_whose_record_was_edited(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_ARTIFACT_KEY", "s3cret")
    run(tmp_path)
    first = tmp_path / "passes" / "01-set_demo.json"
    assert first.read_text().startswith('{"hmac": "')  # records are signed as they are written
    reseal_record(first, lambda s: s["nodes"]["solve"]["demos"][0].update(answer="injected"))
    notes = Recorder()
    again = run(tmp_path, reporter=notes)
    assert [r.resumed for r in again.compile_report] == [False, False]
    assert APPLIED == {"set_demo": 4}  # both passes ran again: the second builds on the first
    assert any("01-set_demo.json" in n and "not signed" in n and "running pass 'set_demo' again"
               in n for n in notes.notes)
    loaded = load(tmp_path, program=build)  # signed by the final save, over checked state only
    assert demo_answers(loaded) == ["B"] and "injected" not in (tmp_path / "program.json").read_text()


def test_a_record_signed_with_another_key_is_not_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_ARTIFACT_KEY", "other")
    run(tmp_path, passes=[SetDemo()])
    monkeypatch.setenv("TANDEM_ARTIFACT_KEY", "s3cret")
    notes = Recorder()
    again = run(tmp_path, passes=[SetDemo()], reporter=notes)
    assert not again.compile_report[0].resumed and APPLIED == {"set_demo": 2}
    assert any("field 'hmac' does not match" in n for n in notes.notes)


def test_a_record_from_another_compile_is_not_resumed(tmp_path):
    """Without a key, a record must still follow from this compile's inputs and the record
    before it: one copied in from a compile of other data is run again."""
    other, out = tmp_path / "other", tmp_path / "out"
    compile(build(), TRAIN[:2], exact, passes=[SetDemo(answer="X")], out_dir=other, progress=False)
    run(out, passes=[SetDemo(answer="X")])
    shutil.copy(other / "passes" / "01-set_demo.json", out / "passes" / "01-set_demo.json")
    notes = Recorder()
    again = run(out, passes=[SetDemo(answer="X")], reporter=notes)
    assert not again.compile_report[0].resumed and APPLIED == {"set_demo": 3}
    assert any("does not follow from this compile's inputs" in n for n in notes.notes)


@pytest.mark.parametrize("edit, field", [
    (lambda s: s["nodes"]["solve"].update(demos="abc"), "demos"),
    (lambda s: s.update(nodes=[]), "nodes"),
    (lambda s: s["models"]["small"]["$model"]["options"].pop("rules"), "drops option rules"),
])
def test_a_resumed_record_is_checked_like_program_json(tmp_path, edit, field):
    """An unsigned record with a wrong type or a model the code does not build is not used:
    the pass runs again and says why (it used to crash the compile, or resume it)."""
    run(tmp_path, passes=[SetDemo()])
    reseal_record(tmp_path / "passes" / "01-set_demo.json", edit)
    notes = Recorder()
    again = run(tmp_path, passes=[SetDemo()], reporter=notes)
    assert not again.compile_report[0].resumed and APPLIED == {"set_demo": 2}
    assert any(field in n and "running pass 'set_demo' again" in n for n in notes.notes)
    assert demo_answers(load(tmp_path, program=build)) == ["A"]


def test_an_intact_record_still_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_ARTIFACT_KEY", "s3cret")
    run(tmp_path)
    again = run(tmp_path)
    assert [r.resumed for r in again.compile_report] == [True, True] and APPLIED == {"set_demo": 2}
    assert demo_answers(load(tmp_path, program=build)) == ["B"]


# -- program.json: bytes checked first, then parsed strictly -------------------------------------

def _program(root: Path) -> Path:
    save_program(cascade(), root)
    return root / "program.json"


def test_deep_nesting_is_refused_before_parsing(tmp_path, monkeypatch):
    path = _program(tmp_path)
    deep = "[" * 200_000 + "]" * 200_000
    path.write_text(path.read_text().replace('"passes": []', f'"passes": {deep}'))
    with pytest.raises(ArtifactError, match=r"nests objects and arrays 200001 deep, more than the 64"):
        load(tmp_path, program=cascade)
    # With a key, the signature is checked on the raw bytes first: nothing is parsed.
    monkeypatch.setenv("TANDEM_ARTIFACT_KEY", "s3cret")
    with pytest.raises(ArtifactError, match="is not signed"):
        load(tmp_path, program=cascade)


def test_a_repeated_key_is_refused(tmp_path):
    path = _program(tmp_path)
    text = path.read_text()
    # A decoy first: a reader sees "state" as compiled; json.loads would keep the second.
    path.write_text(text.replace('"state": {', '"state": {"decoy": 1}, "state": {', 1))
    with pytest.raises(ArtifactError, match=r"key 'state' appears twice in one object"):
        load(tmp_path, program=cascade)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_standard_numbers_are_refused(tmp_path, value):
    path = _program(tmp_path)
    program = json.loads(path.read_text())
    program["state"]["nodes"]["cascade"]["thresholds"][0] = "@"
    program["state_sha256"] = _state_hash(program["state"])  # resealed as an attacker would
    path.write_text(json.dumps(program).replace('"@"', value))
    with pytest.raises(ArtifactError, match="is not standard JSON"):
        load(tmp_path, program=cascade)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["nodes"]["cascade"]["thresholds"].__setitem__(0, "nan"),
     r"cascade 'cascade': saved state field 'thresholds' must be numbers"),
    (lambda s: s["nodes"]["cascade"]["thresholds"].__setitem__(0, "abc"),
     r"field 'thresholds' must be numbers, \"inf\" or \"-inf\" \(never NaN\), got 'abc'"),
    (lambda s: s["nodes"]["cascade"].update(order=["0", "1"]), r"field 'order'"),
    (lambda s: s["nodes"]["cascade"]["judges"]["0"].update(weights={"agreement": "x"}),
     r"FeatureJudge: saved state field 'weights'"),
    (lambda s: s.update(nodes=["cascade"]), r"the program: saved state field 'nodes'"),
    (lambda s: s["nodes"].update({"cascade/cheap": "x"}), r"node 'cascade/cheap'"),
    (lambda s: s["nodes"]["cascade/cheap"].update(instructions=7), r"field 'instructions'"),
])
def test_a_state_of_the_wrong_type_is_one_clear_error(tmp_path, edit, message):
    path = _program(tmp_path)
    program = json.loads(path.read_text())
    edit(program["state"])
    program["state_sha256"] = _state_hash(program["state"])
    path.write_text(json.dumps(program))
    with pytest.raises(ConfigError, match=message) as error:
        load(tmp_path, program=cascade)
    assert "program.json" in str(error.value)


def test_inf_thresholds_still_round_trip(tmp_path):
    pipe = cascade()
    pipe.nodes["cascade"].thresholds = [float("-inf"), float("inf")]
    save_program(pipe, tmp_path)
    assert load(tmp_path, program=cascade).nodes["cascade"].thresholds == [float("-inf"),
                                                                            float("inf")]


def test_a_price_of_the_wrong_type_is_refused(tmp_path):
    path = _program(tmp_path)
    program = json.loads(path.read_text())
    program["state"]["models"]["big"]["$model"]["price"] = "abc"
    program["state_sha256"] = _state_hash(program["state"])
    path.write_text(json.dumps(program))
    with pytest.raises(ArtifactError, match=r"field 'price' must be null or \[input, output\]"):
        load(tmp_path, program=cascade)


# -- weights: the bytes checked are the bytes loaded ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    pytest.importorskip("peft")
    from tandemlm.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "base", layers=1, hidden=32, heads=2)


def _adapter(base: Path, out: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter for `base` with random (non-zero) weights."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(str(out))
    return out


def _with_adapter(tiny_lm: Path, root: Path):
    def program():
        return Pipeline([LMNode("question -> answer", model="small", name="solve")],
                        models={"small": Model("hf", str(tiny_lm), device="cpu")}, name="w")

    pipe = program()
    folder = _adapter(tiny_lm, root / "adapters" / "01-solve", seed=0)
    pipe.models["small"] = Model.from_dict({**pipe.models["small"].to_dict(), "adapter": str(folder)})
    save_program(pipe, root)
    return program, folder / "adapter_model.safetensors"


REQUEST = ScoreRequest(continuations=(" 5", " plum"),
                       messages=({"role": "user", "content": "What is 2 + 3?"},))


def _scores(model: Model) -> list[float]:
    (result,) = model.logprobs([REQUEST])
    assert result.error is None, result.error
    return result.logprobs


def test_weights_swapped_after_load_are_refused_not_used(tiny_lm, tmp_path):
    """load() checks the adapter's sha256; the backend reads it later, on first use. It must
    load the checked bytes or nothing, never what the path holds by then."""
    program, weights = _with_adapter(tiny_lm, tmp_path / "art")
    checked = shutil.copytree(weights.parent, tmp_path / "checked")
    swapped = _adapter(tiny_lm, tmp_path / "swapped", seed=1)
    loaded = load(tmp_path / "art", program=program)  # checks every file's sha256
    weights.write_bytes((swapped / weights.name).read_bytes())  # swapped before the lazy load
    with pytest.raises(ConfigError, match=r"adapter_model\.safetensors' changed after the "
                                          r"artifact was loaded"):
        loaded.models["small"].logprobs([REQUEST])
    weights.write_bytes((checked / weights.name).read_bytes())  # put back: now it loads
    expected = _scores(Model("hf", str(tiny_lm), device="cpu", adapter=str(checked)))
    assert expected != _scores(Model("hf", str(tiny_lm), device="cpu", adapter=str(swapped)))
    assert _scores(loaded.models["small"]) == expected


def test_the_backend_loads_a_private_copy_of_the_checked_files(tiny_lm, tmp_path):
    from tandemlm.runtime.verified_files import verified_source

    program, weights = _with_adapter(tiny_lm, tmp_path)
    (weights.parent / "notes.txt").write_text("added after the check")  # not listed, not copied
    with pytest.raises(ArtifactError, match=r"notes\.txt' is not listed"):
        load(tmp_path, program=program)
    (weights.parent / "notes.txt").unlink()
    load(tmp_path, program=program)
    (weights.parent / "notes.txt").write_text("added after the check")
    copy = Path(verified_source(weights.parent))
    assert copy != weights.parent and oct(copy.stat().st_mode & 0o777) == "0o700"  # private
    assert sorted(p.name for p in copy.iterdir()) == ["README.md", "adapter_config.json",
                                                      weights.name]
    assert (copy / weights.name).read_bytes() == weights.read_bytes()
