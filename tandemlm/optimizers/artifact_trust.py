"""What an artifact may contain, checked as it loads: data only.

A compiled artifact is data that someone else may have written, so loading one never runs code it
names. Three checks stand between `program.json` and a running program:

- **paths stay inside**: every path the state marks as the artifact's own (a trained adapter, a
  scorer's weights) is relative, has no `..` and resolves (symlinks followed) inside the artifact
  directory; every file under it is listed in `files` with its sha256, so a swapped or added file
  (a `modeling_*.py` beside the weights) is refused;
- **models come from the program's code**: a model in the state must be one the user's program
  builds (same backend, id, options), changed only by weights the artifact holds (a LoRA adapter,
  a scorer's folder), its display name, price and parameter count. An artifact therefore cannot
  point a model at another data file, server or folder, make a remote model local (private
  fields would reach it) or turn on `trust_remote_code`, which is never read from an artifact.
  Paths outside the artifact are accepted only under directories the user allows;
- **tamper-evidence** (optional): with a key in `TANDEM_ARTIFACT_KEY` (or `key=`), `compile`
  signs `program.json` with an HMAC-SHA256 over its whole content (state, file hashes, source),
  and `load` refuses an artifact whose signature is missing or wrong. Without a key, the sha256
  checksums catch truncation and accidental damage, not a deliberate edit (anyone can recompute
  them); the checks above hold either way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from tandemlm.runtime import ArtifactError, ConfigError, Model

KEY_ENV = "TANDEM_ARTIFACT_KEY"
_MODEL_KEYS = {"backend", "id", "adapter", "name", "price", "params", "remote", "options"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inside(root: Path, rel: Any, where: str) -> Path:
    """`root / rel`, refusing a path that is absolute, climbs out with `..` or resolves (through
    a symlink) outside `root`."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"{where}: expected a path inside the artifact, got {rel!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or Path(rel).is_absolute() or ".." in pure.parts:
        raise ArtifactError(f"{where}: path '{rel}' leaves the artifact directory (absolute or "
                            f"'..'); an artifact's own files lie inside it")
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(f"{where}: path '{rel}' resolves outside the artifact directory "
                            f"(a symlink?); an artifact's own files lie inside it")
    return path


def verify_files(listed: Any, refs: Iterable[str], root: Path, where: Path) -> None:
    """Every file under every path the state refers to is listed with a matching sha256."""
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise ArtifactError(f"'{where}': field 'files' must map file paths to sha256 digests")
    for rel in listed:
        inside(root, rel, f"'{where}' field 'files'")
    for ref in sorted(set(refs)):
        path = inside(root, ref, f"'{where}' state")
        if not path.exists():
            raise ArtifactError(f"artifact file '{path}' is missing; re-run compile to rebuild it")
        found = sorted(p for p in path.rglob("*")) if path.is_dir() else [path]
        for file in found:
            rel = file.relative_to(root).as_posix()
            inside(root, rel, f"'{where}' state")  # a symlink under the folder, pointing out
            if file.is_file() and rel not in listed:
                raise ArtifactError(f"artifact file '{file}' is not listed in '{where}' field "
                                    f"'files' (every file the state refers to is hashed there); "
                                    f"remove it or re-run compile")
    for rel, digest in listed.items():
        path = root / rel
        if not path.is_file():
            raise ArtifactError(f"artifact file '{path}' is missing; re-run compile to rebuild it")
        if sha256_file(path) != digest:
            raise ArtifactError(f"artifact file '{path}' is truncated or was modified (checksum "
                                f"mismatch); re-run compile to rebuild it")


# -- tamper-evidence -------------------------------------------------------------------------------

def artifact_key(key: str | bytes | None = None) -> bytes | None:
    key = key if key is not None else os.environ.get(KEY_ENV) or None
    return key.encode() if isinstance(key, str) else key


def signature(program: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in program.items() if k != "hmac"}
    return hmac.new(key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def check_signature(program: dict[str, Any], key: bytes | None, where: Path) -> None:
    if key is None:
        return
    recorded = program.get("hmac")
    if not isinstance(recorded, str):
        raise ArtifactError(f"'{where}' is not signed, but a key is set ({KEY_ENV} or key=): "
                            f"refusing an unsigned artifact; compile it with the key set, or "
                            f"unset the key to load unsigned artifacts")
    if not hmac.compare_digest(recorded, signature(program, key)):
        raise ArtifactError(f"'{where}' field 'hmac' does not match its content under the key "
                            f"in {KEY_ENV} (or key=): it was changed after it was signed, or "
                            f"signed with another key")


# -- models: only what the program's code builds ------------------------------------------------

def code_models(state: Any) -> list[Model]:
    """Every `Model` in a pipeline state (`pipeline_state` of the user's program)."""
    if isinstance(state, Model):
        return [state]
    if isinstance(state, dict):
        return [m for v in state.values() for m in code_models(v)]
    if isinstance(state, (list, tuple)):
        return [m for v in state for m in code_models(v)]
    return []


class ModelCheck:
    """Admits a model configuration from an artifact when the program's code builds it (see the
    module docstring); `allow` lists directories outside the artifact the user trusts. Name,
    price and parameter count are free: labels for reports and accounting, not behaviour."""

    def __init__(self, models: list[Model], root: Path, where: Path,
                 allow: Iterable[str | Path] = ()) -> None:
        self.models, self.root, self.where = models, root, where
        self.allow = [Path(p).resolve() for p in allow]

    def _allowed(self, value: Any) -> bool:
        if not isinstance(value, str) or not self.allow:
            return False
        path = Path(value).resolve()
        return any(path.is_relative_to(d) for d in self.allow)

    def admit(self, data: dict[str, Any], field: str) -> Model:
        where = f"'{self.where}' field '{field}'"
        config, relative = data.get("$model"), data.get("relative", [])
        if not isinstance(config, dict) or not isinstance(relative, list) \
                or set(relative) - {"id", "adapter"} or set(config) - _MODEL_KEYS:
            raise ArtifactError(f"{where} is not a model configuration this tandemlm wrote")
        config = dict(config)
        for key in relative:
            config[key] = str(inside(self.root, config.get(key), f"{where} ({key})"))
        try:
            model = Model.from_dict(config)
        except (TypeError, ConfigError) as exc:
            raise ArtifactError(f"{where} is not a valid model configuration: {exc}") from None
        reasons = [self._differs(config, relative, model, code) for code in self.models
                   if code.backend_name == model.backend_name]
        if None not in reasons:
            why = next((r for r in reasons if r), f"backend {model.backend_name!r} is not one the "
                                                   f"program's code uses")
            raise ArtifactError(f"{where}: {why}. An artifact may only add weights inside its "
                                f"directory to the models your program builds; load it onto the "
                                f"program it was compiled from, or re-run compile")
        return model

    def _differs(self, config: dict[str, Any], relative: list[str], model: Model,
                 code: Model) -> str | None:
        """Why `config` is not `code` plus the artifact's own weights; None when it is."""
        own = code.to_dict()
        for key in ("id", "adapter"):
            value = config.get(key)
            if key in relative or value == own[key] or (key == "adapter" and value is None):
                continue
            if not self._allowed(value):
                return (f"{key} {value!r} is neither inside the artifact nor what the program's "
                        f"code gives model '{code.name}' ({own[key]!r})")
        options = config.get("options") or {}
        for key, value in options.items():
            if key == "trust_remote_code" and value and model.id != code.id:
                return ("option trust_remote_code is set for weights the artifact supplies; "
                        "trust_remote_code is never read from an artifact")
            if key not in own["options"]:
                return (f"option {key}={value!r} is not one the program's code gives model "
                        f"'{code.name}'")
            if own["options"][key] != value and not self._allowed(value):
                return (f"option {key}={value!r} differs from what the program's code gives model "
                        f"'{code.name}' ({own['options'][key]!r})")
        if code.remote and not model.remote:
            return f"it makes model '{code.name}', which is remote, local (private fields would reach it)"
        return None
