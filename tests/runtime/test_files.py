"""build_once and cache_dir (runtime/files.py): what the hf backend's GGUF conversion and the tiny
models rely on."""

from __future__ import annotations

import stat

import pytest

from tandemlm.runtime import files


def test_build_once_builds_aside_lands_whole_and_never_rebuilds(tmp_path):
    calls = []

    def build(work):
        calls.append(work)
        (work / "weights").write_text("w")

    target = files.build_once(tmp_path / "model", build)
    assert (target / "weights").read_text() == "w" and calls[0] != target
    assert files.build_once(tmp_path / "model", build) == target and len(calls) == 1
    # as mkdir() would create it: mkdtemp's private 0o700 would hide a shared cache from others
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~files._UMASK


def test_an_interrupted_build_leaves_nothing(tmp_path):
    def build(work):
        (work / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.build_once(tmp_path / "model", build)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_follows_tandem_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path))
    assert files.cache_dir() == tmp_path
    monkeypatch.delenv("TANDEM_CACHE")
    assert files.cache_dir().parts[-2:] == (".cache", "tandemlm")
