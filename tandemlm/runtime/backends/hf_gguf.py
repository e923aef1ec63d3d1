"""GGUF files on the `hf` backend: converted once into a cached safetensors checkpoint folder.

    Model("hf", "models/SmolLM2-135M-Instruct.Q4_1.gguf")       # a GGUF file, as users have it
    Model("hf", "models", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")   # the same, by folder

transformers reads a GGUF file (through the `gguf` package) by dequantising every tensor to
float32 and rebuilding the tokenizer from the file's vocabulary: about a minute for a 135M model on
two CPU cores, most of it spent parsing the file's metadata again for each of config, tokenizer
and weights. So the first load saves the result as a plain float32 checkpoint under
`cache_dir()/gguf/<sha256[:16]>-<stem>` (4 bytes a weight: 540 MB for 135M), and every later
load, in any process, is the normal safetensors path (under a second).

The folder is named after the sha256 of the file's bytes, and the model's identity is that
sha256 (`gguf_identity`), so neither a converted folder nor a cache of model calls ever crosses
two files. Hashing 100 MB takes a fraction of a second; a small memo keyed by the file's path,
size, mtime and inode saves even that on later starts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

from tandemlm.runtime.errors import ConfigError
from tandemlm.runtime.files import atomic_write, build_once, cache_dir

GGUF_INSTALL = "pip install 'tandemlm[gguf]'"
_CHUNK = 1 << 20


def gguf_path(model_id: str, gguf_file: str | None) -> Path | None:
    """The GGUF file a `hf` model names: `gguf_file` inside the folder `model_id`, or `model_id`
    itself when it ends in `.gguf`; None for a checkpoint folder or hub id."""
    if gguf_file is not None:
        return Path(model_id).expanduser() / gguf_file
    if model_id.lower().endswith(".gguf"):
        return Path(model_id).expanduser()
    return None


def gguf_identity(path: Path) -> str:
    """The identity of a GGUF model: the sha256 of the file's bytes (see `file_sha256`)."""
    return f"gguf-sha256:{file_sha256(path)}"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks, remembered by (path, size, mtime, inode)
    under `cache_dir()/gguf/hashes` so a process start does not rehash an unchanged file."""
    path = _existing(path)
    stat = path.stat()
    key = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    memo = cache_dir() / "gguf" / "hashes" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.json"
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if {k: saved.get(k) for k in key} == key and isinstance(saved.get("sha256"), str):
            return saved["sha256"]
    except (OSError, ValueError):
        pass  # no memo yet, or an unreadable one: hash the file
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    sha = digest.hexdigest()
    try:
        atomic_write(memo, json.dumps({**key, "sha256": sha}))
    except OSError:
        pass  # a read-only cache only costs the hash next time
    return sha


def gguf_folder(path: Path) -> Path:
    """The converted checkpoint folder of the GGUF file at `path`, converting it on first use.

    Raises `ConfigError` when the file is missing, the `gguf` package is not installed, or the
    file cannot be read as a GGUF model (corrupt, truncated, or an unsupported architecture).
    """
    path = _existing(path)
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"loading the GGUF file '{path}' needs the package(s) {', '.join(missing)}, "
                          f"not installed; {GGUF_INSTALL}")
    sha = file_sha256(path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:64]
    target = cache_dir() / "gguf" / f"{sha[:16]}-{stem}"
    try:
        return build_once(target, lambda work: convert(path, work, sha))
    except ConfigError:
        raise
    except ImportError as exc:  # e.g. a gguf older than transformers accepts
        raise ConfigError(f"could not load the GGUF file '{path}': {exc}; {GGUF_INSTALL}") from exc
    except Exception as exc:
        raise ConfigError(f"could not load the GGUF file '{path}' with transformers: "
                          f"{type(exc).__name__}: {exc}; check that the file is complete (its "
                          f"size, or its sha256 against the source's) and that transformers "
                          f"supports its architecture") from exc


def convert(path: Path, out: Path, sha256: str) -> None:
    """Load the GGUF file at `path` through transformers (dequantised to float32) and save it in
    `out` as a safetensors checkpoint with its tokenizer, plus `gguf-source.json` naming the
    file and its sha256."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tandemlm.runtime.backends.hf_common import LOAD_LOCK  # imports torch: only when converting

    where = {"gguf_file": str(path), "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **where)
    with LOAD_LOCK:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32,
                                                      **where, **_dequantised())
    # A GGUF-loaded model may refuse `save_pretrained` (its weights count as quantized), so the
    # weights move into a plain model built from the same config, less the GGUF quantization.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings),
                                                 dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    atomic_write(out / "gguf-source.json", json.dumps({"file": str(path), "sha256": sha256}))


def _dequantised() -> dict:
    """Ask transformers (5.x) for dense float32 weights even where it could keep GGUF blocks
    packed (with the `kernels` package installed): packed blocks would not load into a plain
    model. Older versions always dequantise and lack `GgufConfig`."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _existing(path: Path) -> Path:
    path = Path(os.path.abspath(Path(path).expanduser()))
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"GGUF file '{path}' {what} (backend 'hf'); check the model path "
                          f"(and the gguf_file option, which names a file inside the model folder)")
    return path
