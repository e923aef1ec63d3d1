"""Compiled programs on disk: `program.json` + weight files (`adapters/`, `scorers/`) + `report.json`.

No pickle. The program's structure comes from its code (`source`, e.g. "programs/x.py:build");
`program.json` holds its state (demos, instructions, model configurations, thresholds) and the
sha256 of every file the state refers to, and of the state itself, so a truncated or tampered
artifact fails to load with an error naming the file.

    save_program(pipeline, "out/")                 # what compile() writes at the end
    pipeline = load("out/")                        # rebuilds from `source`, then sets the state
    pipeline = load("out/", program=build)         # or onto a program you built
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.compose.state import pipeline_state, set_pipeline_state
from tandemlm.evaluate.loading import load_program
from tandemlm.runtime import ArtifactError, ConfigError, Model

SCHEMA = "tandemlm.program/1"
_PATH_KEYS = ("id", "adapter")


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (only settable) and put it back


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inside(path: str, root: Path) -> str | None:
    """`path` relative to `root` when it lies inside it, else None."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def encode_state(state: Any, root: Path, files: set[str]) -> Any:
    """JSON form of a pipeline state: a `Model` becomes its configuration, with paths inside
    `root` stored relative (collected into `files`)."""
    if isinstance(state, Model):
        if not state.serializable:
            # Options that are not JSON (a test double's callables) cannot be saved: the loaded
            # program keeps the model its code builds.
            return {"$model": None, "name": state.name}
        data = state.to_dict()
        relative = []
        for key in _PATH_KEYS:
            rel = _inside(data[key], root) if data.get(key) else None
            if rel is not None:
                data[key] = rel
                relative.append(key)
                files.add(rel)
        return {"$model": data, "relative": relative}
    if isinstance(state, dict):
        return {str(k): encode_state(v, root, files) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [encode_state(v, root, files) for v in state]
    if isinstance(state, (str, int, float, bool)) or state is None:
        return state
    raise ConfigError(f"cannot save a {type(state).__name__} in a program state; node states "
                      f"hold JSON values and Models")


def decode_state(data: Any, root: Path) -> Any:
    """Inverse of `encode_state`."""
    if isinstance(data, dict) and "$model" in data:
        if data["$model"] is None:
            return None  # keep the model the program's code builds
        config = dict(data["$model"])
        for key in data.get("relative", []):
            config[key] = str(root / config[key])
        return Model.from_dict(config)
    if isinstance(data, dict):
        return {k: decode_state(v, root) for k, v in data.items()}
    if isinstance(data, list):
        return [decode_state(v, root) for v in data]
    return data


def _file_hashes(root: Path, refs: set[str]) -> dict[str, str]:
    """sha256 of every file the state refers to (a directory: every file under it)."""
    hashes = {}
    for ref in sorted(refs):
        path = root / ref
        if not path.exists():
            raise ArtifactError(f"the program refers to '{path}', which does not exist")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            hashes[file.relative_to(root).as_posix()] = sha256_file(file)
    return hashes


def _state_hash(state: Any) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def snapshot(pipeline: Pipeline, root: Path) -> dict[str, Any]:
    """The pipeline's encoded state with the hashes of the files it refers to."""
    refs: set[str] = set()
    state = encode_state(pipeline_state(pipeline), root, refs)
    return {"state": state, "state_sha256": _state_hash(state), "files": _file_hashes(root, refs)}


def verify_snapshot(snap: dict[str, Any], root: Path, where: Path) -> None:
    """Raise `ArtifactError` naming the first missing, truncated or altered file."""
    if _state_hash(snap.get("state")) != snap.get("state_sha256"):
        raise ArtifactError(f"'{where}' was modified after it was written (its state does not "
                            f"match its checksum); re-run compile to rebuild it")
    for rel, digest in snap.get("files", {}).items():
        path = root / rel
        if not path.is_file():
            raise ArtifactError(f"artifact file '{path}' is missing; re-run compile to rebuild it")
        if sha256_file(path) != digest:
            raise ArtifactError(f"artifact file '{path}' is truncated or was modified (checksum "
                                f"mismatch); re-run compile to rebuild it")


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{what} '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{what} '{path}' is not valid JSON (truncated or corrupt): {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} '{path}' must hold a JSON object")
    return data


def _version() -> str:
    try:
        return metadata.version("tandemlm")
    except metadata.PackageNotFoundError:
        return "unknown"


def save_program(pipeline: Pipeline, out_dir: str | Path, *, source: str | None = None,
                 passes: list[dict[str, Any]] | None = None) -> Path:
    """Write `program.json` for `pipeline` into `out_dir` (its files must already lie there)."""
    root = Path(out_dir)
    program = {"schema": SCHEMA, "name": pipeline.name, "source": source, "tandemlm": _version(),
               "passes": passes or [], **snapshot(pipeline, root)}
    atomic_write(root / "program.json", json.dumps(program, indent=1) + "\n")
    return root / "program.json"


def load(out_dir: str | Path, program: Pipeline | Callable[[], Pipeline] | str | None = None) -> Pipeline:
    """A runnable pipeline from a compiled artifact.

    Args:
        out_dir: the directory `compile` wrote.
        program: the pipeline (or a function building it, or "file.py:NAME") to load the state
            onto; default: the `source` recorded at compile time.
    """
    root = Path(out_dir)
    path = root / "program.json"
    data = read_json(path, "compiled program")
    if data.get("schema") != SCHEMA:
        raise ArtifactError(f"'{path}' has schema {data.get('schema')!r}; this tandemlm reads "
                            f"{SCHEMA!r}")
    verify_snapshot(data, root, path)
    source = program if program is not None else data.get("source")
    if source is None:
        raise ConfigError(f"'{path}' does not record which program it was compiled from; pass "
                          f"program=... (the Pipeline or a function building it)")
    pipeline = load_program(source) if isinstance(source, str) else source
    pipeline = pipeline() if callable(pipeline) and not isinstance(pipeline, Pipeline) else pipeline
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(f"program {source!r} is a {type(pipeline).__name__}, not a Pipeline")
    pipeline = copy.deepcopy(pipeline)
    set_pipeline_state(pipeline, decode_state(data["state"], root))
    return pipeline
