"""Pinned files load from the bytes whose sha256 was checked: a private copy, made once, hashed
as it is written; a file changed after its check is refused, not copied."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tandemlm.runtime import ConfigError
from tandemlm.runtime.verified_files import (files_under, pin, read_checked, release,
                                             verified_source)


def _folder(root: Path) -> tuple[Path, dict[Path, str]]:
    folder = root / "adapter"
    folder.mkdir()
    files = {folder / "weights.bin": b"\x00weights", folder / "sub" / "config.json": b"{}"}
    for path, data in files.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    return folder, {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def test_an_unpinned_path_is_its_own_source(tmp_path):
    assert verified_source(tmp_path / "x") == str(tmp_path / "x")
    assert verified_source("org/model") == "org/model"  # a hub id


def test_a_pinned_folder_loads_from_a_private_copy_of_its_pinned_files(tmp_path):
    folder, digests = _folder(tmp_path)
    pin(digests)
    (folder / "modeling_evil.py").write_text("import os\n")  # never checked: never copied
    copy = Path(verified_source(folder))
    assert copy != folder and (copy.stat().st_mode & 0o077) == 0
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) \
        == ["sub/config.json", "weights.bin"]
    assert verified_source(folder) == str(copy)  # made once
    single = Path(verified_source(folder / "weights.bin"))
    assert single.name == "weights.bin" and single.read_bytes() == b"\x00weights"
    # What checks read (a tokenizer's configuration) is what the copy holds.
    assert [p.name for p in files_under(folder)] == ["config.json", "weights.bin"]
    assert read_checked(folder / "sub" / "config.json") == b"{}"


def test_a_file_changed_after_its_check_is_refused(tmp_path):
    folder, digests = _folder(tmp_path)
    pin(digests)
    (folder / "weights.bin").write_bytes(b"\x00swapped")
    with pytest.raises(ConfigError, match=r"weights\.bin' changed after the artifact was loaded"):
        verified_source(folder)
    with pytest.raises(ConfigError, match="changed after"):
        read_checked(folder / "weights.bin")
    release([folder])  # a pass rewrites the folder: its old digests no longer apply
    assert verified_source(folder) == str(folder)
