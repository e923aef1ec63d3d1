"""Compiled programs on disk: `program.json` + weight files (`adapters/`, `scorers/`) + `report.json`.

No pickle, and no code: the program's structure comes from the user's code; `program.json`
holds its state (demos, instructions, model configurations, thresholds), the sha256 of every
file the state refers to and of the state itself, and the `source` it was compiled from (a
record, run only when the user says so). `artifact_trust` says what loading checks.

    save_program(pipeline, "out/")                 # what compile() writes at the end
    pipeline = load("out/", program=build)         # the state, set onto the program you built
    pipeline = load("out/", trust_source=True)     # or rebuilt from the recorded source
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.compose.state import pipeline_state, set_pipeline_state
from tandemlm.evaluate.loading import load_program
from tandemlm.optimizers.artifact_json import dump_json, finite, parse_json
from tandemlm.optimizers.artifact_trust import (ModelCheck, artifact_key, code_models, seal,
                                                sha256_file, unseal, verify_files)
from tandemlm.runtime import ArtifactError, ConfigError, Model
from tandemlm.runtime.files import atomic_write  # re-exported: passes and suites write through it

SCHEMA = "tandemlm.program/1"
_PATH_KEYS = ("id", "adapter")


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


def decode_state(data: Any, check: ModelCheck, field: str = "state") -> Any:
    """Inverse of `encode_state`; every model passes `check` (see `artifact_trust`)."""
    if isinstance(data, dict) and "$model" in data:
        if data["$model"] is None:
            return None  # keep the model the program's code builds
        return check.admit(data, field)
    if isinstance(data, dict):
        return {k: decode_state(v, check, f"{field}.{k}") for k, v in data.items()}
    if isinstance(data, list):
        return [decode_state(v, check, f"{field}[{i}]") for i, v in enumerate(data)]
    return data


def state_refs(data: Any) -> set[str]:
    """The artifact's own paths an encoded state refers to (models' relative id/adapter)."""
    if isinstance(data, dict) and isinstance(data.get("$model"), dict):
        relative = data.get("relative") if isinstance(data.get("relative"), list) else []
        return {data["$model"].get(k) for k in relative}
    if isinstance(data, dict):
        return {r for v in data.values() for r in state_refs(v)}
    if isinstance(data, list):
        return {r for v in data for r in state_refs(v)}
    return set()


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
    """Raise `ArtifactError` naming the first altered state, or missing, unlisted, truncated or
    altered file; the files' digests are then pinned for the backends that load them."""
    if not isinstance(snap, dict) or not isinstance(snap.get("state"), dict):
        raise ArtifactError(f"'{where}' holds no program state (field 'state' must be an object); "
                            f"re-run compile to rebuild it")
    if _state_hash(snap.get("state")) != snap.get("state_sha256"):
        raise ArtifactError(f"'{where}' was modified after it was written (its state does not "
                            f"match its checksum); re-run compile to rebuild it")
    verify_files(snap.get("files", {}), state_refs(snap.get("state")), root, where)


def restore_state(pipeline: Pipeline, snap: dict[str, Any], root: Path, where: Path,
                  allow_paths: Iterable[str | Path] = ()) -> None:
    """Set the state of `snap` (from `snapshot`, already through `verify_snapshot`) on
    `pipeline`, built by the user's code; every model in it passes `ModelCheck`, and every node
    checks the types of its state (a wrong one is a `ConfigError` naming the node and field).
    A state that fails may leave `pipeline` half-restored: restore onto a copy."""
    check = ModelCheck(code_models(pipeline_state(pipeline)), root, where, allow_paths)
    try:
        set_pipeline_state(pipeline, decode_state(snap["state"], check))
    except ConfigError as exc:
        raise ConfigError(f"'{where}': {exc}") from None


def read_json(path: Path, what: str, key: bytes | None = None) -> dict[str, Any]:
    """The JSON object in the artifact file `path`, its signature checked on the raw bytes
    when a `key` is given (see `artifact_trust.unseal`), then parsed strictly (see
    `artifact_json`); its `hmac` member is dropped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{what} '{path}' does not exist") from None
    except OSError as exc:
        raise ArtifactError(f"{what} '{path}' cannot be read: {exc}") from None
    return parse_record(raw, path, what, key)


def parse_record(raw: bytes, path: Path, what: str, key: bytes | None = None) -> dict[str, Any]:
    """`read_json` of bytes already read from `path`."""
    unseal(raw, key, path)
    data = parse_json(raw, path)
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} '{path}' must hold a JSON object")
    data.pop("hmac", None)
    return data


def write_json(path: Path, record: dict[str, Any], key: bytes | None) -> bytes:
    """Write `record` atomically as strict JSON, signed with `key` when one is given; returns
    the bytes written (a pass record's successor chains to their digest)."""
    text = seal(dump_json(record, str(path)), key)
    atomic_write(path, text)
    return text.encode("utf-8")


def _version() -> str:
    try:
        return metadata.version("tandemlm")
    except metadata.PackageNotFoundError:
        return "unknown"


def save_program(pipeline: Pipeline, out_dir: str | Path, *, source: str | None = None,
                 passes: list[dict[str, Any]] | None = None, key: str | bytes | None = None) -> Path:
    """Write `program.json` for `pipeline` into `out_dir` (its files must already lie there),
    signed when a key is given or set in `TANDEM_ARTIFACT_KEY`."""
    root = Path(out_dir)
    program = {"schema": SCHEMA, "name": pipeline.name, "source": source, "tandemlm": _version(),
               "passes": finite(passes or []), **snapshot(pipeline, root)}
    write_json(root / "program.json", program, artifact_key(key))
    return root / "program.json"


Program = Pipeline | Callable[[], Pipeline] | str


def recorded_source(out_dir: str | Path) -> str | None:
    """The program source an artifact records (compile's `source`), or None; never run here."""
    source = read_json(Path(out_dir) / "program.json", "compiled program").get("source")
    return source if isinstance(source, str) else None


def _program(program: Program | None, data: dict[str, Any], path: Path, trust_source: bool) -> Pipeline:
    source = data.get("source")
    if program is None:
        if not isinstance(source, str):
            raise ConfigError(f"'{path}' does not record which program it was compiled from; pass "
                              f"program=... (the Pipeline or a function building it)")
        if not trust_source:
            raise ArtifactError(
                f"'{path}' was compiled from program '{source}'; loading an artifact never runs "
                f"code it names. Pass program='{source}' (or the Pipeline, or a function building "
                f"it) to load it onto that code, or trust_source=True to run the recorded source "
                f"(CLI: DIR@PROGRAM, or --trust-source)")
        program = source
    pipeline = load_program(program) if isinstance(program, str) else program
    pipeline = pipeline() if callable(pipeline) and not isinstance(pipeline, Pipeline) else pipeline
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(f"program {program!r} is a {type(pipeline).__name__}, not a Pipeline")
    return copy.deepcopy(pipeline)


def load(out_dir: str | Path, program: Program | None = None, *, trust_source: bool = False,
         allow_paths: Iterable[str | Path] = (), key: str | bytes | None = None) -> Pipeline:
    """A runnable pipeline from a compiled artifact: its state, checked, set onto your program.

    Loading never runs code the artifact names (see `artifact_trust` for every check).

    Args:
        out_dir: the directory `compile` wrote.
        program: the pipeline (or a function building it, or "file.py:NAME") to load the state
            onto: the code you trust.
        trust_source: with no `program`, build it from the `source` the artifact records
            (`recorded_source(out_dir)` shows it): say so only for artifacts you trust.
        allow_paths: directories outside the artifact its models may name (by default models
            are the program's own, plus weights inside the artifact).
        key: the HMAC key (default `TANDEM_ARTIFACT_KEY`): when set, an unsigned or altered
            artifact is refused.
    """
    root = Path(out_dir)
    path = root / "program.json"
    data = read_json(path, "compiled program", artifact_key(key))  # signature on the bytes first
    if data.get("schema") != SCHEMA:
        raise ArtifactError(f"'{path}' has schema {data.get('schema')!r}; this tandemlm reads "
                            f"{SCHEMA!r}")
    verify_snapshot(data, root, path)  # before any code is imported for the program
    pipeline = _program(program, data, path, trust_source)
    restore_state(pipeline, data, root, path, allow_paths)
    return pipeline
