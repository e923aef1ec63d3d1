"""What an artifact may contain, checked as it loads: data only.

A compiled artifact is data that someone else may have written, so loading one never runs code it
names. These checks stand between `program.json` and a running program:

- **bytes first**: with a key, the HMAC is checked on the file's raw bytes (`unseal`) before
  they are parsed; parsing is strict (`artifact_json`: standard JSON, no repeated keys, bounded
  nesting), and every node checks the types of the state it restores;
- **paths stay inside**: every path the state marks as the artifact's own (a trained adapter, a
  scorer's weights) is relative, has no `..` and resolves (symlinks followed) inside the artifact
  directory; every file under it is listed in `files` with its sha256, so a swapped or added file
  (a `modeling_*.py` beside the weights) is refused. The digests are pinned
  (`runtime.verified_files`): a backend loads a private copy made from bytes hashed as they were
  copied, so a file swapped after the check is refused, not used;
- **models come from the program's code**: a model in the state must be one the user's program
  builds: same backend and the *whole* option set, compared both ways (an artifact can neither
  add, change nor drop an option), changed only by weights the artifact holds (a LoRA adapter,
  a scorer's folder: id/adapter), its display name, price and parameter count. An artifact
  therefore cannot point a model at another data file, server or folder, send a model's
  credentials elsewhere (`CREDENTIAL_OPTIONS` never change, not even to an allowed path), make
  a remote model local (private fields would reach it) or turn on `trust_remote_code`, which is
  never read from an artifact. Paths outside the artifact are accepted only as absolute paths
  under directories the user allows. A chat template inside the artifact's weight or adapter
  folders must be the base model's own (same text): a template is a program the tokenizer runs;
- **tamper-evidence** (optional): with a key in `TANDEM_ARTIFACT_KEY` (or `key=`), `compile`
  signs `program.json` and its pass records with an HMAC-SHA256 over their bytes, and `load`
  refuses an artifact whose signature is missing or wrong. Without a key, the sha256
  checksums catch truncation and accidental damage, not a deliberate edit (anyone can recompute
  them); the checks above hold either way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from tandemlm.optimizers.artifact_json import parse_json
from tandemlm.runtime import ArtifactError, ConfigError, Model
from tandemlm.runtime.verified_files import files_under, pin, read_checked

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
    """Every file under every path the state refers to is listed with a matching sha256; the
    digests are then pinned, so what a backend later loads is these bytes (see
    `runtime.verified_files`)."""
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
    pin({root / rel: digest for rel, digest in listed.items()})


# -- tamper-evidence -------------------------------------------------------------------------------
#
# The signature covers the file's raw bytes, so it is checked before a byte is parsed. A signed
# file is the unsigned JSON text `{\n ...}` with one member spliced in first:
# `{"hmac": "<64 hex>",\n ...}`, whose value is the HMAC-SHA256 of the unsigned text.

_SIGNED = re.compile(rb'\{"hmac": "([0-9a-f]{64})",\n')


def artifact_key(key: str | bytes | None = None) -> bytes | None:
    key = key if key is not None else os.environ.get(KEY_ENV) or None
    return key.encode() if isinstance(key, str) else key


def seal(text: str, key: bytes | None) -> str:
    """`text` (a JSON object as `json.dumps(..., indent=1)` writes it) signed with `key`, or
    unchanged without one."""
    if key is None:
        return text
    if not text.startswith("{\n"):
        raise ValueError("seal() signs a JSON object written with indent=1")
    mac = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return f'{{"hmac": "{mac}",' + text[1:]


def unseal(raw: bytes, key: bytes | None, where: Path) -> None:
    """With a key, raise `ArtifactError` unless `raw` is signed with it (on the bytes, before
    anything parses them); without one, accept signed and unsigned files alike."""
    if key is None:
        return
    signed = _SIGNED.match(raw)
    if signed is None and b'"hmac"' not in raw:
        raise ArtifactError(f"'{where}' is not signed, but a key is set ({KEY_ENV} or key=): "
                            f"refusing an unsigned artifact; compile it with the key set, or "
                            f"unset the key to load unsigned artifacts")
    body = b"{" + raw[signed.end() - 1:] if signed else b""
    expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
    if signed is None or not hmac.compare_digest(signed.group(1), expected):
        raise ArtifactError(f"'{where}' field 'hmac' does not match its content under the key "
                            f"in {KEY_ENV} (or key=): it was changed after it was signed, or "
                            f"signed with another key (or by an older tandemlm, which signed "
                            f"the parsed content: compile it again)")


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


#: options naming where a model's calls go and the credentials they carry: an artifact never
#: changes them, not even to a path under a directory the user allows
CREDENTIAL_OPTIONS = frozenset({"api_key", "api_key_env", "base_url", "api_base", "headers",
                                "extra_headers", "default_headers", "organization", "project"})


def _as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), for comparing options."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _config_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with the types of a model configuration from an artifact, or None."""
    checks = [("backend", isinstance(config.get("backend"), str), "a backend name"),
              ("id", isinstance(config.get("id"), str) and config["id"], "a non-empty string"),
              ("adapter", config.get("adapter") is None or isinstance(config["adapter"], str),
               "a path or null"),
              ("name", config.get("name") is None or isinstance(config["name"], str),
               "a string or null"),
              ("price", config.get("price") is None or (
                  isinstance(config["price"], list) and len(config["price"]) == 2
                  and all(_number(p) and p >= 0 for p in config["price"])),
               "null or [input, output] USD per million tokens, two numbers >= 0"),
              ("params", config.get("params") is None or (
                  isinstance(config["params"], int) and not isinstance(config["params"], bool)
                  and config["params"] >= 0), "a parameter count or null"),
              ("remote", config.get("remote") is None or isinstance(config["remote"], bool),
               "true, false or null"),
              ("options", config.get("options") is None or isinstance(config["options"], dict),
               "an object of backend options")]
    for field, ok, expected in checks:
        if not ok:
            return f"field '{field}' must be {expected}, got {config.get(field)!r}"
    return None


def _template_texts(value: Any, name: str, where: Path, out: dict[str, set[str]]) -> None:
    """Add a `chat_template` value (a string, or a list of {"name", "template"}) to `out`."""
    if isinstance(value, str):
        out.setdefault(name, set()).add(value)
    elif isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                         and isinstance(t.get("template"), str) for t in value):
        for item in value:
            out.setdefault(item["name"], set()).add(item["template"])
    elif value is not None:
        raise ArtifactError(f"'{where}': field 'chat_template' must be a template or a list of "
                            f"named templates, got a {type(value).__name__}")


def chat_templates(folder: Path) -> dict[str, list[str]]:
    """Every chat template transformers could read from a model folder, by template name
    ("default" for the main one): `chat_template.jinja`, `additional_chat_templates/*.jinja`,
    `chat_template.json` and `tokenizer_config.json`'s `chat_template`. A name found in
    several places keeps every text, so comparing two folders does not depend on which
    place transformers prefers. An artifact's folder is read as its backend will load it: its
    checked files only (see `runtime.verified_files`)."""
    found: dict[str, set[str]] = {}
    for path in files_under(folder):
        rel = path.relative_to(folder).as_posix()
        if rel in ("tokenizer_config.json", "chat_template.json"):
            data = parse_json(read_checked(path), path)
            _template_texts(data.get("chat_template") if isinstance(data, dict) else None,
                            "default", path, found)
        elif rel == "chat_template.jinja" or (rel.startswith("additional_chat_templates/")
                                             and rel.endswith(".jinja") and rel.count("/") == 1):
            name = "default" if rel == "chat_template.jinja" else path.stem
            found.setdefault(name, set()).add(read_checked(path).decode("utf-8", "replace"))
    return {name: sorted(texts) for name, texts in sorted(found.items())}


class ModelCheck:
    """Admits a model configuration from an artifact when it is a model the program's code
    builds (see the module docstring); `allow` lists directories outside the artifact the user
    trusts. Name, price and parameter count are free: labels for reports and accounting, not
    behaviour."""

    def __init__(self, models: list[Model], root: Path, where: Path,
                 allow: Iterable[str | Path] = ()) -> None:
        self.models, self.root, self.where = models, root, where
        self.allow = [Path(p).resolve() for p in allow]

    def _allowed(self, value: Any) -> bool:
        """Whether `value` is an absolute path under a directory the user allows."""
        if not isinstance(value, str) or not self.allow or not Path(value).is_absolute():
            return False
        path = Path(value).resolve()
        return any(path.is_relative_to(d) for d in self.allow)

    def admit(self, data: dict[str, Any], field: str) -> Model:
        where = f"'{self.where}' field '{field}'"
        config, relative = data.get("$model"), data.get("relative", [])
        if not isinstance(config, dict) or not isinstance(relative, list) \
                or not all(k in ("id", "adapter") for k in relative) \
                or set(config) - _MODEL_KEYS or set(data) - {"$model", "relative"}:
            raise ArtifactError(f"{where} is not a model configuration this tandemlm wrote")
        problem = _config_problem(config)
        if problem is not None:
            raise ArtifactError(f"{where}: {problem}")
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
        """Why `config` is not `code` plus the artifact's own weights; None when it is. Only
        id/adapter (weights inside the artifact, or under a directory the user allows), name,
        price and parameter count may differ; every option, both ways, is the code's."""
        own = code.to_dict()
        options, own_options = _as_json(config.get("options") or {}), _as_json(own["options"])
        if options.get("trust_remote_code") and model.id != code.id:
            return ("option trust_remote_code is set for weights the artifact supplies; "
                    "trust_remote_code is never read from an artifact")
        for key in ("id", "adapter"):
            value = config.get(key)
            if value == own[key] or (key == "adapter" and value is None):
                continue
            if key in relative:
                why = self._artifact_weights(key, value, code)
                if why is not None:
                    return why
            elif not self._allowed(value):
                return (f"{key} {value!r} is neither inside the artifact nor what the program's "
                        f"code gives model '{code.name}' ({own[key]!r})")
        for key in sorted(set(options) | set(own_options)):
            if key not in options:
                return (f"it drops option {key}={own_options[key]!r}, which the program's code "
                        f"gives model '{code.name}'")
            if key not in own_options:
                return (f"option {key}={options[key]!r} is not one the program's code gives "
                        f"model '{code.name}'")
            credential = key in CREDENTIAL_OPTIONS
            if options[key] != own_options[key] and (credential or not self._allowed(options[key])):
                return (f"option {key}={options[key]!r} differs from what the program's code gives "
                        f"model '{code.name}' ({own_options[key]!r})"
                        + ("; where a model's calls go and the credentials they carry never "
                           "change through an artifact" if credential else ""))
        if code.remote != model.remote:
            return (f"it makes model '{code.name}', which is remote, local (private fields would "
                    f"reach it)" if code.remote else
                    f"it marks model '{code.name}', which the program's code runs locally, remote")
        return None

    def _artifact_weights(self, key: str, value: str, code: Model) -> str | None:
        """Why the artifact's folder `value` cannot serve as `code`'s weights (key "id") or
        adapter; None when it can. A chat template in it must be the base model's own (same
        text): rendering a template runs it, and an artifact never changes how prompts render."""
        source = Path(value)
        if key == "id" and (not source.is_dir() or code.options.get("gguf_file")):
            return (f"id {value!r}: weights an artifact supplies for model '{code.name}' come as "
                    f"a checkpoint folder (a GGUF file carries its own tokenizer and chat "
                    f"template)")
        templates = chat_templates(source) if source.is_dir() else {}
        if key == "adapter" and not templates:
            return None  # the base model's tokenizer renders the prompts
        base = Path(code.id).expanduser()
        if not base.is_dir():
            return (f"{key} {value!r} brings its own tokenizer files, and model '{code.name}' "
                    f"({code.id!r}) is not a local folder whose chat template they could be "
                    f"compared with")
        if templates != chat_templates(base):
            return (f"the chat template in {value!r} differs from the one of model "
                    f"'{code.name}' ({code.id!r}); an artifact never changes the template that "
                    f"renders prompts (a template is a program the tokenizer runs)")
        return None
