"""What the transformers backends (`hf`, `hf-classifier`) share: device and dtype placement,
torch's thread count while they run, a weights identity that needs no load, and freeing a
model's memory."""

from __future__ import annotations

import gc
import hashlib
import threading
from pathlib import Path
from typing import Any

import torch

from tandemlm.runtime.backend import Backend
from tandemlm.runtime.threads import auto_threads, torch_threads

DTYPES = ("auto", "float32", "float16", "bfloat16")

#: Held around every transformers model load in tandemlm. `from_pretrained` swaps class
#: attributes (`PreTrainedModel.tie_weights`, `init_weights`) for no-ops while it loads and puts
#: back what it found: two loads in two threads can leave the no-op in place for the rest of the
#: process, after which every model with tied embeddings loads with its output layer empty
#: ("Cannot copy out of meta tensor"). Loads are rare and short next to the work they serve.
LOAD_LOCK = threading.RLock()
_MIB = 1 << 20


def placement(device: str, dtype: str) -> tuple[str, str]:
    """Resolve "auto": cuda when available (else cpu); bfloat16 on cuda, float32 on cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    return device, dtype


def weights_identity(path: Path) -> str:
    """sha256 over a checkpoint directory's weight files (names, sizes, first and last MiB) and
    config.json: changes when the weights change, without reading or loading whole files."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.is_file() and (file.suffix in (".safetensors", ".bin") or file.name == "config.json"):
            size = file.stat().st_size
            digest.update(f"{file.name}\0{size}\0".encode())
            with file.open("rb") as handle:
                digest.update(hashlib.sha256(handle.read(_MIB)).digest())
                handle.seek(max(0, size - _MIB))
                digest.update(hashlib.sha256(handle.read(_MIB)).digest())
    return f"sha256:{digest.hexdigest()}"


def release(model: Any) -> None:
    """Drop what a model holds on the accelerator once the caller has let go of it."""
    on_cuda = model is not None and next(model.parameters()).is_cuda
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()


class TransformersBackend(Backend):
    """Lifecycle shared by the transformers backends: subclasses load lazily into `_model` and
    `_tokenizer` under `_lock` through `_load()`, keep their placement options in
    `device_option` / `dtype_option` and their checked `threads=` option in `threads` (None:
    "auto"), and run their torch work inside `self._torch_threads()`."""

    threads: int | None = None

    def thread_count(self) -> int | None:
        """torch's intra-op threads for this backend's work now: the `threads` option, or on CPU
        the auto rule (`tandemlm.runtime.threads.auto_threads`: torch's own count, lowered to the
        cores other processes leave free). None with "auto" on an accelerator: torch's count is
        left as it is there (the CPU only feeds the device)."""
        if self.threads is not None:
            return self.threads
        device, _ = placement(self.device_option, self.dtype_option)
        return auto_threads() if device == "cpu" else None

    def _torch_threads(self) -> Any:
        """The block this backend's torch work runs in (see `tandemlm.runtime.threads`)."""
        return torch_threads(self.thread_count())

    def _load(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def num_parameters(self) -> int:
        model, _ = self._load()
        return sum(p.numel() for p in model.parameters())

    def close(self) -> None:
        with self._lock:
            model, self._model, self._tokenizer = self._model, None, None
        release(model)
