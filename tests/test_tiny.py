"""The tiny-model cache (`tandemlm.tiny.build_cached`): a model is built once per spec *and* per
version of the code that builds it, so an edited builder never serves the old builder's model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tandemlm import tiny

RECIPE = '''
from pathlib import Path

BUILT = []


def make(work: Path) -> None:
    BUILT.append(work)
    (work / "weights.txt").write_text("trained for {steps} steps")
'''


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _recipe(folder: Path, steps: int):
    """A builder module as a file on disk (its source is what `code_version` reads); two
    versions of it differ as an edit of the builder would."""
    folder.mkdir()
    (folder / "recipe.py").write_text(RECIPE.replace("{steps}", str(steps)))
    spec = importlib.util.spec_from_file_location(f"recipe_{folder.name}", folder / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_edited_builder_builds_a_new_folder_and_the_same_one_reuses_it(cache, tmp_path):
    old, new = _recipe(tmp_path / "old", steps=100), _recipe(tmp_path / "new", steps=300)
    first = tiny.build_cached("lm", {"texts": ["a b c"]}, old.make)
    assert first.parent == cache and first.name.startswith("lm-")
    assert tiny.build_cached("lm", {"texts": ["a b c"]}, old.make) == first
    assert len(old.BUILT) == 1  # the second call found it built

    edited = tiny.build_cached("lm", {"texts": ["a b c"]}, new.make)  # same spec, edited code
    assert edited != first and len(new.BUILT) == 1
    assert (edited / "weights.txt").read_text() == "trained for 300 steps"
    assert (first / "weights.txt").read_text() == "trained for 100 steps"


def test_the_spec_and_the_libraries_versions_are_in_the_key(cache, tmp_path, monkeypatch):
    recipe = _recipe(tmp_path / "r", steps=1)
    first = tiny.build_cached("lm", {"texts": ["a"]}, recipe.make)
    assert tiny.build_cached("lm", {"texts": ["b"]}, recipe.make) != first
    version = tiny.code_version(recipe.make)
    monkeypatch.setattr(tiny, "_major_minor", lambda name: "99.0" if name == "torch" else "1.0")
    assert tiny.code_version(recipe.make) != version
    assert tiny.build_cached("lm", {"texts": ["a"]}, recipe.make) != first


def test_code_version_reads_a_builder_without_a_source_file():
    namespace: dict = {}
    exec("def make(work):\n    return 1\n", namespace)
    exec("def other(work):\n    return 2\n", namespace)
    assert tiny.code_version(namespace["make"]) != tiny.code_version(namespace["other"])


def test_cached_chat_lm_is_built_once_under_the_cache(cache):
    pytest.importorskip("transformers")
    texts = ["the cat reads the map.", "a robot builds the plan."] * 4
    path = tiny.cached_chat_lm("chat", texts, hidden=16, heads=2, layers=1, steps=2)
    assert path.parent == cache and path.name.startswith("chat-")
    assert (path / "model.safetensors").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.cached_chat_lm("chat", texts, hidden=16, heads=2, layers=1, steps=2) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
