"""An artifact is data: loading one never runs code it names, never reads trust_remote_code from
it, keeps every path inside it and refuses files it does not list.

Each attack edits program.json and then re-seals it as an attacker would (recomputes
`state_sha256` and the file hashes with the library's own functions), so what refuses it is the
rule under test, not a stale checksum. The programs bind the real `recorded` backend on the
packaged OVERRULING excerpt and `hf` handles (never loaded: the refusal comes first).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import save_file

import numpy as np

from tandemlm import LMNode, Model, Pipeline, Solve
from tandemlm.evaluate import load_data, packaged_data
from tandemlm.optimizers import load, save_program
from tandemlm.optimizers.artifacts import _file_hashes, _state_hash, recorded_source, state_refs
from tandemlm.runtime import ArtifactError

EXCERPT = packaged_data("overruling_excerpt.jsonl")
MARK = Path("/tmp/tandem-artifact-attack-ran")


def recorded() -> Pipeline:
    model = Model("recorded", "gpt-4", data=str(EXCERPT))
    return Pipeline([Solve("prompt -> answer", model="big", prompt_field="prompt", key_field="id")],
                    models={"big": model}, name="rec")


def local(base: str = "/models/base", **options) -> Pipeline:
    return Pipeline([LMNode("question -> answer", model="small", name="solve")],
                    models={"small": Model("hf", base, **options)}, name="loc")


def reseal(root: Path, edit) -> None:
    """Apply `edit` to program.json, then recompute its checksums as an attacker would."""
    path = root / "program.json"
    program = json.loads(path.read_text())
    edit(program)
    program["state_sha256"] = _state_hash(program["state"])
    program["files"] = _file_hashes(root, state_refs(program["state"]))
    path.write_text(json.dumps(program))


def with_adapter(root: Path, build=local) -> Pipeline:
    """A compiled-like artifact: `build()`'s model plus a LoRA adapter folder inside `root`."""
    pipe = build()
    folder = root / "adapters" / "01-solve"
    folder.mkdir(parents=True)
    save_file({"lora_A": np.ones((2, 4), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    base = pipe.models["small"]
    pipe.models["small"] = Model.from_dict({**base.to_dict(), "adapter": str(folder)})
    save_program(pipe, root, source="programs/x.py:build")
    return pipe


@pytest.fixture(autouse=True)
def _no_mark():
    MARK.unlink(missing_ok=True)
    yield
    MARK.unlink(missing_ok=True)


def test_a_saved_program_loads_onto_the_users_code_with_its_adapter(tmp_path):
    with_adapter(tmp_path)
    loaded = load(tmp_path, program=local)
    assert loaded.models["small"].adapter == str(tmp_path / "adapters" / "01-solve")
    assert loaded.models["small"].id == "/models/base"


@pytest.mark.parametrize("source", [f"os:system(command='touch {MARK}')", "/tmp/pwn.py:program"])
def test_the_recorded_source_is_never_run_unless_the_user_says_so(tmp_path, source):
    Path("/tmp/pwn.py").write_text(f"open({str(MARK)!r}, 'w').close()\nprogram = None\n")
    save_program(recorded(), tmp_path, source="tandemlm.suites.overruling:build")
    reseal(tmp_path, lambda p: p.update(source=source))  # `source` lies outside the state
    with pytest.raises(ArtifactError, match="never runs code it names") as err:
        load(tmp_path)
    assert source in str(err.value) and "trust_source=True" in str(err.value)
    assert not MARK.exists()
    assert recorded_source(tmp_path) == source
    assert load(tmp_path, program=recorded).name == "rec"  # the user's code: fine
    assert not MARK.exists()


def test_trust_remote_code_is_never_read_from_an_artifact(tmp_path):
    with_adapter(tmp_path)
    evil = tmp_path / "scorers" / "evil"
    evil.mkdir(parents=True)
    (evil / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling.Evil"}}))
    (evil / "modeling.py").write_text(f"open({str(MARK)!r}, 'w').close()\n")

    def edit(program):
        program["state"]["models"]["small"] = {
            "$model": {"backend": "hf", "id": "scorers/evil", "options": {"trust_remote_code": True}},
            "relative": ["id"]}
    reseal(tmp_path, edit)
    with pytest.raises(ArtifactError, match=r"field 'state\.models\.small'.*trust_remote_code"):
        load(tmp_path, program=local)
    # Not even when the user's own code trusts remote code for its base model.
    with pytest.raises(ArtifactError, match="trust_remote_code is never read from an artifact"):
        load(tmp_path, program=lambda: local(trust_remote_code=True))
    assert not MARK.exists()


def test_a_model_cannot_be_pointed_at_another_data_file(tmp_path):
    hacked = tmp_path.parent / "hacked.jsonl"
    rows = load_data(EXCERPT)
    hacked.write_text("".join(json.dumps({**r, "models": {"gpt-4": {"output": "HACKED"}}}) + "\n"
                              for r in rows))
    save_program(recorded(), tmp_path)
    reseal(tmp_path, lambda p: p["state"]["models"]["big"]["$model"]["options"].update(data=str(hacked)))
    with pytest.raises(ArtifactError, match=r"'state\.models\.big': option data=.*hacked\.jsonl.* "
                                            r"differs from what the program's code gives"):
        load(tmp_path, program=recorded)
    loaded = load(tmp_path, program=recorded, allow_paths=[tmp_path.parent])  # the user allows it
    assert loaded.models["big"].options["data"] == str(hacked)


@pytest.mark.parametrize("field, value, message", [
    ("adapter", "adapters/../../elsewhere", "leaves the artifact directory"),
    ("adapter", "/etc", "leaves the artifact directory"),
    ("id", "../../models/other", "leaves the artifact directory"),
])
def test_paths_marked_as_the_artifacts_own_stay_inside_it(tmp_path, field, value, message):
    with_adapter(tmp_path)

    def edit(program):
        entry = program["state"]["models"]["small"]
        entry["$model"][field] = value
        entry["relative"] = sorted({*entry["relative"], field})
    reseal_or_not = tmp_path / "program.json"
    program = json.loads(reseal_or_not.read_text())
    edit(program)
    program["state_sha256"] = _state_hash(program["state"])  # the files cannot be hashed: outside
    reseal_or_not.write_text(json.dumps(program))
    with pytest.raises(ArtifactError, match=message):
        load(tmp_path, program=local)


def test_an_absolute_model_path_not_in_the_code_is_refused(tmp_path):
    with_adapter(tmp_path)
    reseal(tmp_path, lambda p: p["state"]["models"]["small"]["$model"].update(id="/somewhere/else"))
    with pytest.raises(ArtifactError, match=r"id '/somewhere/else' is neither inside the artifact"):
        load(tmp_path, program=local)


def test_a_symlink_out_of_the_artifact_is_refused(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "weights.safetensors").write_bytes(b"x")
    with_adapter(tmp_path)
    (tmp_path / "adapters" / "01-solve" / "extra").symlink_to(outside)
    with pytest.raises(ArtifactError, match="resolves outside the artifact directory"):
        load(tmp_path, program=local)


def test_every_weight_file_must_be_listed(tmp_path):
    with_adapter(tmp_path)
    program = json.loads((tmp_path / "program.json").read_text())
    program["files"] = {}
    (tmp_path / "program.json").write_text(json.dumps(program))
    weights = tmp_path / "adapters" / "01-solve" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x07")  # swapped
    with pytest.raises(ArtifactError, match=r"adapter_model\.safetensors' is not listed"):
        load(tmp_path, program=local)


def test_an_added_file_beside_the_weights_is_refused(tmp_path):
    with_adapter(tmp_path)
    (tmp_path / "adapters" / "01-solve" / "modeling_evil.py").write_text("import os\n")
    with pytest.raises(ArtifactError, match=r"modeling_evil\.py' is not listed"):
        load(tmp_path, program=local)


def test_a_remote_model_cannot_be_made_local(tmp_path):
    save_program(recorded(), tmp_path)
    reseal(tmp_path, lambda p: p["state"]["models"]["big"]["$model"].update(remote=False))
    with pytest.raises(ArtifactError, match="which is remote, local"):
        load(tmp_path, program=recorded)


def test_a_signed_artifact_refuses_any_edit_even_resealed(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_ARTIFACT_KEY", "s3cret")
    save_program(recorded(), tmp_path)
    assert load(tmp_path, program=recorded).name == "rec"
    with pytest.raises(ArtifactError, match="another key"):
        load(tmp_path, program=recorded, key="other")
    reseal(tmp_path, lambda p: p["state"]["models"]["big"]["$model"].update(name="cheap"))
    with pytest.raises(ArtifactError, match="field 'hmac' does not match"):
        load(tmp_path, program=recorded)
    monkeypatch.delenv("TANDEM_ARTIFACT_KEY")
    assert load(tmp_path, program=recorded).models["big"].name == "cheap"  # no key: name is free
    save_program(recorded(), tmp_path)  # unsigned
    with pytest.raises(ArtifactError, match="is not signed"):
        load(tmp_path, program=recorded, key="s3cret")


# -- a model is the code's whole option set, both ways ---------------------------------------------

def served(model: Model) -> Pipeline:
    return Pipeline([LMNode("question -> answer", model="m", name="solve")], models={"m": model},
                    name="srv")


API = Model("openai", "gpt-4o-mini", base_url="http://127.0.0.1:9/v1", api_key_env="TANDEM_TEST_KEY")
JUDGE = Model("hf-classifier", "/models/minilm", max_length=128)


@pytest.mark.parametrize("model, option", [(API, "api_key_env"), (API, "base_url"),
                                           (JUDGE, "max_length")])
def test_an_artifact_cannot_drop_an_option_the_code_gives(tmp_path, model, option):
    """Dropping `api_key_env` made the openai backend send OPENAI_API_KEY (its default) to the
    program's server; dropping a judge's `max_length` changed how it truncates."""
    save_program(served(model), tmp_path)
    reseal(tmp_path, lambda p: p["state"]["models"]["m"]["$model"]["options"].pop(option))
    with pytest.raises(ArtifactError, match=rf"'state\.models\.m': it drops option {option}=.*which "
                                            rf"the program's code gives model '{model.name}'"):
        load(tmp_path, program=lambda: served(model))
    assert load_fresh(tmp_path, model).models["m"].options == model.options


def load_fresh(root: Path, model: Model) -> Pipeline:
    """The same artifact saved again untouched: it loads (the rule refuses edits only)."""
    save_program(served(model), root)
    return load(root, program=lambda: served(model))


@pytest.mark.parametrize("option, value", [("base_url", "http://evil.example/v1"),
                                           ("base_url", "/run/proxy.sock"),
                                           ("api_key_env", "AWS_SECRET_ACCESS_KEY")])
def test_credentials_never_change_through_an_artifact_even_under_an_allowed_path(tmp_path, option,
                                                                                value):
    save_program(served(API), tmp_path)
    reseal(tmp_path, lambda p: p["state"]["models"]["m"]["$model"]["options"].update({option: value}))
    with pytest.raises(ArtifactError, match=rf"option {option}=.*differs.*never change through an "
                                            rf"artifact"):
        # A relative value used to resolve under the working directory, here an allowed one.
        load(tmp_path, program=lambda: served(API), allow_paths=[Path.cwd(), "/"])


def test_options_compare_as_json_values(tmp_path):
    model = Model("recorded", "gpt-4", data=(str(EXCERPT),))  # a tuple saves as a list
    save_program(served(model), tmp_path)
    assert load(tmp_path, program=lambda: served(model)).models["m"].options["data"] == [str(EXCERPT)]


# -- a chat template from an artifact is the base model's own -------------------------------------

SLOW = "{% for i in range(10 ** 9) %}{% endfor %}{{ messages[0]['content'] }}"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from tandemlm.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "base", layers=1, hidden=32, heads=2)


def on_base(base: Path, root: Path, folder: str, **changes) -> Pipeline:
    """`base`'s program, saved with the model's weights (id) or adapter in `root/folder`."""
    model = Model("hf", str(base), device="cpu")
    pipe = served(model)
    pipe.models["m"] = Model.from_dict({**model.to_dict(), **{k: str(root / folder)
                                                             for k in changes}})
    save_program(pipe, root)
    return pipe


def test_an_artifact_folder_cannot_bring_another_chat_template(tiny_base, tmp_path):
    same, other = tmp_path / "same", tmp_path / "other"
    for root in (same, other):
        shutil.copytree(tiny_base, root / "models" / "01-solve")
    (other / "models" / "01-solve" / "chat_template.jinja").write_text(SLOW)

    def program():
        return served(Model("hf", str(tiny_base), device="cpu"))

    on_base(tiny_base, same, "models/01-solve", id=True)
    assert load(same, program=program).models["m"].id == str(same / "models" / "01-solve")
    on_base(tiny_base, other, "models/01-solve", id=True)
    with pytest.raises(ArtifactError, match=r"the chat template in '.*01-solve' differs from the "
                                            r"one of model .*never changes the template"):
        load(other, program=program)


@pytest.mark.parametrize("where", ["tokenizer_config.json", "adapter"])
def test_a_chat_template_hidden_elsewhere_in_an_artifact_folder_is_refused(tiny_base, tmp_path,
                                                                          where):
    folder = tmp_path / "adapters" / "01-solve"
    if where == "adapter":  # an adapter folder brings no tokenizer; a template there is refused
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        (folder / "chat_template.jinja").write_text(SLOW)
    else:
        shutil.copytree(tiny_base, folder)
        config = json.loads((folder / where).read_text())
        (folder / where).write_text(json.dumps({**config, "chat_template": SLOW}))
    on_base(tiny_base, tmp_path, "adapters/01-solve", **({"adapter": True} if where == "adapter"
                                                         else {"id": True}))
    with pytest.raises(ArtifactError, match="chat template"):
        load(tmp_path, program=lambda: served(Model("hf", str(tiny_base), device="cpu")))
