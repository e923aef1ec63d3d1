"""What the command line names: passes (`BootstrapDemos(k=4)`) and programs (a file, a module
attribute, or a compiled artifact directory with the code to load it onto: `DIR@PROGRAM`).

A pass spec is a pass name, optionally called with keyword arguments whose values are Python
literals (numbers, strings, lists, dicts, True/False/None). Values are read with
`ast.literal_eval`, so a spec is never run as code.

    parse_pass("BootstrapDemos")                                    # a built-in pass
    parse_pass("BootstrapDemos(k=2, teacher={'small': 'large'})")   # with options
    parse_pass("my_passes:Tidy(level=2)")                           # a user pass: MODULE:Class
    parse_pass("passes.py:Tidy")                                    # or FILE.py:Class
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable
from pathlib import Path

from tandemlm.compose import Pipeline
from tandemlm.evaluate.loading import literal_keywords, load_object, load_program
from tandemlm.optimizers.artifacts import load, recorded_source
from tandemlm.optimizers.passes import Pass
from tandemlm.runtime import ArtifactError, ConfigError

#: built-in pass name -> its module (imported only when the pass is named, so naming
#: BootstrapDemos never loads the training stack)
BUILTIN_PASSES: dict[str, str] = {
    "BootstrapDemos": "tandemlm.optimizers.bootstrap_demos",
    "Finetune": "tandemlm.optimizers.finetune",
    "TrainScorer": "tandemlm.optimizers.train_scorer",
    "TrainRanker": "tandemlm.optimizers.train_scorer",
    "TrainVerifier": "tandemlm.optimizers.train_verifier",
    "FitJudges": "tandemlm.optimizers.fit_judges",
    "TrainRouter": "tandemlm.optimizers.train_router",
    "TuneMix": "tandemlm.optimizers.tune_mix",
    "Calibrate": "tandemlm.optimizers.calibrate",
    "Escalate": "tandemlm.optimizers.escalate",
}

_SPEC = re.compile(r"^\s*(?P<name>[^()\s]+)\s*(?:\((?P<args>.*)\))?\s*$", re.S)


def known_passes() -> list[str]:
    """The built-in pass names."""
    return list(BUILTIN_PASSES)


def _pass_class(name: str) -> type[Pass]:
    if ":" in name:
        cls = load_object(name, "pass")
    elif name in BUILTIN_PASSES:
        cls = getattr(importlib.import_module(BUILTIN_PASSES[name]), name)
    else:
        raise ConfigError(f"unknown pass '{name}'; built-in passes: {', '.join(known_passes())}. "
                          f"A pass of your own is named MODULE:Class or FILE.py:Class")
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise ConfigError(f"'{name}' is a {type(cls).__name__}, not a Pass class (a subclass of "
                          f"tandemlm.optimizers.Pass)")
    return cls


def parse_pass(spec: str) -> Pass:
    """The pass a spec names, built with its options; see the module docstring."""
    match = _SPEC.match(spec)
    if match is None:
        raise ConfigError(f"pass spec '{spec}' is not valid; write Name or Name(option=value, ...)")
    cls = _pass_class(match["name"])
    options = literal_keywords(spec, match["args"], "pass spec") if match["args"] is not None else {}
    fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    unknown = [k for k in options if fields and k not in fields]
    if unknown:
        raise ConfigError(f"pass {cls.__name__} has no option {', '.join(unknown)}; its options: "
                          f"{', '.join(fields)}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"pass spec '{spec}': {exc}") from None


def parse_passes(specs: list[str]) -> list[Pass]:
    """Every spec, in order."""
    return [parse_pass(spec) for spec in specs]


def program_source(spec: str) -> str:
    """`spec` as recorded in an artifact: a FILE.py path made absolute, so the recorded source
    names the program from any working directory (run only when the user trusts it)."""
    target, sep, attr = spec.rpartition(":")
    if sep and target.endswith(".py"):
        return f"{Path(target).resolve()}:{attr}"
    return spec


def spec_source(spec: str) -> str | None:
    """The program source an artifact compiled from `spec` should record: the code `spec`
    names (`PROGRAM`, or `DIR@PROGRAM`'s `PROGRAM`), or what a bare artifact `DIR` records."""
    found = _artifact(spec)
    if found is None:
        return program_source(spec)
    directory, code = found
    return program_source(code) if code is not None else recorded_source(directory)


def _artifact(spec: str) -> tuple[Path, str | None] | None:
    """(artifact directory, program code or None) when `spec` names an artifact: `DIR` or
    `DIR@PROGRAM`."""
    if Path(spec).is_dir():
        return Path(spec), None
    directory, sep, code = spec.rpartition("@")
    if sep and directory and Path(directory).is_dir():
        return Path(directory), code or None
    return None


def load_any_program(spec: str, *, trust_source: bool = False,
                     confirm: Callable[[str], bool] | None = None) -> Pipeline:
    """PROGRAM.py:NAME / module:NAME, or a compiled artifact: `DIR@PROGRAM` loads it onto that
    code; a bare `DIR` runs the source the artifact records only with `trust_source` or when
    `confirm(source)` (an interactive question) says yes."""
    found = _artifact(spec)
    if found is None:
        return load_program(spec)
    directory, code = found
    if not (directory / "program.json").is_file():
        raise ConfigError(f"'{directory}' is a directory without a program.json; name a compiled "
                          f"artifact directory (written by `tandem compile --out`) or "
                          f"PROGRAM.py:NAME")
    if code is not None:
        return load(directory, program=code)
    source = recorded_source(directory)
    if not trust_source and source is not None and confirm is not None and confirm(source):
        trust_source = True
    if source is not None and not trust_source:
        raise ArtifactError(f"'{directory}' was compiled from program '{source}'; loading an "
                            f"artifact never runs code it names: name the code to load it onto, "
                            f"'{directory}@{source}', or pass --trust-source to run the recorded "
                            f"source")
    return load(directory, trust_source=trust_source)
