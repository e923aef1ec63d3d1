"""Suites: named tasks, each a dataset, a program, a metric, splits and compile passes.

Declared in Python::

    Suite("mine", tasks={"overruling": Task(name="overruling",
                                             program="tandemlm.suites.overruling:build",
                                             train=train_rows, test=test_rows, metric=metric,
                                             passes=[TrainScorer(), Calibrate(match=1.0)])})

or named by a small TOML or YAML file (paths are relative to the file)::

    name = "quick"

    [[include]]                        # tasks of a Python suite
    suite = "replay"                   # a built-in suite, or MODULE:FUNCTION returning a Suite
    tasks = ["overruling", "mmlu/llama"]
    options = { data = "data/replay" }

    [[task]]                           # a task of its own
    name = "mine"
    program = "programs/cascade.py:build"
    train = "data/train.jsonl"
    val = "data/val.jsonl"             # optional: what the passes select on
    test = "data/test.jsonl"
    metric = "programs/cascade.py:metric"
    passes = ["TrainScorer(epochs=3)", "Calibrate(match=1.0)"]

`load_suite("replay", data=...)`, `load_suite("suite.toml")`. A task's program is a source string
(`module:NAME`, `file.py:NAME` or `module:build(option=literal)`), so its compiled artifact can be
loaded again from its `program.json`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandemlm.evaluate import load_data
from tandemlm.evaluate.loading import load_object
from tandemlm.optimizers.passes import Pass
from tandemlm.optimizers.specs import parse_passes, program_source
from tandemlm.runtime import ConfigError

#: suites known by name: MODULE:FUNCTION returning a `Suite` (keyword options are passed on)
BUILTIN_SUITES = {"replay": "tandemlm.suites.replay:suite",
                  "overruling": "tandemlm.suites.overruling:suite"}


@dataclass
class Task:
    """One task: compile `program` on `train` (passes select on `val` when given; `unlabeled`
    inputs, if any, go to the compile as such), evaluate on `test` with `metric`."""

    name: str
    program: str
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    metric: Callable[..., Any]
    passes: list[Pass]
    val: list[dict[str, Any]] | None = None
    seed: int = 0
    description: str = ""
    unlabeled: list[dict[str, Any]] | None = None

    def config_hash(self) -> str:
        """sha256 of what determines the task's results: program, passes, data, metric, seed."""
        config = {"name": self.name, "program": self.program, "seed": self.seed,
                  "metric": f"{getattr(self.metric, '__module__', '')}:"
                            f"{getattr(self.metric, '__qualname__', repr(self.metric))}",
                  "passes": [[type(p).__name__, p.config()] for p in self.passes],
                  "data": {k: _digest(v) for k, v in (("train", self.train), ("val", self.val),
                                                      ("test", self.test))}}
        if self.unlabeled:  # absent otherwise: tasks without unlabeled rows keep their hash
            config["data"]["unlabeled"] = _digest(self.unlabeled)
        return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _digest(rows: list[dict[str, Any]] | None) -> str | None:
    if rows is None:
        return None
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Suite:
    """Named tasks; each value is a `Task` or a function building one (so a suite lists its
    tasks without loading every dataset)."""

    name: str
    tasks: dict[str, Task | Callable[[], Task]]
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(self.tasks)

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            raise ConfigError(f"suite '{self.name}' has no task '{name}'; its tasks: "
                              f"{', '.join(self.tasks)}")
        built = self.tasks[name]
        return built if isinstance(built, Task) else built()

    def select(self, names: list[str] | None) -> list[str]:
        """`names` in suite order (all when None); unknown names fail listing the known ones."""
        if not names:
            return self.names()
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise ConfigError(f"suite '{self.name}' has no task(s) {', '.join(unknown)}; its "
                              f"tasks: {', '.join(self.tasks)}")
        return [n for n in self.tasks if n in names]


def load_suite(spec: str, **options: Any) -> Suite:
    """A suite by built-in name, MODULE:FUNCTION, or a .toml / .yaml file naming tasks."""
    if spec.endswith((".toml", ".yaml", ".yml")):
        return _suite_file(Path(spec))
    target = BUILTIN_SUITES.get(spec, spec)
    if ":" not in target:
        raise ConfigError(f"unknown suite '{spec}'; built-in suites: {', '.join(BUILTIN_SUITES)}, "
                          f"or name MODULE:FUNCTION or a .toml/.yaml suite file")
    made = load_object(target, "suite")
    if options and not callable(made):
        raise ConfigError(f"suite '{spec}' takes no options; got {', '.join(options)}")
    try:
        suite = made(**options) if callable(made) else made
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise ConfigError(f"suite '{spec}' does not take option(s) {', '.join(options)}: {exc}") from None
    if not isinstance(suite, Suite):
        raise ConfigError(f"suite '{spec}' is a {type(suite).__name__}, not a tandemlm Suite")
    return suite


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"suite file '{path}' does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # tomllib and yaml raise their own error types
        raise ConfigError(f"suite file '{path}' is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"suite file '{path}' must hold a table/mapping at the top level")
    unknown = set(data) - {"name", "description", "include", "task"}
    if unknown:
        raise ConfigError(f"suite file '{path}': unknown key(s) {', '.join(sorted(unknown))}; "
                          f"expected name, description, include, task")
    return data


def _suite_file(path: Path) -> Suite:
    data = _read_file(path)
    base = path.parent
    tasks: dict[str, Task | Callable[[], Task]] = {}
    for entry in data.get("include", []):
        if not isinstance(entry, dict) or "suite" not in entry:
            raise ConfigError(f"suite file '{path}': each [[include]] needs suite = NAME")
        options = {k: _relative(base, v) if k in ("data",) else v
                   for k, v in (entry.get("options") or {}).items()}
        included = load_suite(entry["suite"], **options)
        for name in included.select(entry.get("tasks")):
            tasks[name] = included.tasks[name]
    for entry in data.get("task", []):
        task = _file_task(path, base, entry)
        if task.name in tasks:
            raise ConfigError(f"suite file '{path}': task '{task.name}' is named twice")
        tasks[task.name] = task
    if not tasks:
        raise ConfigError(f"suite file '{path}' names no tasks: add [[include]] or [[task]] tables")
    return Suite(name=str(data.get("name") or path.stem), tasks=tasks,
                 description=str(data.get("description", "")))


def _relative(base: Path, value: Any) -> Any:
    return str(base / value) if isinstance(value, str) and not Path(value).is_absolute() else value


def _file_task(path: Path, base: Path, entry: Any) -> Task:
    required = ("name", "program", "train", "test", "metric")
    if not isinstance(entry, dict) or any(k not in entry for k in required):
        raise ConfigError(f"suite file '{path}': each [[task]] needs {', '.join(required)} "
                          f"(and may give val, passes, seed, description)")
    unknown = set(entry) - {*required, "val", "passes", "seed", "description"}
    if unknown:
        raise ConfigError(f"suite file '{path}', task '{entry['name']}': unknown key(s) "
                          f"{', '.join(sorted(unknown))}")
    program, metric = (_relative_spec(base, entry[k]) for k in ("program", "metric"))
    return Task(name=str(entry["name"]), program=program_source(program),
                train=_examples(base, entry["train"]), test=_examples(base, entry["test"]),
                val=_examples(base, entry["val"]) if entry.get("val") else None,
                metric=load_object(metric, "metric"), passes=parse_passes(list(entry.get("passes", []))),
                seed=int(entry.get("seed", 0)), description=str(entry.get("description", "")))


def _relative_spec(base: Path, spec: str) -> str:
    """A FILE.py:NAME spec resolved against the suite file's folder; module specs unchanged."""
    target, sep, rest = spec.partition(":")
    return f"{base / target}{sep}{rest}" if target.endswith(".py") and not Path(target).is_absolute() \
        else spec


def _examples(base: Path, value: str) -> list[dict[str, Any]]:
    return [dict(x) for x in load_data(_relative(base, value))]
