"""Files whose sha256 an artifact's check vouched for, read by backends from the checked bytes.

Loading an artifact hashes its weight files, but a backend reads them later, on first use: a
file swapped in between would be used unchecked. So the check *pins* each file's digest here,
and a backend asks `verified_source(path)` for what to load: for a path with pinned files under
it, a private copy (a fresh `mkdtemp` folder only this user can write) made from bytes hashed
while they were copied, holding only the pinned files; for any other path, the path itself.
Folders of trained weights are small next to the models they adapt; the copy is made once per
process and removed at exit.

    pin({Path("out/adapters/01-solve/adapter_model.safetensors"): "9f2c..."})
    peft.PeftModel.from_pretrained(model, verified_source("out/adapters/01-solve"))
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from tandemlm.runtime.errors import ConfigError

_CHUNK = 1 << 20
_LOCK = threading.Lock()
_PINS: dict[Path, str] = {}  # resolved file path -> sha256 its check found
_COPIES: dict[tuple, Path] = {}  # (resolved path, its pins) -> the private copy


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def pin(files: Mapping[str | Path, str]) -> None:
    """Record the sha256 that a check found for each file; later pins of a file replace earlier
    ones (the artifact was checked again)."""
    with _LOCK:
        _PINS.update({_resolved(path): digest for path, digest in files.items()})


def release(folders: Iterable[str | Path]) -> None:
    """Forget the pins under `folders`: their files are being rewritten (a pass runs again)."""
    roots = [_resolved(f) for f in folders]
    with _LOCK:
        for path in [p for p in _PINS if any(p.is_relative_to(r) for r in roots)]:
            del _PINS[path]


def verified_source(path: str | Path) -> str:
    """What to load for `path`: itself when no pinned file lies under it, else a private copy
    of the pinned files (a file: the copied file), each copied from bytes whose sha256 is the
    pinned one. Raises `ConfigError` when a file changed since it was checked."""
    resolved = _resolved(path)
    with _LOCK:
        pins = {p: d for p, d in _PINS.items() if p == resolved or p.is_relative_to(resolved)}
    if not pins:
        return str(path)
    key = (resolved, tuple(sorted((str(p), d) for p, d in pins.items())))
    with _LOCK:
        copy = _COPIES.get(key)
    if copy is not None and copy.exists():
        return str(copy)
    folder = Path(tempfile.mkdtemp(prefix="tandem-verified-"))  # mode 0700: only this user
    atexit.register(shutil.rmtree, folder, True)
    try:
        for file, digest in pins.items():
            rel = file.relative_to(resolved) if file != resolved else Path(file.name)
            _copy_checked(file, folder / rel, digest)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    copy = folder / resolved.name if resolved in pins else folder  # a file, or a folder's files
    with _LOCK:
        _COPIES[key] = copy
    return str(copy)


def files_under(folder: str | Path) -> list[Path]:
    """The files a backend loads from `folder`: its pinned files when it has any (the private
    copy holds those only), else every file under it."""
    resolved = _resolved(folder)
    with _LOCK:
        pinned = sorted(p for p in _PINS if p.is_relative_to(resolved) and p != resolved)
    if pinned:
        return [Path(folder) / p.relative_to(resolved) for p in pinned]
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def read_checked(path: str | Path) -> bytes:
    """The bytes of the file `path`, checked against its pin when it has one (a small file read
    whole, e.g. a tokenizer's configuration: no copy needed). Raises `ConfigError` when it
    changed since its check."""
    with _LOCK:
        digest = _PINS.get(_resolved(path))
    data = Path(path).read_bytes()
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise ConfigError(f"artifact file '{path}' changed after the artifact was loaded and "
                          f"checked (its sha256 no longer matches); refusing to use it. Load the "
                          f"artifact again, or re-run compile")
    return data


def _copy_checked(source: Path, target: Path, digest: str) -> None:
    """Copy `source` to `target`, hashing the very bytes written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    found = hashlib.sha256()
    try:
        with source.open("rb") as reader, target.open("wb") as writer:
            while chunk := reader.read(_CHUNK):
                found.update(chunk)
                writer.write(chunk)
    except OSError as exc:
        raise ConfigError(f"artifact file '{source}' was checked when the artifact loaded but "
                          f"cannot be read now ({exc}); load the artifact again") from exc
    if found.hexdigest() != digest:
        raise ConfigError(f"artifact file '{source}' changed after the artifact was loaded and "
                          f"checked (its sha256 no longer matches); refusing to use it. Load the "
                          f"artifact again, or re-run compile")
