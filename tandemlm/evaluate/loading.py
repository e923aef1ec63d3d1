"""Loading user code named on the command line: `module.path:NAME` or `file.py:NAME`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from tandemlm.compose import Pipeline
from tandemlm.runtime import ConfigError


def load_object(spec: str, what: str = "object") -> Any:
    """Load `module.path:NAME` or `path/to/file.py:NAME`."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{what} '{spec}' must look like MODULE:NAME or FILE.py:NAME")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{what} file '{target}' does not exist")
        module_name = f"_tandem_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            spec_ = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[module_name] = module
            spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(f"cannot import module '{target}' for {what} '{spec}': {exc}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{what} '{spec}': '{target}' has no attribute '{attr}'")
    return getattr(module, attr)


def load_program(spec: str) -> Pipeline:
    """Load a `Pipeline` (or a zero-argument function returning one) named by `spec`."""
    obj = load_object(spec, "program")
    if callable(obj) and not isinstance(obj, Pipeline):
        obj = obj()
    if not isinstance(obj, Pipeline):
        raise ConfigError(f"program '{spec}' is a {type(obj).__name__}, not a tandemlm Pipeline")
    return obj


def packaged_data(name: str) -> Path:
    """Path of a data file shipped inside the package (see tandemlm/data/README.md)."""
    path = Path(str(resources.files("tandemlm") / "data" / name))
    if not path.is_file():
        raise ConfigError(f"no packaged data file named '{name}'")
    return path
